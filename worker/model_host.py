"""Loading the model a worker holds: the configured checkpoint (or the demo one), compiled on CUDA and
warmed for the configured shape buckets so the first real job does not pay for compilation."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from app.settings import Settings
from model.attention import select_backend
from model.demo_checkpoint import make_demo_checkpoint
from model.pipeline import OneDiffusion
from model.precision import apply_precision
from model.tasks import FramePlan, Frame

log = logging.getLogger(__name__)


def checkpoint_path(settings: Settings) -> Path:
    """ONEDIFFUSION_MODEL, or the demo checkpoint (made on first use)."""
    if settings.onediffusion_model:
        return Path(settings.onediffusion_model)
    path = Path(settings.demo_checkpoint_dir)
    if not (path / "model_index.json").is_file():
        log.warning("ONEDIFFUSION_MODEL is not set: making the tiny demo checkpoint in %s (outputs are noise)", path)
        make_demo_checkpoint(path)
    return path


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
    select_backend(device, model.components.dtype)  # checked here, outside any compiled graph
    model.precision = apply_precision(model.components.transformer, settings.precision, device)  # before compiling
    if device.type == "cuda" and settings.compile:
        model.sampler.transformer = torch.compile(model.components.transformer, dynamic=False)
    for plan in warm_plans(settings.warm_buckets):
        t0 = time.monotonic()
        model.run([plan])
        log.info("warmed bucket", extra={"bucket": plan.bucket, "seconds": round(time.monotonic() - t0, 2)})
    return model


def worker_info(model: "OneDiffusion | None") -> dict[str, str]:
    """String fields of the worker's readiness entry (shown by /readyz, counted in /metrics)."""
    precision = getattr(model, "precision", None)
    return precision.as_info() if precision is not None else {}
