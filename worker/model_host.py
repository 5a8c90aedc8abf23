"""Loading the model a worker holds: the configured checkpoint (or the demo one), compiled on CUDA and
warmed for the configured shape buckets so the first real job does not pay for compilation."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from core.settings import Settings
from model.checkpoint_source import resolve_checkpoint
from model.demo_checkpoint import make_demo_checkpoint
from model.pipeline import OneDiffusion
from model.precision import apply_precision
from model.tasks import FramePlan, Frame

from .fast_path import choose_fast_path

log = logging.getLogger(__name__)


def checkpoint_path(settings: Settings) -> Path:
    """ONEDIFFUSION_MODEL (an s3:// or hf:// one fetched into MODEL_CACHE_DIR first), or the demo
    checkpoint (made on first use)."""
    if settings.onediffusion_model:
        return resolve_checkpoint(settings.onediffusion_model, settings.model_cache_dir)
    path = Path(settings.demo_checkpoint_dir)
    if not (path / "model_index.json").is_file():
        log.warning("ONEDIFFUSION_MODEL is not set: making the tiny demo checkpoint in %s (outputs are noise)", path)
        make_demo_checkpoint(path)
    return path


PROBE_SHAPE = {True: (256, 256, 1), False: (64, 64, 1)}  # (height, width, frames) when no bucket is warmed; by CUDA or not


def warm_plans(spec: str) -> list[FramePlan]:
    """'HxWxFxSTEPS,...' -> text-only plans of those shapes (all frames generated)."""
    plans = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        h, w, f, steps = (int(v) for v in item.lower().split("x"))
        frames = [Frame("image", True, f"frame_{i}") for i in range(f)]
        plans.append(FramePlan("warmup", "[[text2image]] warm up", "", w, h, frames, steps, 4.0, seed=0))
    return plans


def load_model(settings: Settings) -> OneDiffusion:
    path = checkpoint_path(settings)
    started = time.monotonic()
    model = OneDiffusion.load(str(path), device=settings.device)
    device = model.device
    log.info("model loaded", extra={"path": str(path), "device": str(device), "demo": model.components.is_demo,
                                    "seconds": round(time.monotonic() - started, 2)})
    model.precision = apply_precision(model.components.transformer, settings.precision, device)  # before compiling
    plans = warm_plans(settings.warm_buckets)
    shapes = [(p.height, p.width, len(p.frames)) for p in plans] or [PROBE_SHAPE[device.type == "cuda"]]
    model.fast_path, model.sampler.transformer = choose_fast_path(
        model.components.transformer, shapes, forced=settings.onediffusion_attention,
        compile=settings.compile and (device.type == "cuda" or settings.compile_on_cpu),
        tolerance=settings.fast_path_tolerance,
    )
    log.info("fast path", extra=model.fast_path.as_info())
    for plan in plans:
        t0 = time.monotonic()
        model.run([plan])
        log.info("warmed bucket", extra={"bucket": plan.bucket, "seconds": round(time.monotonic() - t0, 2)})
    return model


def worker_info(model: "OneDiffusion | None") -> dict[str, str]:
    """String fields of the worker's readiness entry (shown by /readyz, counted in /metrics)."""
    info = {}
    for part in (getattr(model, "precision", None), getattr(model, "fast_path", None)):
        if part is not None:
            info.update(part.as_info())
    components = getattr(model, "components", None)
    if components is not None:  # the playground sizes its defaults to a demo worker (seconds on a CPU)
        info["checkpoint"] = "demo" if components.is_demo else "released"
    return info
