"""Soft-capped self-attention: `softmax(cap * tanh(q k^T * scale / cap)) v`, with grouped key/value heads.

The released OneDiffusion model was trained with its image self-attention logits soft-capped at 30, so
the cap is part of the model's semantics in every dtype. PyTorch's SDPA has no soft-cap, so:

- `math`: the reference formula, a block of query rows at a time (CPU, float32, tests, fallback).
- `triton` / `triton-fast`: our fused kernel (`triton_attention.py`), exp2 or hardware tanh.
- `flex`: FlexAttention with the cap as a score modifier, compiled once per process.

`ONEDIFFUSION_ATTENTION` forces one; `auto` (the default) takes `math` off CUDA and, on CUDA, the first
of triton-fast, triton, flex that passes a check against `math` on this machine (`select_backend`).
A worker does better than that at start (`worker/fast_path.py`): it checks each candidate through the
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

SOFTCAP = 30.0
GPU_CANDIDATES = ("triton-fast", "triton", "flex")
BACKENDS = ("math", *GPU_CANDIDATES)
log = logging.getLogger(__name__)
_selected: dict[str, str] = {}  # device:dtype -> backend chosen by select_backend
_pinned: Optional[str] = None  # set by use_backend: wins over the environment and select_backend


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
    if name == "math":
        return attention_math(q, k, v, cap)
    if name == "flex":
        return attention_flex(q, k, v, cap)
    if name in ("triton", "triton-fast"):
        from .triton_attention import softcap_attention_op

        return softcap_attention_op(q, k, v, cap, name == "triton-fast")
    raise ValueError(f"unknown attention backend {name!r}; use auto, math, flex, triton or triton-fast")


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
    """The attention backend for `auto` on this device, chosen once per process and logged."""
    key = f"{device}:{dtype}"
    if key not in _selected:
        choice = "math"
        if device.type == "cuda":
            for name in GPU_CANDIDATES:
                problem = check_backend(name, device, dtype)
                if problem is None:
                    choice = name
                    break
                log.warning("attention backend %s not used: %s", name, problem)
        _selected[key] = choice
        log.info("attention backend: %s", choice, extra={"device": str(device)})
    return _selected[key]


def use_backend(name: Optional[str]) -> None:
    """Pin the backend of every attention call in this process (None: back to the environment / auto).
    torch.compile guards on it, so a compiled model recompiles for another pinned backend."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; use one of {', '.join(BACKENDS)}")
    global _pinned
    _pinned = name


def candidates(device: torch.device) -> list[str]:
    """Backends that can run on `device`: on CUDA the fused kernels and flex; on the CPU the math path,
    plus the Triton kernels when Triton's interpreter is on (TRITON_INTERPRET=1: tests, CPU proofs)."""
    if device.type == "cuda":
        return [*GPU_CANDIDATES, "math"]
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return ["math", "triton", "triton-fast"] if interpreted else ["math"]


def backend_for(device: torch.device, dtype: torch.dtype) -> str:
    if _pinned is not None:
        return _pinned
    forced = os.environ.get("ONEDIFFUSION_ATTENTION", "auto")
    if forced != "auto":
        return forced
    if device.type != "cuda":
        return "math"
    return _selected.get(f"{device}:{dtype}") or select_backend(device, dtype)


def softcap_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cap: float = SOFTCAP) -> torch.Tensor:
    """Soft-capped attention over q (B, H, L, D) and k, v (B, Hkv, L, D). Call `select_backend` before
    compiling a model so the choice (and its check) happens outside the compiled graph."""
    return run_backend(backend_for(q.device, q.dtype), q, k, v, cap)
