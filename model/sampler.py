"""The frame-sequence flow-matching sampler, batched over requests of one frame shape.

Each request of a batch has its own text, guidance, seed (noise), denoise mask, step count, schedule
and condition frames; they share the frame shape (frame count and resolution), so that one forward of
the denoiser per step serves them all, each row at its own step (`SteppedBatch`: requests join and
leave between steps). A request's result never depends on its companions: every row of the batch is
computed independently and text is padded with masked tokens.

Semantics follow the reference sampler:
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

    def batch(self, forward_kwargs: Optional[dict] = None) -> "SteppedBatch":
        """An empty batch that requests join and leave between steps (step-level continuous batching)."""
        return SteppedBatch(self, forward_kwargs)

    @torch.no_grad()
    def sample(
        self,
        requests: Sequence[SampleRequest],
        on_step: Optional[Callable[[int, int], None]] = None,
        canceled: Optional[Callable[[], set[int]]] = None,
        forward_kwargs: Optional[dict] = None,
    ) -> list[SampleResult]:
        """Denoise a batch that starts and ends together. `on_step(step, total)` is called as steps finish;
        `canceled()` (polled each step) returns the indexes of requests to drop; when all are dropped the
        loop stops early."""
        if not requests:
            return []
        shapes = {tuple(r.noise.shape) for r in requests}
        steps = {r.num_inference_steps for r in requests}
        if len(shapes) != 1 or len(steps) != 1:
            raise ValueError(f"a sampler batch needs one frame shape and step count, got {shapes} and {steps}")
        n_steps = steps.pop()
        batch = self.batch(forward_kwargs)
        for b, request in enumerate(requests):
            batch.add(b, request)
        timesteps = {b: batch.timesteps_of(b) for b in range(len(requests))}
        dropped: set[int] = set()
        clock = StepClock(self.device, (lambda s: on_step(s, n_steps)) if on_step else None)
        all_dropped = (lambda: len(dropped | set(canceled())) >= len(requests)) if canceled is not None else None
        for i in range(n_steps):
            try:
                batch.step(all_dropped)
            except Interrupted:
                dropped = set(range(len(requests)))
                break
            clock.step_enqueued(i + 1)
            if canceled is not None:
                for b in set(canceled()) - dropped:
                    dropped.add(b)
                    batch.remove(b)
                if len(dropped) >= len(requests):
                    break
        clock.finish()
        results = []
        for b in range(len(requests)):
            if b in dropped:
                results.append(SampleResult(latents=None, timesteps=timesteps[b], canceled=True))
            else:
                results.append(SampleResult(latents=batch.latents_of(b), timesteps=timesteps[b]))
        return results


class _Row:
    """One request inside a SteppedBatch: its own schedule, and how far along it is."""

    def __init__(self, request: SampleRequest, frame_t: torch.Tensor, dts: torch.Tensor, timesteps: list[float]):
        self.request = request
        self.frame_t = frame_t  # (N, F): per step, the timestep of each frame (conditions: the last one)
        self.dts = dts  # (N,) sigma_next - sigma
        self.timesteps = timesteps
        self.step = 0

    @property
    def total(self) -> int:
        return self.request.num_inference_steps

    @property
    def done(self) -> bool:
        return self.step >= self.total


class SteppedBatch:
    """Requests of one frame shape denoised together, one step at a time; each request keeps its own step
    count, schedule, guidance and text, and may join or leave between any two steps.

    Every row is computed independently (text padded with masked tokens, the Euler update per row), so a
    request's result is the same whether it ran alone, in a batch from the start, or joined one mid-run.
    `sample()` is this with every request added before the first step."""

    def __init__(self, sampler: FlowSampler, forward_kwargs: Optional[dict] = None):
        self.sampler = sampler
        self.forward_kwargs = forward_kwargs or {}
        self.device, self.dtype = sampler.device, sampler.dtype
        self.keys: list = []  # row order of the tensors below
        self.rows: dict = {}
        self.latents: Optional[torch.Tensor] = None  # (B, F, C, h, w) float32
        self.clean: Optional[torch.Tensor] = None
        self.frame_mask: Optional[torch.Tensor] = None  # (B, F, 1, 1, 1) bool: frames to denoise
        self._text = None  # cached padded text for the current membership
        self.finished: dict = {}  # key -> final latents of rows that completed their steps

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def frame_shape(self) -> Optional[tuple]:
        return None if self.latents is None else tuple(self.latents.shape[1:])

    @torch.no_grad()
    def add(self, key, request: SampleRequest) -> None:
        """Join at the next step (raises ValueError when the request does not fit the batch)."""
        device = self.device
        n_frames = request.noise.shape[0]
        if self.frame_shape is not None and tuple(request.noise.shape) != self.frame_shape:
            raise ValueError(f"a sampler batch needs one frame shape, got {tuple(request.noise.shape)} for {self.frame_shape}")
        if key in self.rows or key in self.finished:
            raise ValueError(f"request {key!r} is already in the batch")
        target = torch.tensor(list(request.denoise_mask), dtype=torch.bool, device=device)
        if target.shape[0] != n_frames:
            raise ValueError(f"denoise_mask has {target.shape[0]} entries for {n_frames} frames")
        latents = request.noise.to(device=device, dtype=torch.float32)
        clean = torch.zeros_like(latents)
        n_cond = n_frames - int(sum(request.denoise_mask))
        if n_cond:
            if request.cond_latents is None or request.cond_latents.shape[0] != n_cond:
                got = 0 if request.cond_latents is None else request.cond_latents.shape[0]
                raise ValueError(f"request {key!r} has {n_cond} condition frames but {got} condition latents")
            clean[~target] = request.cond_latents.to(device=device, dtype=torch.float32)
        frame_mask = target[:, None, None, None]
        latents = torch.where(frame_mask, latents, clean)
        timesteps, sigmas = self.sampler.schedule(request.num_inference_steps, self.sampler.image_seq_len(request))
        timesteps, sigmas = timesteps.to(device), sigmas.to(device)
        frame_t = torch.where(target[None], timesteps[:, None], timesteps[-1:, None])  # (N, F)
        dts = sigmas[1:] - sigmas[:-1]
        self.rows[key] = _Row(request, frame_t, dts, timesteps.tolist())
        self.keys.append(key)
        self.latents = latents[None] if self.latents is None else torch.cat([self.latents, latents[None]])
        self.clean = clean[None] if self.clean is None else torch.cat([self.clean, clean[None]])
        self.frame_mask = frame_mask[None] if self.frame_mask is None else torch.cat([self.frame_mask, frame_mask[None]])
        self._text = None

    def remove(self, key) -> None:
        """Leave the batch (a canceled request, or one that failed elsewhere); nothing else changes."""
        if key not in self.rows:
            return
        index = self.keys.index(key)
        keep = [i for i in range(len(self.keys)) if i != index]
        del self.rows[key]
        self.keys.pop(index)
        if not self.keys:
            self.latents = self.clean = self.frame_mask = None
        else:
            keep_t = torch.tensor(keep, device=self.latents.device)
            self.latents = self.latents.index_select(0, keep_t)
            self.clean = self.clean.index_select(0, keep_t)
            self.frame_mask = self.frame_mask.index_select(0, keep_t)
        self._text = None

    def step_of(self, key) -> int:
        return self.rows[key].step

    def timesteps_of(self, key) -> list[float]:
        row = self.rows.get(key)
        if row is not None:
            return row.timesteps
        return self.finished[key][1] if key in self.finished else []

    def latents_of(self, key) -> Optional[torch.Tensor]:
        """Final latents of a finished request (kept until `pop_finished`)."""
        return self.finished[key][0] if key in self.finished else None

    def pop_finished(self, key) -> torch.Tensor:
        return self.finished.pop(key)[0]

    def _text_inputs(self):
        if self._text is None:
            requests = [self.rows[k].request for k in self.keys]
            guided = [b for b, r in enumerate(requests) if r.guided]
            text, mask = _pad_text(
                [requests[b].uncond_embeds for b in guided] + [r.cond_embeds for r in requests],
                [requests[b].uncond_mask for b in guided] + [r.cond_mask for r in requests],
            )
            rows = guided + list(range(len(requests)))  # forward rows: [uncond of guided requests, cond of all]
            device = self.device
            self._text = (
                text.to(device=device, dtype=self.dtype),
                mask.to(device),
                torch.tensor(rows, device=device),
                torch.tensor(guided, dtype=torch.long, device=device),
                torch.tensor([requests[b].guidance_scale for b in guided], device=device).view(-1, 1, 1, 1, 1),
            )
        return self._text

    @torch.no_grad()
    def step(self, all_dropped: Optional[Callable[[], bool]] = None) -> list:
        """One denoiser forward for every row, each at its own step; returns the keys of rows that have
        just done their last step (they leave the batch; `pop_finished(key)` gives their latents).
        Raises Interrupted when `all_dropped()` says nobody wants the step any more."""
        if not self.keys:
            return []
        text, text_mask, rows_t, guided_t, scales = self._text_inputs()
        rows = [self.rows[k] for k in self.keys]
        frame_t = torch.stack([row.frame_t[row.step] for row in rows])  # (B, F)
        dts = torch.stack([row.dts[row.step] for row in rows])  # (B,)
        n_uncond = guided_t.shape[0]
        model_in = self.latents.index_select(0, rows_t).to(self.dtype)
        with interruptible(self.sampler.transformer, all_dropped):
            v = self.sampler.transformer(model_in, frame_t.index_select(0, rows_t), text, text_mask, **self.forward_kwargs)
        v = v.float()
        v_cond = v[n_uncond:]
        if n_uncond:
            v_u = v[:n_uncond]
            v_g = v_u + scales * (v_cond.index_select(0, guided_t) - v_u)
            v_cond = v_cond.index_copy(0, guided_t, v_g)
        self.latents = self.latents + dts.view(-1, 1, 1, 1, 1) * v_cond
        self.latents = torch.where(self.frame_mask, self.latents, self.clean)
        done = []
        for key, row in zip(list(self.keys), rows):
            row.step += 1
            if row.done:
                done.append(key)
        for key in done:
            index = self.keys.index(key)
            self.finished[key] = (self.latents[index].clone(), self.rows[key].timesteps)
            self.remove(key)
        return done
