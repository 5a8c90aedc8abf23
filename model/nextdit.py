"""NextDiT, the OneDiffusion denoiser, weight-compatible with the released checkpoint.

Parameter names and shapes follow the released `transformer/` folder so that it loads strictly. The
forward pass takes a sequence of latent frames `(B, F, C, H, W)` with timesteps given per sample `(B,)`,
per frame `(B, F)` or per latent element `(B, F, C, H, W)`, and predicts the flow-matching velocity of
every frame.

Facts of the architecture that matter for compatibility:
- tokens are 1x2x2 patches ordered frame-major, then row, then column;
- the adaLN input is `t_embed(timestep) + y_embed(masked mean of the text states)`. When timesteps come
  per frame (our sampler always gives them so), the modulation is computed once per frame and broadcast
  over that frame's tokens, which is exact and saves the per-token adaLN matmuls;
- 3-D rotary embedding over (frame, row, column), a third of the head dimension each, with optional
  NTK / linear scaling for resolutions past training;
- image self-attention logits are soft-capped at 30; keys/values are shared by groups of heads
  (`repeat_interleave` order);
- text cross-attention is a separate attention over T5 tokens with a padding mask, whose key/value heads
  are tiled (`head i` uses `kv head i % n_kv`) and whose output is gated by `tanh(gate)` per head.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from .attention import softcap_attention
from .errors import CheckpointError


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def _per_group(x: torch.Tensor, groups: int) -> torch.Tensor:
    """View (B, L, D) tokens as (B, G, L/G, D) so a per-group (per-frame) tensor broadcasts over them."""
    b, length, d = x.shape
    return x.view(b, groups, length // groups, d)


def modulate(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) with scale given per group of consecutive tokens: x (B, L, D), scale (B, G, D)."""
    groups = scale.shape[1]
    return (_per_group(x, groups) * (1 + scale.unsqueeze(2))).view_as(x)


def gated(gate: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """tanh(gate) * x with the gate per group of consecutive tokens."""
    groups = gate.shape[1]
    return (_per_group(x, groups) * torch.tanh(gate).unsqueeze(2)).view_as(x)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the (0..1000) timestep, then a two-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    @staticmethod
    def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        exponent = torch.arange(half, dtype=torch.float32, device=t.device) / half
        freqs = torch.exp(-math.log(max_period) * exponent)
        args = t.float().unsqueeze(-1) * freqs
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = self.sinusoid(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype)
        return self.mlp(freq)


class FeedForward(nn.Module):
    """SwiGLU feed-forward; the hidden size follows the LLaMA rule (2/3 of 4*dim, rounded up)."""

    def __init__(self, dim: int, multiple_of: int, ffn_dim_multiplier: Optional[float]):
        super().__init__()
        hidden = int(2 * (4 * dim) / 3)
        if ffn_dim_multiplier is not None:
            hidden = int(ffn_dim_multiplier * hidden)
        hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive (even, odd) pairs of the head dimension. x: (B, L, H, D); cos, sin: (L, D/2)."""
    xf = x.float().unflatten(-1, (-1, 2))
    even, odd = xf[..., 0], xf[..., 1]
    cos = cos[None, :, None, :]
    sin = sin[None, :, None, :]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, qk_norm: bool, y_dim: int):
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = dim // n_heads
        kv_dim = n_kv_heads * self.head_dim
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, kv_dim, bias=False)
        self.wv = nn.Linear(dim, kv_dim, bias=False)
        self.wk_y = nn.Linear(y_dim, kv_dim, bias=False)
        self.wv_y = nn.Linear(y_dim, kv_dim, bias=False)
        self.gate = nn.Parameter(torch.zeros(n_heads))
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)
        if qk_norm:
            self.q_norm = nn.LayerNorm(n_heads * self.head_dim)
            self.k_norm = nn.LayerNorm(kv_dim)
            self.ky_norm = nn.LayerNorm(kv_dim, eps=1e-6)
        else:
            self.q_norm = self.k_norm = self.ky_norm = nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        y: torch.Tensor,
        y_mask: torch.Tensor,
    ) -> torch.Tensor:
        b, length, _ = x.shape
        h, hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        rep = h // hkv
        q = self.q_norm(self.wq(x)).view(b, length, h, d)
        k = self.k_norm(self.wk(x)).view(b, length, hkv, d)
        v = self.wv(x).view(b, length, hkv, d)
        q = apply_rotary(q, *rope).transpose(1, 2)
        k = apply_rotary(k, *rope).transpose(1, 2)
        out = softcap_attention(q, k, v.transpose(1, 2))  # heads share k/v in repeat_interleave order

        ly = y.shape[1]
        yk = self.ky_norm(self.wk_y(y)).view(b, ly, hkv, d).transpose(1, 2).repeat(1, rep, 1, 1)
        yv = self.wv_y(y).view(b, ly, hkv, d).transpose(1, 2).repeat(1, rep, 1, 1)
        text_mask = y_mask.bool()[:, None, None, :]
        out_y = F.scaled_dot_product_attention(q, yk, yv, attn_mask=text_mask)
        out = out + out_y * torch.tanh(self.gate).view(1, h, 1, 1).to(out_y.dtype)
        return self.wo(out.transpose(1, 2).reshape(b, length, h * d))


class TransformerBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_kv_heads: int,
        multiple_of: int,
        ffn_dim_multiplier: Optional[float],
        norm_eps: float,
        qk_norm: bool,
        y_dim: int,
    ):
        super().__init__()
        self.attention = Attention(dim, n_heads, n_kv_heads, qk_norm, y_dim)
        self.feed_forward = FeedForward(dim, multiple_of, ffn_dim_multiplier)
        self.attention_norm1 = RMSNorm(dim, eps=norm_eps)
        self.attention_norm2 = RMSNorm(dim, eps=norm_eps)
        self.ffn_norm1 = RMSNorm(dim, eps=norm_eps)
        self.ffn_norm2 = RMSNorm(dim, eps=norm_eps)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(min(dim, 1024), 4 * dim))
        self.attention_y_norm = RMSNorm(y_dim, eps=norm_eps)

    def forward(self, x, cond, rope, y, y_mask):
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(cond).chunk(4, dim=-1)
        attn = self.attention(modulate(self.attention_norm1(x), scale_msa), rope, self.attention_y_norm(y), y_mask)
        x = x + gated(gate_msa, self.attention_norm2(attn))
        ffn = self.feed_forward(modulate(self.ffn_norm1(x), scale_mlp))
        return x + gated(gate_mlp, self.ffn_norm2(ffn))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_elements: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(hidden_size, patch_elements * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(min(hidden_size, 1024), hidden_size))

    def forward(self, x, cond):
        return self.linear(modulate(self.norm_final(x), self.adaLN_modulation(cond)))


class NextDiT(ModelMixin, ConfigMixin):
    """The OneDiffusion denoiser. Config keys are those of the released `transformer/config.json`;
    training-only keys found there (`decay`, `forward_dtype`, `remat_*`, ...) are ignored."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        input_size=(1, 32, 32),
        patch_size=(1, 2, 2),
        in_channels: int = 16,
        hidden_size: int = 4096,
        depth: int = 32,
        num_heads: int = 32,
        num_kv_heads: Optional[int] = None,
        multiple_of: int = 256,
        ffn_dim_multiplier: Optional[float] = None,
        norm_eps: float = 1e-5,
        pred_sigma: bool = False,
        caption_channels: int = 4096,
        qk_norm: bool = False,
        norm_type: str = "rms",
        model_max_length: int = 120,
        rotary_max_length: int = 384,
        rotary_max_length_t: Optional[int] = None,
    ):
        super().__init__()
        head_dim = hidden_size // num_heads
        if head_dim % 6:
            raise ValueError(f"3-D rotary embedding needs head_dim divisible by 6, got {head_dim}")
        self.patch_size = tuple(patch_size)
        self.out_channels = in_channels * 2 if pred_sigma else in_channels
        self.head_dim = head_dim
        n_kv = num_kv_heads or num_heads
        patch_elements = math.prod(self.patch_size)

        self.x_embedder = nn.Linear(patch_elements * in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(min(hidden_size, 1024))
        self.y_embedder = nn.Sequential(
            nn.LayerNorm(caption_channels, eps=1e-6),
            nn.Linear(caption_channels, min(hidden_size, 1024)),
        )
        self.layers = nn.ModuleList(
            TransformerBlock(
                hidden_size, num_heads, n_kv, multiple_of, ffn_dim_multiplier, norm_eps, qk_norm, caption_channels
            )
            for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_elements, self.out_channels)

    # ---- rotary embedding -------------------------------------------------------------------------
    def rotary(
        self, frames: int, rows: int, cols: int, device, scale_factor: float = 1.0, scale_watershed: float = 1.0,
        timestep: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the (frame, row, column) rotary angles of every token, each (L, head_dim/2).

        With `scale_factor` != 1 the frequencies are scaled linearly while `timestep < scale_watershed`
        and by NTK (a larger base) otherwise, as the reference does for resolutions past training."""
        cfg = self.config
        max_t = cfg.rotary_max_length_t or cfg.rotary_max_length
        if frames > max_t or rows > cfg.rotary_max_length or cols > cfg.rotary_max_length:
            raise ValueError(
                f"token grid {frames}x{rows}x{cols} exceeds the model's rotary range "
                f"({max_t} frames, {cfg.rotary_max_length}x{cfg.rotary_max_length} patches)"
            )
        linear, ntk = (scale_factor, 1.0) if timestep < scale_watershed else (1.0, scale_factor)
        dim = self.head_dim
        theta = 10000.0 * ntk
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 6, device=device)[: dim // 6].float() / dim)) / linear
        ft = torch.arange(frames, device=device, dtype=torch.float32)[:, None, None]
        fh = torch.arange(rows, device=device, dtype=torch.float32)[None, :, None]
        fw = torch.arange(cols, device=device, dtype=torch.float32)[None, None, :]
        shape = (frames, rows, cols, dim // 6)
        angles = torch.cat(
            [
                (ft[..., None] * freqs).expand(shape),
                (fh[..., None] * freqs).expand(shape),
                (fw[..., None] * freqs).expand(shape),
            ],
            dim=-1,
        ).reshape(frames * rows * cols, dim // 2)
        return torch.cos(angles), torch.sin(angles)

    # ---- patches ----------------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, C, H, W) -> (B, L, pT*pH*pW*C), tokens frame-major, features ordered (pT, pH, pW, C)."""
        b, f, c, h, w = x.shape
        pt, ph, pw = self.patch_size
        x = x.view(b, f // pt, pt, c, h // ph, ph, w // pw, pw)
        return x.permute(0, 1, 4, 6, 2, 5, 7, 3).reshape(b, -1, pt * ph * pw * c)

    def unpatchify(self, x: torch.Tensor, frames: int, rows: int, cols: int) -> torch.Tensor:
        b = x.shape[0]
        pt, ph, pw = self.patch_size
        c = self.out_channels
        x = x.view(b, frames, rows, cols, pt, ph, pw, c)
        return x.permute(0, 1, 4, 7, 2, 5, 3, 6).reshape(b, frames * pt, c, rows * ph, cols * pw)

    def timestep_groups(self, timesteps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """Timesteps as (B, G): G = frames when given per sample or per frame, G = tokens when per element."""
        b, f = samples.shape[:2]
        if timesteps.ndim == 1:
            return timesteps[:, None].expand(b, f // self.patch_size[0])
        if timesteps.ndim == 2:
            if self.patch_size[0] != 1:
                return timesteps.unflatten(1, (-1, self.patch_size[0])).mean(-1)
            return timesteps
        if timesteps.ndim == 5:
            return self.patchify(timesteps.expand_as(samples).to(torch.float32)).mean(dim=-1)
        raise ValueError(f"timesteps must be (B,), (B, F) or shaped like samples, got {tuple(timesteps.shape)}")

    def forward(
        self,
        samples: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        scale_factor: float = 1.0,
        scale_watershed: float = 1.0,
    ) -> torch.Tensor:
        """Velocity for every frame: (B, F, C, H, W) (a 4-D input is one frame)."""
        if samples.ndim == 4:
            samples = samples[:, None]
        b, f, _, h, w = samples.shape
        pt, ph, pw = self.patch_size
        frames, rows, cols = f // pt, h // ph, w // pw

        groups_t = self.timestep_groups(timesteps, samples)
        timestep_for_scaling = float(timesteps.max()) if (scale_factor != 1 or scale_watershed != 1) else 1.0
        rope = self.rotary(frames, rows, cols, samples.device, scale_factor, scale_watershed, timestep_for_scaling)

        x = self.x_embedder(self.patchify(samples))
        mask = encoder_attention_mask[..., None].float()
        pooled = (encoder_hidden_states * mask).sum(dim=1) / (mask.sum(dim=1) + 1e-8)
        y = self.y_embedder(pooled.to(x.dtype))
        cond = self.t_embedder(groups_t) + y[:, None, :]  # (B, G, min(hidden, 1024))

        for block in self.layers:
            x = block(x, cond, rope, encoder_hidden_states, encoder_attention_mask)
        x = self.final_layer(x, cond)
        return self.unpatchify(x, frames, rows, cols)

    # ---- strict loading -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """diffusers' loader, made strict: any missing, unexpected or mis-shaped tensor is an error that
        names the folder and the tensors."""
        kwargs["output_loading_info"] = True
        kwargs.setdefault("low_cpu_mem_usage", False)
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise CheckpointError(f"cannot load NextDiT from {pretrained_model_name_or_path}: {exc}") from exc
        problems = []
        for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
            if info.get(key):
                problems.append(f"{key.replace('_', ' ')}: {', '.join(map(str, info[key]))}")
        if problems:
            raise CheckpointError(f"checkpoint {pretrained_model_name_or_path} does not match NextDiT: " + "; ".join(problems))
        return model
