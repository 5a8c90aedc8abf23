"""Soft-capped self-attention: `softmax(cap * tanh(q k^T * scale / cap)) v`.

The released OneDiffusion model was trained with its image self-attention logits soft-capped at 30, so
the cap is part of the model's semantics in every dtype. PyTorch's SDPA has no soft-cap, so:

- `math`: the reference formula, chunked over queries so memory stays bounded (CPU, float32, tests).
- `flex`: FlexAttention with the cap as a score modifier (CUDA), compiled once per process.

`ONEDIFFUSION_ATTENTION` (`auto`, `math`, `flex`) forces a backend; `auto` takes `flex` on CUDA and
`math` elsewhere. Tests pin every path to `math`.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

import torch

SOFTCAP = 30.0


def attention_math(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cap: float | None = SOFTCAP, chunk: int | None = None
) -> torch.Tensor:
    """Reference soft-capped attention. q, k, v: (B, H, L, D), same number of heads.

    Queries are processed a block of rows at a time, sized so the block's logits (about 2^20 values)
    stay in cache while tanh and softmax pass over them; softmax runs in float32."""
    b, h, length, d = q.shape
    if chunk is None:
        chunk = max(16, min(1024, 2**20 // max(1, b * h * k.shape[-2])))
    q = q * (1.0 / math.sqrt(d) / (cap or 1.0))
    out = torch.empty_like(q)
    kt = k.transpose(-1, -2)
    for start in range(0, length, chunk):
        s = torch.matmul(q[..., start : start + chunk, :], kt).float()
        if cap is not None:
            s = s.tanh_().mul_(cap)
        p = torch.softmax(s, dim=-1).to(v.dtype)
        out[..., start : start + chunk, :] = torch.matmul(p, v)
    return out


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def attention_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cap: float = SOFTCAP) -> torch.Tensor:
    """FlexAttention with the cap written as `2*cap*sigmoid(2s/cap) - cap`: the same function as
    `cap*tanh(s/cap)`, but it lowers to a fast exp instead of a slow library tanh in the kernel."""

    def score_mod(score, b, h, q_idx, kv_idx):
        return 2.0 * cap * torch.sigmoid(score * (2.0 / cap)) - cap

    return _compiled_flex()(q, k, v, score_mod=score_mod)


def softcap_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cap: float = SOFTCAP) -> torch.Tensor:
    """Soft-capped attention over (B, H, L, D) tensors."""
    backend = os.environ.get("ONEDIFFUSION_ATTENTION", "auto")
    if backend == "flex" or (backend == "auto" and q.is_cuda):
        return attention_flex(q, k, v, cap)
    return attention_math(q, k, v, cap)
