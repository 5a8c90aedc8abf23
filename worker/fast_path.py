"""The worker's fast path, checked before the worker says it is ready.

A compiled model on a broken attention kernel fails every job (our first H100 run did, on a fake-kernel
stride mismatch), so at start the worker runs each candidate (attention backend x compile) at its warm
shapes against eager math on the same inputs, and keeps the fastest candidate that runs and agrees:

1. compiled, for each registered attention backend that can run on the device (`model/attention_registry.py`;
   the fastest passing one wins: a fixed order would pick triton-fast on an H100 where flex is faster);
2. if none passes compiled: eager, for each backend;
3. else eager math, which is the reference.

Every failure is logged with its reason, and the outcome (`FastPath.as_info`) goes to the worker's
readiness entry, so `/readyz` and `/metrics` show a degraded worker.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from model.attention import candidates, use_backend
from model.text import MAX_TEXT_TOKENS

log = logging.getLogger(__name__)

Shape = tuple[int, int, int]  # height, width, frames (pixels)


@dataclass
class Attempt:
    attention: str
    compiled: bool
    ms: Optional[float] = None  # summed over the shapes, median of the timed runs
    error: Optional[str] = None  # why it was not kept

    @property
    def name(self) -> str:
        return f"{self.attention}{' compiled' if self.compiled else ' eager'}"


@dataclass
class FastPath:
    attention: str
    compiled: bool
    asked: str  # what the settings asked for, e.g. "flex compiled" or "auto compiled"
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def degraded(self) -> bool:
        """True when what was asked for (a forced backend, or compilation) is not what runs."""
        forced, _, mode = self.asked.partition(" ")
        return (forced not in ("auto", self.attention)) or (mode == "compiled" and not self.compiled)

    def as_info(self) -> dict[str, str]:
        failed = [f"{a.name}: {a.error}" for a in self.attempts if a.error]
        info = {
            "attention": self.attention,
            "compile": "inductor" if self.compiled else "off",
            "fast_path": "degraded" if self.degraded else "ok",
        }
        if failed:
            info["fast_path_reason"] = "; ".join(failed)[:2000]
        return info


def probe_inputs(transformer, shape: Shape, seed: int = 0) -> tuple:
    """A guided batch (2 rows: a short negative prompt and a full prompt) of one warm shape."""
    height, width, frames = shape
    param = next(transformer.parameters())
    device, dtype = param.device, param.dtype
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(2, frames, transformer.config.in_channels, height // 8, width // 8, generator=g)
    t = torch.rand(2, frames, generator=g) * 1000
    y = torch.randn(2, MAX_TEXT_TOKENS, transformer.config.caption_channels, generator=g)
    mask = torch.ones(2, MAX_TEXT_TOKENS, dtype=torch.long)
    mask[0, 12:] = 0
    return x.to(device, dtype), t.to(device), y.to(device, dtype), mask.to(device)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-12))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_ms(fn: Callable[[], torch.Tensor], device: torch.device, runs: int) -> float:
    times = []
    for _ in range(runs):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


def try_candidate(
    transformer, runner, attempt: Attempt, inputs: list[tuple], references: list[torch.Tensor], tolerance: float,
    timed_runs: int,
) -> Attempt:
    """Run `runner` (the compiled or eager model) with the attempt's backend at every shape; record its
    time or why it failed."""
    device = next(transformer.parameters()).device
    try:
        use_backend(attempt.attention)  # imports the backend's function: a missing package fails the attempt
        total = 0.0
        with torch.no_grad():
            for args, ref in zip(inputs, references):
                out = runner(*args)  # the first call compiles
                error = relative_error(out, ref)
                if not error <= tolerance:
                    attempt.error = f"relative error {error:.2e} against eager math is above {tolerance:g}"
                    return attempt
                total += _timed_ms(lambda: runner(*args), device, timed_runs)
        attempt.ms = total
    except Exception as exc:  # a candidate that cannot compile or run here is simply not kept
        attempt.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
    finally:
        use_backend(None)
    return attempt


def choose_fast_path(
    transformer, shapes: list[Shape], forced: str = "auto", compile: bool = True, tolerance: float = 3e-2,
    timed_runs: int = 3, compiler: Callable = lambda m: torch.compile(m, dynamic=False),
) -> tuple[FastPath, Callable]:
    """The fastest (attention backend, compile) that runs and matches eager math at `shapes`, and the
    module to run (compiled or not). The backend is pinned (`use_backend`) for the process."""
    device = next(transformer.parameters()).device
    order = candidates(device)  # the registered backends that can run on this device, `math` last
    if forced != "auto":
        order = [forced, *(name for name in order if name != forced)]
    fast_path = FastPath("math", False, f"{forced} {'compiled' if compile else 'eager'}")
    inputs = [probe_inputs(transformer, shape) for shape in shapes]
    use_backend("math")
    try:
        with torch.no_grad():
            references = [transformer(*args) for args in inputs]
    finally:
        use_backend(None)

    tiers: list[tuple[bool, Callable]] = []
    if compile:
        tiers.append((True, compiler(transformer)))
    tiers.append((False, transformer))
    for compiled, runner in tiers:
        passed = []
        for name in order:
            if not compiled and name == "math":
                continue  # eager math is the last resort, and the reference itself
            attempt = try_candidate(transformer, runner, Attempt(name, compiled), inputs, references, tolerance, timed_runs)
            fast_path.attempts.append(attempt)
            if attempt.error:
                log.warning("fast path %s not used: %s", attempt.name, attempt.error)
            else:
                log.info("fast path %s: %.1f ms at the warm shapes", attempt.name, attempt.ms)
                passed.append(attempt)
        if passed:
            best = min(passed, key=lambda a: a.ms)
            fast_path.attention, fast_path.compiled = best.attention, compiled
            use_backend(best.attention)
            return fast_path, runner
    use_backend("math")
    return fast_path, transformer
