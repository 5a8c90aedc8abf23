"""The frame-sequence flow-matching sampler, batched over requests of one frame shape.

Each request of a batch has its own text, guidance, seed (noise), denoise mask, schedule and condition
frames; they share the frame shape (frame count and resolution) and the step count, so that one forward
of the denoiser per step serves them all. A request's result never depends on its companions: every
row of the batch is computed independently and text is padded with masked tokens.

Semantics follow the reference sampler (SPEC section 2):
- sigmas `linspace(1, 1/N, N)` shifted by `mu = calculate_shift(L)` with
  `L = noise_scale * frames_to_denoise * (H/16) * (W/16)`, through diffusers'
  `FlowMatchEulerDiscreteScheduler.set_timesteps`;
- frames to denoise get the step's timestep, condition frames the schedule's last timestep, and their
  clean latents are re-imposed after every step;
- guidance `v = v_u + g (v_c - v_u)` when `g > 1`, with the negative prompt as the unconditional text;
- the Euler update of the scheduler, `x += (sigma_next - sigma) * v`, applied per request (each has its
  own sigmas), in float32.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler


def calculate_shift(
    seq_len: float,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.16,
) -> float:
    """mu on the line through (base_seq_len, base_shift) and (max_seq_len, max_shift)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return seq_len * slope + base_shift - slope * base_seq_len


@dataclass
class SampleRequest:
    """One request of a sampler batch, already encoded.

    `noise` is the initial noise of every frame `(F, C, h, w)`; `cond_latents` the clean, scaled latents
    of the condition frames (mask 0) in frame order `(n_cond, C, h, w)`. Text embeddings are
    `(L, D)` with a `(L,)` mask; `uncond_*` are needed only when `guidance_scale > 1`."""

    noise: torch.Tensor
    denoise_mask: Sequence[int]
    cond_embeds: torch.Tensor
    cond_mask: torch.Tensor
    num_inference_steps: int
    guidance_scale: float = 1.0
    uncond_embeds: Optional[torch.Tensor] = None
    uncond_mask: Optional[torch.Tensor] = None
    cond_latents: Optional[torch.Tensor] = None
    noise_scale: float = 1.0

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1.0


@dataclass
class SampleResult:
    latents: Optional[torch.Tensor]  # (F, C, h, w) float32, None when the request was canceled
    timesteps: list[float] = field(default_factory=list)
    canceled: bool = False


def _pad_text(embeds: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack text of different lengths, padding with masked zeros (which change nothing)."""
    length = max(e.shape[0] for e in embeds)
    out = embeds[0].new_zeros(len(embeds), length, embeds[0].shape[-1])
    out_mask = torch.zeros(len(embeds), length, dtype=torch.long, device=embeds[0].device)
    for i, (e, m) in enumerate(zip(embeds, masks)):
        out[i, : e.shape[0]] = e
        out_mask[i, : m.shape[0]] = m.to(torch.long)
    return out, out_mask


class StepClock:
    """Reports finished steps without a host sync: on CUDA each step records an event that is polled."""

    def __init__(self, device: torch.device, callback: Optional[Callable[[int], None]]):
        self.cuda = device.type == "cuda"
        self.callback = callback
        self.pending: list[tuple[int, object]] = []

    def step_enqueued(self, step: int) -> None:
        if self.callback is None:
            return
        if not self.cuda:
            self.callback(step)
            return
        event = torch.cuda.Event()
        event.record()
        self.pending.append((step, event))
        while self.pending and self.pending[0][1].query():
            self.callback(self.pending.pop(0)[0])

    def finish(self) -> None:
        for step, event in self.pending:
            event.synchronize()
            self.callback(step)
        self.pending.clear()


INTERRUPT_POLL_S = 0.5  # how often, at most, a step in progress asks whether its batch is still wanted


class Interrupted(Exception):
    """Every request of the batch was dropped while a step was in progress."""


@contextmanager
def interruptible(transformer: torch.nn.Module, all_dropped: Optional[Callable[[], bool]]):
    """Between the denoiser's blocks, ask `all_dropped()` (at most every INTERRUPT_POLL_S) and abort the
    step with Interrupted when nobody wants it any more: a cancel or a time limit then takes effect within
    one block, not one whole step. Eager models only: a compiled graph is left whole (its steps are short)."""
    blocks = getattr(transformer, "layers", None)
    if all_dropped is None or blocks is None or isinstance(transformer, torch._dynamo.eval_frame.OptimizedModule):
        yield
        return
    last = [time.monotonic()]

    def ask(module, args):
        if torch.compiler.is_compiling() or time.monotonic() - last[0] < INTERRUPT_POLL_S:
            return
        last[0] = time.monotonic()
        if all_dropped():
            raise Interrupted

    handles = [block.register_forward_pre_hook(ask) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class FlowSampler:
    def __init__(self, transformer: torch.nn.Module, scheduler: FlowMatchEulerDiscreteScheduler):
        self.transformer = transformer
        self.scheduler = scheduler

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def schedule(self, num_inference_steps: int, image_seq_len: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Model timesteps (N,) and sigmas (N+1,) of one request, from the scheduler itself."""
        scheduler = copy.deepcopy(self.scheduler)
        cfg = scheduler.config
        mu = calculate_shift(
            image_seq_len, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift, cfg.max_shift
        )
        sigmas = np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps)
        scheduler.set_timesteps(sigmas=sigmas, mu=mu)
        return scheduler.timesteps.float(), scheduler.sigmas.float()

    @staticmethod
    def image_seq_len(request: SampleRequest, patch: int = 2) -> float:
        h, w = request.noise.shape[-2:]
        return request.noise_scale * sum(request.denoise_mask) * (h / patch) * (w / patch)

    @torch.no_grad()
    def sample(
        self,
        requests: Sequence[SampleRequest],
        on_step: Optional[Callable[[int, int], None]] = None,
        canceled: Optional[Callable[[], set[int]]] = None,
        forward_kwargs: Optional[dict] = None,
    ) -> list[SampleResult]:
        """Denoise a batch. `on_step(step, total)` is called as steps finish; `canceled()` (polled each
        step) returns the indexes of requests to drop; when all are dropped the loop stops early."""
        if not requests:
            return []
        shapes = {tuple(r.noise.shape) for r in requests}
        steps = {r.num_inference_steps for r in requests}
        if len(shapes) != 1 or len(steps) != 1:
            raise ValueError(f"a sampler batch needs one frame shape and step count, got {shapes} and {steps}")
        n_steps = steps.pop()
        device, dtype = self.device, self.dtype
        batch = len(requests)
        n_frames = requests[0].noise.shape[0]

        target = torch.tensor([list(r.denoise_mask) for r in requests], dtype=torch.bool, device=device)
        if target.shape[1] != n_frames:
            raise ValueError(f"denoise_mask has {target.shape[1]} entries for {n_frames} frames")
        latents = torch.stack([r.noise for r in requests]).to(device=device, dtype=torch.float32)
        clean = torch.zeros_like(latents)
        for b, r in enumerate(requests):
            n_cond = n_frames - int(sum(r.denoise_mask))
            if n_cond:
                if r.cond_latents is None or r.cond_latents.shape[0] != n_cond:
                    got = 0 if r.cond_latents is None else r.cond_latents.shape[0]
                    raise ValueError(f"request {b} has {n_cond} condition frames but {got} condition latents")
                clean[b, ~target[b]] = r.cond_latents.to(device=device, dtype=torch.float32)
        frame_mask = target[:, :, None, None, None]
        latents = torch.where(frame_mask, latents, clean)

        schedules = [self.schedule(n_steps, self.image_seq_len(r)) for r in requests]
        timesteps = torch.stack([t for t, _ in schedules]).to(device)  # (B, N)
        sigmas = torch.stack([s for _, s in schedules]).to(device)  # (B, N+1)
        # per step and frame: the step's timestep for frames to denoise, the last one for conditions
        frame_t = torch.where(target[None], timesteps.T[:, :, None], timesteps[None, :, -1:])  # (N, B, F)
        dts = (sigmas[:, 1:] - sigmas[:, :-1]).T.contiguous()  # (N, B)

        guided = [b for b, r in enumerate(requests) if r.guided]
        rows = guided + list(range(batch))  # forward rows: [uncond of guided requests, cond of all]
        text, text_mask = _pad_text(
            [requests[b].uncond_embeds for b in guided] + [r.cond_embeds for r in requests],
            [requests[b].uncond_mask for b in guided] + [r.cond_mask for r in requests],
        )
        text = text.to(device=device, dtype=dtype)
        text_mask = text_mask.to(device)
        rows_t = torch.tensor(rows, device=device)
        guided_t = torch.tensor(guided, dtype=torch.long, device=device)
        scales = torch.tensor([requests[b].guidance_scale for b in guided], device=device).view(-1, 1, 1, 1, 1)
        n_uncond = len(guided)

        dropped: set[int] = set()
        clock = StepClock(device, (lambda s: on_step(s, n_steps)) if on_step else None)
        all_dropped = (lambda: len(dropped | set(canceled())) >= batch) if canceled is not None else None
        for i in range(n_steps):
            model_in = latents.index_select(0, rows_t).to(dtype)
            try:
                with interruptible(self.transformer, all_dropped):
                    v = self.transformer(model_in, frame_t[i].index_select(0, rows_t), text, text_mask, **(forward_kwargs or {}))
            except Interrupted:
                dropped = set(range(batch))
                break
            v = v.float()
            v_cond = v[n_uncond:]
            if n_uncond:
                v_u = v[:n_uncond]
                v_g = v_u + scales * (v_cond.index_select(0, guided_t) - v_u)
                v_cond = v_cond.index_copy(0, guided_t, v_g)
            latents = latents + dts[i].view(-1, 1, 1, 1, 1) * v_cond
            latents = torch.where(frame_mask, latents, clean)
            clock.step_enqueued(i + 1)
            if canceled is not None:
                dropped |= set(canceled())
                if len(dropped) >= batch:
                    break
        clock.finish()

        results = []
        for b in range(batch):
            if b in dropped:
                results.append(SampleResult(latents=None, timesteps=timesteps[b].tolist(), canceled=True))
            else:
                results.append(SampleResult(latents=latents[b], timesteps=timesteps[b].tolist()))
        return results
