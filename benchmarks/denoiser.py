"""Denoiser benchmark: one guided forward (batch 2) of the released-size NextDiT with random weights.

    python -m benchmarks.denoiser                      # on the GPU, bf16, released size
    python -m benchmarks.denoiser --tiny --device cpu  # the same code at toy size (what the suite runs)

In one run it measures the card's matrix-product peak, then for each reference workload (text-to-
image 1024; a two-frame task at 512; multiview with 8 frames at 512; text-to-image 1024 with 4 prompts)
times our optimised path (per-frame adaLN, soft-capped attention through the fused Triton kernel or
FlexAttention, whichever passes its check on the card, torch.compile on CUDA) and a plain eager pass of the same model, and prints ms per forward, TFLOP/s by the reference FLOP
formula, utilisation of the measured peak and peak memory. It also reports the optimised output's
relative error against a float32 pass on the same weights.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from model.attention import select_backend, use_backend

if TYPE_CHECKING:  # imported where used: the GPU check's env and attention parts run without diffusers
    from model.nextdit import NextDiT

RELEASED = dict(
    input_size=(1, 32, 32), patch_size=(1, 2, 2), in_channels=16, hidden_size=3840, depth=16, num_heads=32,
    num_kv_heads=8, multiple_of=256, caption_channels=2048, qk_norm=True, model_max_length=512, rotary_max_length=128,
)
TINY = dict(RELEASED, hidden_size=192, depth=2, num_heads=4, num_kv_heads=2, multiple_of=32, caption_channels=64)
TEXT_TOKENS = 300


@dataclass
class Workload:
    name: str
    frames: int
    size: int  # pixels, square
    prompts: int  # guided: 2 forward rows per prompt

    def tokens(self, patch: int = 16) -> int:
        return self.frames * (self.size // patch) ** 2


WORKLOADS = [
    Workload("text-to-image 1024x1024", 1, 1024, 1),
    Workload("2-frame task 512x512", 2, 512, 1),
    Workload("multiview 8 frames 512x512", 8, 512, 1),
    Workload("text-to-image 1024x1024, 4 prompts", 1, 1024, 4),
]


def block_params(model: NextDiT) -> int:
    """P of the FLOP formula: q, k, v, o, FFN and adaLN weights of one block."""
    block = model.layers[0]
    attn = block.attention
    parts = [attn.wq, attn.wk, attn.wv, attn.wo, block.feed_forward.w1, block.feed_forward.w2, block.feed_forward.w3,
             block.adaLN_modulation[1]]
    return sum(p.weight.numel() for p in parts)


def forward_flops(model: NextDiT, workload: Workload) -> float:
    """The reference FLOP formula (benchmarks/RESULTS.md): 16 * (L * (2P + 4*L*D + 4*300*D) + text) per sample, text = K/V projection of the
    300 text tokens; times 2 rows per prompt (guidance)."""
    cfg = model.config
    d, depth = cfg.hidden_size, cfg.depth
    length = workload.tokens()
    kv_dim = model.layers[0].attention.wk_y.weight.shape[0]
    text = 2 * TEXT_TOKENS * cfg.caption_channels * kv_dim * 2
    per_sample = depth * (length * (2 * block_params(model) + 4 * length * d + 4 * TEXT_TOKENS * d) + text)
    return per_sample * 2 * workload.prompts


def build(config: dict, device: torch.device, dtype: torch.dtype, seed: int = 0) -> NextDiT:
    """Random weights, initialised on the device (a 2.8B model is slow to initialise on the CPU)."""
    from model.nextdit import NextDiT

    torch.manual_seed(seed)
    with torch.device("meta"):
        model = NextDiT(**config)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.fill_(1.0 if "norm" in name else 0.0)
                if name.endswith("gate"):
                    p.normal_(0, 0.5)
            else:
                p.normal_(0, 0.02)
    return torch.nn.Module.to(model, dtype).eval().requires_grad_(False)  # (diffusers warns needlessly on .to(dtype))


def inputs(workload: Workload, config: dict, device, dtype, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    rows = 2 * workload.prompts
    latent = workload.size // 8
    x = torch.randn(rows, workload.frames, 16, latent, latent, generator=g).to(device, dtype)
    t = (torch.rand(rows, workload.frames, generator=g) * 1000).to(device)
    y = torch.randn(rows, TEXT_TOKENS, config["caption_channels"], generator=g).to(device, dtype)
    mask = torch.ones(rows, TEXT_TOKENS, dtype=torch.long, device=device)
    mask[: rows // 2, 40:] = 0  # the negative prompt is shorter
    return x, t, y, mask


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, iters: int, warmup: int) -> float:
    """Median ms per call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[len(times) // 2]


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """Measured TFLOP/s of an n^3 matrix product."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = timed(lambda: a @ b, device, iters=10, warmup=3)
    return 2 * n**3 / (ms / 1000) / 1e12


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@contextlib.contextmanager
def attention(backend: str):
    """`backend` pinned for the block (the first rule of `model.attention.backend_for`), then unpinned."""
    use_backend(backend)
    try:
        yield
    finally:
        use_backend(None)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="toy-size model and images (checks the code runs)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--attention", help="force a registered backend of the optimised path (triton-fast, triton, flex, math, ...)")
    parser.add_argument("--eager-attention", help="backend of the eager baseline (default: math on the CPU; on CUDA the "
                        "optimised path's backend, uncompiled: the chunked math path is far too slow at released size)")
    parser.add_argument("--workloads", type=int, default=len(WORKLOADS), help="run only the first N workloads")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    config = TINY if args.tiny else RELEASED
    workloads = [Workload(w.name, w.frames, w.size // 8 if args.tiny else w.size, w.prompts) for w in WORKLOADS]
    peak = matmul_peak(device, dtype, 8192 if cuda and not args.tiny else 1024)
    card = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"device: {card}; dtype {dtype}; matmul peak {peak:.1f} TFLOP/s (measured)")

    model = build(config, device, dtype)
    optimised_backend = args.attention or select_backend(device, dtype)
    eager_backend = args.eager_attention or (optimised_backend if cuda else "math")
    print(f"attention backend of the optimised path: {optimised_backend}; eager baseline: {eager_backend}")
    compiled = torch.compile(model, dynamic=False) if cuda and not args.no_compile else model
    rows = []
    figures = {"device": card, "dtype": str(dtype), "matmul_peak_tflops": round(peak, 1), "tiny": args.tiny,
               "optimised_attention": optimised_backend, "workloads": rows}
    for i, w in enumerate(workloads[: args.workloads]):
        x, t, y, mask = inputs(w, config, device, dtype)
        flops = forward_flops(model, w)
        with torch.no_grad():
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            with attention(optimised_backend):
                fast_ms = timed(lambda: compiled(x, t, y, mask), device, args.iters, args.warmup)
            fast_mem = peak_memory_gib(device)
            with attention(eager_backend):
                eager_ms = timed(lambda: model(x, t, y, mask), device, max(1, args.iters // 2), 1)
            row = {
                "workload": w.name, "tokens_per_sample": w.tokens(), "tflop": round(flops / 1e12, 3),
                "optimised_ms": round(fast_ms, 2), "optimised_tflops": round(flops / fast_ms / 1e9, 4),
                "optimised_mfu": round(flops / fast_ms / 1e9 / peak, 4), "optimised_peak_mem_gib": round(fast_mem, 2),
                "eager_ms": round(eager_ms, 2), "eager_tflops": round(flops / eager_ms / 1e9, 4), "eager_attention": eager_backend,
            }
            if i == 0:
                with attention(optimised_backend):
                    out = compiled(x, t, y, mask).float()
                reference = build(config, device, torch.float32)
                with attention("math"):
                    expected = reference(x.float(), t, y.float(), mask)
                row["rel_error_vs_fp32"] = float((out - expected).norm() / expected.norm())
                del reference
        rows.append(row)
        if args.json:  # after every workload, so a caller that stops this run at a time budget keeps the rows so far
            with open(args.json, "w") as f:
                json.dump(dict(figures, workloads=rows), f, indent=2)
        print(
            f"{w.name:38s} {row['optimised_ms']:9.2f} ms  {row['optimised_tflops']:7.2f} TFLOP/s  "
            f"MFU {row['optimised_mfu']:.2f}  peak {row['optimised_peak_mem_gib']:.1f} GiB  | eager {row['eager_ms']:9.2f} ms"
            + (f"  | rel. error vs fp32 {row['rel_error_vs_fp32']:.2e}" if "rel_error_vs_fp32" in row else ""),
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
