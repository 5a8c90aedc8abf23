"""Soft-capped attention: every backend against the reference formula."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys

import pytest
import torch

from model.attention import attention_math, check_backend, select_backend


def naive(q, k, v, cap=30.0):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(cap * torch.tanh(s / cap), dim=-1) @ v


@pytest.mark.parametrize("heads,kv_heads,length,dim", [(4, 2, 100, 120), (4, 4, 64, 48), (8, 2, 257, 120)])
def test_math_matches_the_formula_with_grouped_heads(heads, kv_heads, length, dim):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads, length, dim, generator=g) * 4
    k = torch.randn(2, kv_heads, length, dim, generator=g) * 4
    v = torch.randn(2, kv_heads, length, dim, generator=g)
    torch.testing.assert_close(attention_math(q, k, v, chunk=16), naive(q, k, v), atol=1e-5, rtol=1e-5)
    # large logits: the cap matters (without it the result differs)
    assert (attention_math(q, k, v, cap=None) - naive(q, k, v)).abs().max() > 1e-2


def test_cpu_uses_the_reference_path():
    assert select_backend(torch.device("cpu"), torch.float32) == "math"


TRITON_CHECK = r"""
import torch
from model.attention import attention_math, check_backend
from model.triton_attention import attention_triton
g = torch.Generator().manual_seed(1)
for (h, hkv, l, d) in [(4, 2, 100, 120), (2, 2, 130, 48), (8, 2, 64, 120)]:
    q = torch.randn(2, h, l, d, generator=g) * 4
    k = torch.randn(2, hkv, l, d, generator=g) * 4
    v = torch.randn(2, hkv, l, d, generator=g)
    out = attention_triton(q, k, v, block_m=32, block_n=32)
    ref = attention_math(q, k, v)
    err = (out - ref).abs().max().item()
    assert err < 1e-4, (h, hkv, l, d, err)
    # the fixed shift by the cap is safe at the extremes: logits pinned at +-cap
    big = attention_triton(q * 100, k * 100, v, block_m=32, block_n=32)
    assert torch.isfinite(big).all() and (big - attention_math(q * 100, k * 100, v)).abs().max() < 1e-3
assert check_backend("triton", torch.device("cpu"), torch.float32) is None
print("ok")
"""


@pytest.mark.slow  # the kernel in Triton's interpreter: about 10 s
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed (a dev extra on Linux x86_64)")
def test_triton_kernel_in_the_interpreter():
    """The fused kernel, run by Triton's interpreter on the CPU, equals the reference."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_unknown_backend_is_refused():
    assert "unknown attention backend" in check_backend("nope", torch.device("cpu"), torch.float32)
