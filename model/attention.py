"""Soft-capped self-attention: `softmax(cap * tanh(q k^T * scale / cap)) v`, with grouped key/value heads.

The released OneDiffusion model was trained with its image self-attention logits soft-capped at 30, so
the cap is part of the model's semantics in every dtype. PyTorch's SDPA has no soft-cap, so:

- `math`: the reference formula, a block of query rows at a time (CPU, float32, tests, fallback).
- `triton` / `triton-fast`: our fused kernel (`triton_attention.py`), exp2 or hardware tanh.
- `flex`: FlexAttention with the cap as a score modifier, compiled once per process.

The backends, their constraints and the candidates of a device are registered in `attention_registry.py`;
this module holds the functions, the check of a backend against `math`, and the one selection policy
(`backend_for`). A worker chooses at start (`worker/fast_path.py`): it checks each candidate through the
compiled model at its warm shapes, keeps the fastest that passes, and pins it with `use_backend`.
Key/value heads are shared by groups of consecutive query heads (`repeat_interleave` order).
"""

from __future__ import annotations

import logging
import math
import os
from functools import lru_cache
from typing import Optional

import torch

from .attention_registry import AUTO, FALLBACK, backend_names, candidates, check_setting, get_attention_backend

__all__ = [
    "SOFTCAP", "attention_flex", "attention_math", "backend_for", "candidates", "check_backend", "run_backend",
    "select_backend", "softcap_attention", "use_backend",
]

SOFTCAP = 30.0
SETTING = "ONEDIFFUSION_ATTENTION"
log = logging.getLogger(__name__)
_selected: dict[str, str] = {}  # device:dtype -> backend measured by select_backend
_pinned: Optional[str] = None  # set by use_backend: the first rule of backend_for


def _expand_kv(k: torch.Tensor, heads: int) -> torch.Tensor:
    rep = heads // k.shape[1]
    return k if rep == 1 else k.repeat_interleave(rep, dim=1)


def attention_math(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cap: float | None = SOFTCAP, chunk: int | None = None
) -> torch.Tensor:
    """Reference soft-capped attention. q: (B, H, L, D); k, v: (B, Hkv, L, D).

    Queries are processed a block of rows at a time, sized so the block's logits (about 2^20 values)
    stay in cache while tanh and softmax pass over them; softmax runs in float32."""
    b, h, length, d = q.shape
    k, v = _expand_kv(k, h), _expand_kv(v, h)
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

    return _compiled_flex()(q, k, v, score_mod=score_mod, enable_gqa=k.shape[1] != q.shape[1])


def run_backend(name: str, q, k, v, cap: float = SOFTCAP) -> torch.Tensor:
    """Attention through the registered backend `name` (ValueError listing the registered ones if none)."""
    return get_attention_backend(name)(q, k, v, cap)


def check_backend(name: str, device: torch.device, dtype: torch.dtype, tol: float = 2e-2) -> Optional[str]:
    """None when `name` runs here and matches the float32 reference (relative error under `tol` at the
    model's head size, grouped heads and an odd length); else why not."""
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (1, 4, 333, 120)
    q = (torch.randn(shape, generator=g) * 3).to(device, dtype)
    k = (torch.randn((1, 2, 333, 120), generator=g) * 3).to(device, dtype)
    v = torch.randn((1, 2, 333, 120), generator=g).to(device, dtype)
    try:
        out = run_backend(name, q, k, v).float()
    except Exception as exc:  # a backend that cannot compile or run here is simply not chosen
        return f"{type(exc).__name__}: {exc}"
    ref = attention_math(q.float(), k.float(), v.float())
    error = float((out - ref).norm() / ref.norm())
    return None if error < tol else f"relative error {error:.2e}"


def select_backend(device: torch.device, dtype: torch.dtype) -> str:
    """The measured rule of `backend_for` (benchmarks call it too): the first registered candidate of this
    device (leaving out those that run here only in Triton's interpreter) that passes `check_backend`, else
    the fallback. Measured once per process, device and dtype, and logged."""
    key = f"{device}:{dtype}"
    if key not in _selected:
        choice = FALLBACK
        for name in candidates(device, dtype, interpreted=False):
            if name == FALLBACK:
                break
            problem = check_backend(name, device, dtype)
            if problem is None:
                choice = name
                break
            log.warning("attention backend %s not used: %s", name, problem)
        _selected[key] = choice
        log.info("attention backend: %s", choice, extra={"device": str(device)})
    return _selected[key]


def use_backend(name: Optional[str]) -> None:
    """Pin the backend of every attention call in this process (None: unpin). The backend's function is
    imported here, outside any compiled graph. torch.compile guards on the pin, so a compiled model
    recompiles for another pinned backend."""
    global _pinned
    if name is not None:
        get_attention_backend(name).function()
    _pinned = name


def backend_for(device: torch.device, dtype: torch.dtype) -> str:
    """The selection policy, the only one: which registered backend an attention call runs.

    1. explicit: the backend pinned in this process (`use_backend`: the worker pins what its start-up check
       measured and verified, which is the setting when that passes; tests and benchmarks pin too), else
       the setting ONEDIFFUSION_ATTENTION when it is not `auto`;
    2. measured: on CUDA, the first candidate that passes the check against `math` (`select_backend`);
    3. fallback: `math` (off CUDA, or no candidate passed). Off CUDA only a worker's start-up check measures
       (the CPU's other candidates run in Triton's interpreter, for proofs).

    It runs inside compiled graphs: pin (or measure with `select_backend`) before compiling, so that nothing
    is imported or checked in the graph."""
    if _pinned is not None:
        return _pinned
    forced = os.environ.get(SETTING, AUTO)
    if forced != AUTO:
        return check_setting(forced)
    if device.type != "cuda":
        return FALLBACK
    return _selected.get(f"{device}:{dtype}") or select_backend(device, dtype)


def softcap_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cap: float = SOFTCAP) -> torch.Tensor:
    """Soft-capped attention over q (B, H, L, D) and k, v (B, Hkv, L, D). Call `select_backend` (or pin one
    with `use_backend`) before compiling a model so the choice (and its check) happens outside the graph."""
    return run_backend(backend_for(q.device, q.dtype), q, k, v, cap)


def _load_the_set_backend() -> None:
    """Import the function of the backend ONEDIFFUSION_ATTENTION names, now rather than inside the first
    compiled graph that calls it (an import there breaks the graph); one that cannot load fails when used."""
    name = os.environ.get(SETTING, AUTO)
    if name != AUTO and name in backend_names():
        try:
            get_attention_backend(name).function()
        except ImportError:
            pass


_load_the_set_backend()
