"""From frame plans to results: encode conditions, sample a batch, decode, post-process.

    plans -> condition latents (VAE) / ray maps (cameras) + noise + text -> FlowSampler -> latents
          -> VAE decode of generated image frames -> the post-processor of the plan's output kind
             (`postprocess.py`: images, depth, masks, boxes, camera poses) -> TaskResult

`image_tensor` (from `preprocess`) is the input preparation: image bytes and a size -> the (3, H, W)
tensor in [-1, 1] that the VAE encodes, as the reference makes it.
A plan that cannot be prepared (a broken image, say) fails alone; the others still run as one batch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .cameras import camera_frames, camera_matrix, default_intrinsics
from .loading import Components, load_components
from .postprocess import OutputFile, Outputs, TaskResult, postprocessor  # noqa: F401  (re-exported)
from .preprocess import image_tensor
from .sampler import FlowSampler, SampleRequest, SampleResult, SteppedBatch
from .tasks import FramePlan
from .text import PromptEncoder

log = logging.getLogger(__name__)
LATENT_CHANNELS = 16
VAE_CHUNK = 8


class Canceled(Exception):
    """The job was canceled while it ran."""


CUT_EXCERPT_CHARS = 40


def cut_warning(label: str, max_tokens: int, dropped: str) -> str:
    """Where a prompt was cut, in a few words: the dropped text is not repeated whole (it would make every
    record and webhook of the job grow with it)."""
    excerpt = dropped if len(dropped) <= CUT_EXCERPT_CHARS else dropped[:CUT_EXCERPT_CHARS].rstrip() + "..."
    return (f"{label} was cut to {max_tokens} tokens; its last {len(dropped)} characters were not used, "
            f"from {excerpt!r}")


class OneDiffusion:
    """The model in memory: one per worker process."""

    def __init__(self, components: Components):
        self.components = components
        self.sampler = FlowSampler(components.transformer, components.scheduler)
        self.text = PromptEncoder(components.tokenizer, components.text_encoder)
        vae = components.vae
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = vae.config.scaling_factor

    @classmethod
    def load(cls, path: str, device: Optional[str] = None) -> "OneDiffusion":
        return cls(load_components(path, device))

    @property
    def device(self) -> torch.device:
        return self.components.device

    # ---- VAE ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> scaled latents (N, 16, H/8, W/8), float32 (no shift factor).

        With a generator: a sample of the VAE posterior, `mean + std * eps` with `eps` drawn from it at once
        for all N images (as the reference does), so that a seed gives the reference's latents; without
        one, the posterior mean."""
        vae = self.components.vae
        means, stds = [], []
        for part in images.split(VAE_CHUNK):
            posterior = vae.encode(part.to(self.device, vae.dtype)).latent_dist
            means.append(posterior.mean.float())
            stds.append(posterior.std.float())
        mean, std = torch.cat(means), torch.cat(stds)
        if generator is None:
            return mean * self.scaling_factor
        eps = torch.randn(mean.shape, generator=generator).to(mean.device)
        return (mean + std * eps) * self.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """(N, 16, h, w) -> uint8 (N, H, W, 3)."""
        vae = self.components.vae
        out = []
        for part in latents.split(VAE_CHUNK):
            pixels = vae.decode((part / self.scaling_factor).to(vae.dtype)).sample
            pixels = (pixels.float() / 2 + 0.5).clamp(0, 1)
            out.append((pixels.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy())
        return np.concatenate(out)

    # ---- preparation ---------------------------------------------------------------------------------
    def latent_size(self, plan: FramePlan) -> tuple[int, int]:
        return plan.height // self.vae_scale, plan.width // self.vae_scale

    def condition_latents(self, plan: FramePlan, generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
        """Clean latents of the plan's condition frames in frame order: VAE latents of the given images
        (posterior samples drawn from `generator`, the mean without one), ray maps of the given cameras
        (relative to the first given camera)."""
        h, w = self.latent_size(plan)
        given = [f for f in plan.frames if not f.generate]
        if not given:
            return None
        image_latents = None
        if plan.images:
            pixels = torch.stack([image_tensor(data, plan.width, plan.height) for data in plan.images])
            image_latents = self.encode_images(pixels, generator)
        ray_frames = None
        if plan.cameras:
            c2ws = torch.stack([camera_matrix(spec) for spec in plan.cameras])
            intrinsics = default_intrinsics(len(plan.cameras), plan.focal_length)
            ray_frames = camera_frames(c2ws, h, intrinsics).float().to(self.device)
        frames = []
        for frame in given:
            if frame.kind == "image":
                frames.append(image_latents[frame.source])
            else:
                frames.append(ray_frames[frame.camera])
        return torch.stack(frames)

    def seeded_inputs(self, plan: FramePlan) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(initial noise, condition latents) from the plan's seed, drawn in the reference's order from one
        generator on the CPU (the same on every device): with input images, first a noise tensor of one
        frame that the reference draws and never uses, then the VAE posterior samples of the images, then
        the noise of every frame. Without input images only the noise is drawn (text-to-image and
        text-to-multiview draw just that). So a seed gives the reference's noise and latents for every
        task, when the reference is seeded with a CPU generator (or torch.manual_seed on the CPU)."""
        h, w = self.latent_size(plan)
        generator = torch.Generator(device="cpu").manual_seed(plan.seed)
        if plan.images:
            torch.randn((1, LATENT_CHANNELS, h, w), generator=generator)  # drawn and unused, as the reference
        cond = self.condition_latents(plan, generator)
        noise = torch.randn((len(plan.frames), LATENT_CHANNELS, h, w), generator=generator)
        return noise, cond

    def sample_request(self, plan: FramePlan) -> tuple[SampleRequest, list[str]]:
        guided = plan.guidance_scale > 1.0
        prompts = [plan.prompt] + ([plan.negative_prompt] if guided else [])
        encoded = self.text.encode(prompts)
        warnings = [cut_warning(label, self.text.max_length, e.truncated)
                    for label, e in zip(("prompt", "negative_prompt"), encoded) if e.truncated]
        noise, cond_latents = self.seeded_inputs(plan)
        request = SampleRequest(
            noise=noise,
            denoise_mask=plan.denoise_mask,
            cond_embeds=encoded[0].embeds,
            cond_mask=encoded[0].mask,
            num_inference_steps=plan.num_inference_steps,
            guidance_scale=plan.guidance_scale,
            uncond_embeds=encoded[1].embeds if guided else None,
            uncond_mask=encoded[1].mask if guided else None,
            cond_latents=cond_latents,
            noise_scale=plan.noise_scale,
        )
        return request, warnings

    # ---- step-level batches ---------------------------------------------------------------------------
    def live_batch(self, plan: FramePlan) -> "LiveBatch":
        """An empty batch for plans of `plan`'s token shape, that plans join and leave between steps."""
        return LiveBatch(self, plan)

    # ---- the batch --------------------------------------------------------------------------------------
    def run(
        self,
        plans: Sequence[FramePlan],
        on_step: Optional[Callable[[int, int], None]] = None,
        canceled: Optional[Callable[[], set[int]]] = None,
    ) -> list[TaskResult | BaseException]:
        """Run plans of one bucket as one sampler batch. Each entry of the result is the plan's
        TaskResult, or the exception that failed it alone (Canceled for a canceled one)."""
        results: list[TaskResult | BaseException] = [TaskResult() for _ in plans]
        requests: list[SampleRequest] = []
        index: list[int] = []  # position in `plans` of each sampler request
        t0 = time.perf_counter()
        for i, plan in enumerate(plans):
            try:
                request, warnings = self.sample_request(plan)
            except Exception as exc:  # a bad plan fails alone
                log.warning("preparing plan %d (%s) failed: %s", i, plan.task, exc)
                results[i] = exc
                continue
            results[i].warnings.extend(plan.warnings + warnings)
            requests.append(request)
            index.append(i)
        t_prepare = time.perf_counter() - t0

        def canceled_requests() -> set[int]:
            if canceled is None:
                return set()
            dropped = canceled()
            return {k for k, i in enumerate(index) if i in dropped}

        t1 = time.perf_counter()
        sampled = self._sample_by_rope_group(
            [plans[i] for i in index], requests, on_step, canceled_requests if canceled else None
        )
        t_sample = time.perf_counter() - t1

        for k, (i, out) in enumerate(zip(index, sampled)):
            if out.canceled:
                results[i] = Canceled("canceled while running")
                continue
            t2 = time.perf_counter()
            try:
                self.finish(plans[i], out.latents, results[i])
            except Exception as exc:
                log.exception("post-processing plan %d (%s) failed", i, plans[i].task)
                results[i] = exc
                continue
            results[i].timings = {
                "prepare_s": round(t_prepare, 4),
                "denoise_s": round(t_sample, 4),
                "decode_s": round(time.perf_counter() - t2, 4),
                "batch_size": len(requests),
            }
        return results

    def _sample_by_rope_group(
        self,
        plans: Sequence[FramePlan],
        requests: list[SampleRequest],
        on_step: Optional[Callable[[int, int], None]],
        canceled: Optional[Callable[[], set[int]]],
    ) -> list[SampleResult]:
        """One sampler batch per RoPE scaling group (`FramePlan.rope_group`): the denoiser applies one
        scaling to its whole batch, so a request's scaling never comes from its companions. The worker
        batches by `FramePlan.bucket`, which includes the group, so normally there is one group."""
        groups: dict[tuple, list[int]] = {}
        for k, plan in enumerate(plans):
            groups.setdefault(plan.rope_group, []).append(k)
        sampled: list[Optional[SampleResult]] = [None] * len(requests)
        for key, members in groups.items():
            kwargs = {"scale_factor": key[0], "scale_watershed": key[1]} if key else None
            dropped = (lambda m=members: (lambda gone: {j for j, k in enumerate(m) if k in gone})(canceled())) if canceled else None
            outs = self.sampler.sample([requests[k] for k in members], on_step=on_step, canceled=dropped, forward_kwargs=kwargs)
            for k, out in zip(members, outs):
                sampled[k] = out
        return sampled  # type: ignore[return-value]

    # ---- outputs ---------------------------------------------------------------------------------------
    def finish(self, plan: FramePlan, latents: torch.Tensor, result: TaskResult) -> None:
        """Decode the generated image frames; the post-processor of the plan's output kind fills `result`."""
        make_outputs = postprocessor(plan.postprocess)  # an unknown kind fails before decoding
        targets = [k for k, f in enumerate(plan.frames) if f.generate and f.kind == "image"]
        pictures = self.decode_latents(latents[targets]) if targets else []
        named = {plan.frames[k].name: pic for k, pic in zip(targets, pictures)}
        make_outputs(Outputs(plan, named, latents, result))


def token_shape(plan: FramePlan) -> tuple:
    """Plans with the same token shape can share denoiser steps whatever their step counts: frame count,
    resolution, and the RoPE scaling group (a scaled plan's scaling depends on the batch's timesteps, so
    scaled plans share a batch only when they also share the schedule: see `LiveBatch.joinable`)."""
    return (plan.height, plan.width, len(plan.frames), plan.rope_group)


@dataclass
class _Member:
    plan: FramePlan
    result: TaskResult
    prepare_s: float
    joined: float
    batch_size: int = 1


class LiveBatch:
    """Plans of one token shape denoised one step at a time: a plan joins at any step boundary (its text,
    condition latents and noise prepared then), and leaves when its own steps are done (`take` decodes
    it) or when it is dropped, while the others go on. Results are those of the plan run alone."""

    def __init__(self, model: OneDiffusion, first: FramePlan):
        self.model = model
        self.shape = token_shape(first)
        group = first.rope_group
        kwargs = {"scale_factor": group[0], "scale_watershed": group[1]} if group else None
        self.batch: SteppedBatch = model.sampler.batch(kwargs)
        self.members: dict = {}
        self.steps_run = 0

    def __len__(self) -> int:
        return len(self.batch)

    @property
    def open(self) -> bool:
        """Whether plans may still join: always, but for a RoPE-scaled batch once it has stepped."""
        return not self.shape[3] or self.steps_run == 0

    def joinable(self, plan: FramePlan) -> bool:
        """Same token shape; a RoPE-scaled plan only before the first step and with the same step count
        (the denoiser picks its scaling from the batch's largest timestep)."""
        if token_shape(plan) != self.shape:
            return False
        if self.shape[3]:
            return self.steps_run == 0 and all(m.plan.num_inference_steps == plan.num_inference_steps
                                               for m in self.members.values())
        return True

    def join(self, key, plan: FramePlan) -> None:
        """Prepare the plan (text, VAE, noise) and add it at the next step. Raises what failed it (a
        broken input image, say): that plan alone fails."""
        if not self.joinable(plan):
            raise ValueError(f"plan of shape {token_shape(plan)} cannot join a batch of shape {self.shape}")
        t0 = time.perf_counter()
        request, warnings = self.model.sample_request(plan)
        self.batch.add(key, request)
        result = TaskResult(warnings=list(plan.warnings) + warnings)
        self.members[key] = _Member(plan, result, time.perf_counter() - t0, time.perf_counter())

    def progress(self, key) -> tuple[int, int]:
        member = self.members[key]
        done = self.batch.latents_of(key) is not None
        return (member.plan.num_inference_steps if done else self.batch.step_of(key)), member.plan.num_inference_steps

    def step(self, all_dropped: Optional[Callable[[], bool]] = None) -> list:
        """One denoising step for every member; the keys of those whose steps are now all done.
        Raises `Interrupted` when `all_dropped()` says no member is wanted any more."""
        size = len(self.batch)
        for key in self.batch.keys:
            self.members[key].batch_size = max(self.members[key].batch_size, size)
        done = self.batch.step(all_dropped)
        self.steps_run += 1
        return done

    def drop(self, key) -> None:
        """A member leaves without a result (canceled, timed out); the others are not disturbed."""
        self.batch.remove(key)
        if self.batch.latents_of(key) is not None:
            self.batch.pop_finished(key)
        self.members.pop(key, None)

    def take(self, key) -> TaskResult | BaseException:
        """Decode and post-process a member whose steps are done; it leaves the batch."""
        member = self.members.pop(key)
        latents = self.batch.pop_finished(key)
        denoise_s = time.perf_counter() - member.joined
        t0 = time.perf_counter()
        try:
            self.model.finish(member.plan, latents, member.result)
        except Exception as exc:
            log.exception("post-processing a %s plan failed", member.plan.task)
            return exc
        member.result.timings = {
            "prepare_s": round(member.prepare_s, 4),
            "denoise_s": round(denoise_s, 4),
            "decode_s": round(time.perf_counter() - t0, 4),
            "batch_size": member.batch_size,
        }
        return member.result
