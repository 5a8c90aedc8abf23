"""The GPU check: one command on a GPU machine (an H100/H200 or any CUDA card); see docs/gpu.md.

    python -m benchmarks.gpu_check                       # on the GPU (make gpu-check); about 6 minutes at most
    python -m benchmarks.gpu_check --tiny --device cpu   # the same code at toy size (the suite runs this)

Each part runs in a child process with its own time budget, so a part that hangs or compiles for too
long is stopped and reported as such while the others still run (the tiny CPU run forks these processes from
one that has imported torch and the model's libraries once, `PartLauncher`; on the GPU each is a fresh
interpreter):

- env:       card, versions, the measured bf16 matrix-product peak;
- opcheck:   `torch.library.opcheck` of our attention op on the model's real layouts (transposed views);
- compile:   a released-width model (2 blocks) compiled with `torch.compile(dynamic=False)` against eager
             math, for every attention backend (triton-fast, triton, flex; math);
- attention: soft-capped attention TFLOP/s per backend at 2048/4096/8192 tokens (B=2, 32 heads, 8 kv heads,
             head_dim 120), its error against the float32 formula, and SDPA without the cap as the roofline;
- denoiser:  `benchmarks.denoiser`'s four workloads, optimised vs the eager model on the fastest backend;
- pipeline:  end to end at released size with random weights (NextDiT 2.8B, a T5-XL encoder, a 16-channel
             VAE): text-to-image 1024x1024, 50 steps, one image and four in one batch; first job (compile),
             seconds per image, peak memory;
- fp8:       `benchmarks.fp8` (PRECISION=fp8 against bf16), on cards that have FP8.

It writes one JSON, `benchmarks/results/gpu_check-<card>.json`, and prints a table. Needs torch, triton and
transformers (the GPU image has them) plus diffusers (the model is a diffusers ModelMixin; with its
importlib_metadata) for the compile, denoiser, pipeline and fp8 parts, pydantic for the pipeline part
(task requests), and torchao for the fp8 part; a
missing package is named (at the start and in the part's result) and only the parts that need it are
skipped. Install what is missing (`make gpu-check` installs the project with the `fp8` extra first); on a
machine without a package index, `pip download` the wheels (diffusers, importlib_metadata, pydantic,
pydantic_core, annotated_types, typing_inspection, torchao, ...) for its Python and platform elsewhere and
`pip install --no-index` them there.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# seconds per part on the GPU (6 minutes in all); the tiny CPU run gets its own, smaller budgets
BUDGETS = {"env": 20, "opcheck": 30, "compile": 70, "attention": 40, "denoiser": 70, "pipeline": 100, "fp8": 30}
TINY_BUDGETS = {"env": 120, "opcheck": 180, "compile": 300, "attention": 180, "denoiser": 180, "pipeline": 180, "fp8": 120}
# Not on the GPU image (carry the wheels): diffusers (the model is a diffusers ModelMixin; with importlib_metadata),
# pydantic (the task requests of the pipeline part; with pydantic_core, annotated_types, typing_inspection), torchao.
NEEDS = {"compile": ["diffusers"], "denoiser": ["diffusers"], "pipeline": ["diffusers", "pydantic"], "fp8": ["diffusers", "torchao"]}


def _save(args, figures: dict) -> dict:
    """Write a part's figures so far: a part stopped at its budget still reports what it measured."""
    Path(args.part_out).write_text(json.dumps(figures, default=float))
    return figures


def _sig(value: float) -> float:
    """Three significant figures (tiny CPU figures would round to 0 at fixed decimals)."""
    return float(f"{value:.3g}")


def _device(args):
    import torch

    return torch.device(args.device)


def _dtype(device):
    import torch

    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _backends(device) -> list[str]:
    """The registered attention backends worth measuring on `device` (`model/attention_registry.py`): on the
    CPU, math and the exp2 Triton kernel in Triton's interpreter (the fast tanh is a PTX instruction)."""
    from model.attention import candidates

    return candidates(device)


def _layouts(batch: int, length: int, heads: int, kv_heads: int, dim: int, device, dtype):
    """q, k, v as the model passes them: transposed views of (B, L, H, D) tensors."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    q = (torch.randn(batch, length, heads, dim, generator=g) * 3).to(device, dtype).transpose(1, 2)
    k = (torch.randn(batch, length, kv_heads, dim, generator=g) * 3).to(device, dtype).transpose(1, 2)
    v = torch.randn(batch, length, kv_heads, dim, generator=g).to(device, dtype).transpose(1, 2)
    return q, k, v


# ---- parts ---------------------------------------------------------------------------------------------
def part_env(args) -> dict:
    import torch

    from benchmarks.denoiser import matmul_peak

    device = _device(args)
    figures = {"torch": torch.__version__, "python": sys.version.split()[0]}
    for name in ("triton", "transformers", "diffusers", "torchao"):
        try:
            figures[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            figures[name] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        figures.update(card=props.name, capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1))
    else:
        figures["card"] = "CPU"
    figures["matmul_peak_tflops"] = round(matmul_peak(device, _dtype(device), 1024 if args.tiny else 8192), 2)
    return figures


def part_opcheck(args) -> dict:
    import torch

    from model.triton_attention import softcap_attention_op

    device = _device(args)
    shapes = [(1, 40, 4, 2, 48), (2, 33, 4, 4, 120)] if args.tiny else [(2, 1024, 32, 8, 120), (1, 4096, 32, 8, 120)]
    results = {}
    for fast in (False, True):
        if fast and device.type != "cuda":
            continue  # tanh.approx is PTX: GPU only
        for shape in shapes:
            q, k, v = _layouts(*shape, device, _dtype(device))
            name = f"{'triton-fast' if fast else 'triton'} B{shape[0]} L{shape[1]} H{shape[2]}/{shape[3]} D{shape[4]}"
            try:
                torch.library.opcheck(softcap_attention_op, (q, k, v, 30.0, fast))
                results[name] = "passed"
            except Exception as exc:
                results[name] = f"FAILED: {type(exc).__name__}: {str(exc)[:300]}"
    return {"cases": results, "passed": all(v == "passed" for v in results.values())}


def part_compile(args) -> dict:
    import torch

    from benchmarks.denoiser import RELEASED, TINY, Workload, build, inputs
    from model.attention import use_backend
    from worker.fast_path import relative_error

    device = _device(args)
    dtype = _dtype(device)
    # tiny: one small block (inductor on 2 CPU cores is slow); else released width, two blocks
    config = dict(TINY, depth=1, hidden_size=96, num_heads=2, num_kv_heads=1, caption_channels=32) if args.tiny else dict(RELEASED, depth=2)
    model = build(config, device, dtype)
    w = Workload("compile check", 2, 64 if args.tiny else 512, 1)
    x, t, y, mask = inputs(w, config, device, dtype)
    rows = {}
    with torch.no_grad():
        use_backend("math")
        reference = model(x, t, y, mask)
        for name in _backends(device):  # on the CPU: math, and the Triton kernel in the interpreter
            compiled = torch.compile(model, dynamic=False)
            use_backend(name)
            started = time.perf_counter()
            try:
                out = compiled(x, t, y, mask)
                error = relative_error(out, reference)
                rows[name] = {"rel_error_vs_eager_math": error, "max_abs_error": float((out.float() - reference.float()).abs().max()),
                              "compile_s": round(time.perf_counter() - started, 1), "passed": error < 3e-2}
            except Exception as exc:
                rows[name] = {"passed": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            torch._dynamo.reset()
            _save(args, {"backends": rows})
    use_backend(None)
    return {"backends": rows}


def attention_tflops(length: int, heads: int = 32, dim: int = 120, batch: int = 2) -> float:
    """FLOPs of one attention forward: two matrix products of (L x L x D) per head."""
    return 4 * batch * heads * length * length * dim


def part_attention(args) -> dict:
    import torch
    import torch.nn.functional as F

    from benchmarks.denoiser import timed
    from model.attention import attention_math, run_backend

    device = _device(args)
    dtype = _dtype(device)
    lengths = [64, 128] if args.tiny else [2048, 4096, 8192]
    heads, kv_heads, dim = (4, 2, 120) if args.tiny else (32, 8, 120)
    rows = {}
    for length in lengths:
        q, k, v = _layouts(2, length, heads, kv_heads, dim, device, dtype)
        flops = attention_tflops(length, heads, dim)
        row = {}
        ref = attention_math(q.float(), k.float(), v.float())  # the float32 formula
        for name in _backends(device):
            try:
                out = run_backend(name, q, k, v)
                error = float((out.float() - ref).norm() / ref.norm())
                ms = timed(lambda: run_backend(name, q, k, v), device, iters=2 if args.tiny else 20, warmup=1 if args.tiny else 3)
                row[name] = {"ms": round(ms, 3), "tflops": _sig(flops / ms / 1e9), "rel_error_vs_fp32": error}
            except Exception as exc:
                row[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        try:  # the roofline: SDPA, no cap
            rep = heads // kv_heads
            kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            ms = timed(lambda: F.scaled_dot_product_attention(q, kk, vv), device, iters=2 if args.tiny else 20, warmup=1 if args.tiny else 3)
            row["sdpa-no-cap"] = {"ms": round(ms, 3), "tflops": _sig(flops / ms / 1e9)}
        except Exception as exc:
            row["sdpa-no-cap"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        rows[str(length)] = row
        _save(args, {"batch": 2, "heads": heads, "kv_heads": kv_heads, "head_dim": dim, "tokens": rows})
        del q, k, v, ref
    return {"batch": 2, "heads": heads, "kv_heads": kv_heads, "head_dim": dim, "tokens": rows}


def part_denoiser(args) -> dict:
    """`benchmarks.denoiser`, which writes its JSON after every workload: stopped at the budget, the part
    keeps the workloads it finished."""
    from benchmarks import denoiser

    argv = ["--device", args.device, "--json", args.part_out]
    argv += ["--tiny", "--iters", "2", "--warmup", "1", "--workloads", "2"] if args.tiny else ["--iters", "5", "--warmup", "2"]
    if args.attention:  # the fastest backend measured by the attention part, for both sides
        argv += ["--attention", args.attention, "--eager-attention", args.attention]
    denoiser.main(argv)
    return json.loads(Path(args.part_out).read_text())


def released_model(device, dtype):
    """OneDiffusion at released size with random weights, built in memory (no checkpoint to download):
    NextDiT 2.8B, a T5-XL encoder (d_model 2048, 24 layers), the 16-channel VAE; the demo tokenizer."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    from benchmarks.denoiser import RELEASED, build
    from model.demo_checkpoint import _write_tokenizer
    from model.loading import Components
    from model.pipeline import OneDiffusion

    folder = Path(tempfile.mkdtemp()) / "tokenizer"
    _write_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.device("meta"):
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32,
            feed_forward_proj="gated-gelu", dropout_rate=0.0,
        ))
    text_encoder = text_encoder.to_empty(device=device)
    with torch.no_grad():
        for p in text_encoder.parameters():
            p.normal_(0, 0.02)
    text_encoder = text_encoder.to(dtype).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=1.5305, shift_factor=0.0609,
    ).to(device, dtype).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    transformer = build(RELEASED, device, dtype)
    return OneDiffusion(Components(transformer, vae, text_encoder, tokenizer, scheduler, device, dtype, folder.parent))


def part_pipeline(args) -> dict:
    import torch

    from model.attention import use_backend
    from model.tasks import TaskLimits, TextToImage
    from worker.fast_path import choose_fast_path

    device = _device(args)
    if args.tiny:
        from model.demo_checkpoint import make_demo_checkpoint
        from model.pipeline import OneDiffusion

        model = OneDiffusion.load(str(make_demo_checkpoint(Path(tempfile.mkdtemp()) / "demo")), device=args.device)
        size, steps = 64, 2  # a smoke figure: the fewest steps that still run the sampler's loop more than once
    else:
        model = released_model(device, _dtype(device))
        size, steps = 1024, 50
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def plans(n: int):
        request = dict(prompt="a lighthouse on a cliff at sunset", width=size, height=size, num_inference_steps=steps, seed=1)
        return [TextToImage(**request).plan(TaskLimits(max_side=4096, max_output_pixels=2**24)) for _ in range(n)]

    started = time.perf_counter()
    if args.attention:  # the fastest backend of the attention part: compile once, not every candidate
        use_backend(args.attention)
        fast_path = {"attention": args.attention, "compile": "inductor" if device.type == "cuda" else "off"}
        if device.type == "cuda":
            model.sampler.transformer = torch.compile(model.components.transformer, dynamic=False)
    else:  # as a worker starts (the compile part covers the CPU)
        chosen, model.sampler.transformer = choose_fast_path(
            model.components.transformer, [(size, size, 1)], compile=device.type == "cuda", timed_runs=1,
        )
        fast_path = chosen.as_info()
    model.run(plans(1))  # what the first job after a restart pays: the check, compilation, a whole image
    first_job_s = time.perf_counter() - started
    _save(args, {"size": size, "steps": steps, "fast_path": fast_path, "first_job_s": round(first_job_s, 2)})

    def seconds(n: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        results = model.run(plans(n))
        if device.type == "cuda":
            torch.cuda.synchronize()
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        return time.perf_counter() - t0

    one = seconds(1)
    four = seconds(4)
    from benchmarks.denoiser import peak_memory_gib

    return {
        "size": size, "steps": steps, "fast_path": fast_path, "first_job_s": round(first_job_s, 2),
        "s_per_image": round(one, 3), "s_per_image_batch_of_4": round(four / 4, 3), "peak_mem_gib": round(peak_memory_gib(device), 2),
    }


def part_fp8(args) -> dict:
    import torch

    device = _device(args)
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        return {"skipped": "FP8 needs a CUDA card of compute capability >= 8.9"}
    from benchmarks import fp8

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        fp8.main(["--json", out.name, "--workloads", "0", "--iters", "5", "--warmup", "2", "--no-ablation"])
        return json.loads(Path(out.name).read_text())


PARTS: dict[str, Callable] = {
    "env": part_env, "opcheck": part_opcheck, "compile": part_compile, "attention": part_attention,
    "denoiser": part_denoiser, "pipeline": part_pipeline, "fp8": part_fp8,
}


# ---- running the parts -----------------------------------------------------------------------------------
def run_part(name: str, args, budget: float, launcher: "PartLauncher | None" = None) -> dict:
    """One part in a child process, stopped at its budget; its JSON, or why there is none. With a launcher
    (the tiny CPU run) the child is forked from a process that has imported the libraries already; else it is
    a fresh interpreter."""
    missing = [p for p in NEEDS.get(name, []) if importlib.util.find_spec(p) is None]
    if missing:
        return {"status": "skipped", "why": f"missing package(s): {', '.join(missing)} (carry the wheels, see the module doc)"}
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = ["--part", name, "--part-out", out.name, "--device", args.device]
        command += ["--tiny"] if args.tiny else []
        command += ["--attention", args.attention] if args.attention else []
        if launcher is not None:
            returncode, stderr, elapsed = launcher.run(command, budget)
            elapsed = round(elapsed, 1)
        else:
            started = time.perf_counter()
            try:
                child = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", *command], cwd=ROOT, env=part_env(args),
                                       capture_output=True, text=True, timeout=budget)
                returncode, stderr = child.returncode, child.stderr
            except subprocess.TimeoutExpired:
                returncode = None
            elapsed = round(time.perf_counter() - started, 1)
        if returncode is None:
            return {"status": "timed out", "budget_s": budget, **_partial(Path(out.name))}
        if returncode != 0:
            return {"status": "failed", "seconds": elapsed, "stderr": stderr[-3000:]}
        return {"status": "ok", "seconds": elapsed, **json.loads(Path(out.name).read_text())}


def part_env(args) -> dict:
    """The environment of a part's process."""
    env = dict(os.environ)
    if args.device == "cpu":
        env["TRITON_INTERPRET"] = "1"  # the Triton kernels run in Triton's interpreter on the CPU
    return env


# What the parts import, by part: the launcher of a tiny CPU run imports these once for the parts it will run.
PRELOAD = {
    "env": ["torch", "benchmarks.denoiser"],
    "opcheck": ["torch", "model.triton_attention"],
    "compile": ["torch", "torch._dynamo", "torch._inductor.compile_fx", "model.nextdit", "model.triton_attention",
                "benchmarks.denoiser", "worker.fast_path"],
    "attention": ["torch", "model.attention", "model.triton_attention", "benchmarks.denoiser"],
    "denoiser": ["torch", "model.nextdit", "benchmarks.denoiser"],
    "pipeline": ["torch", "model.nextdit", "model.triton_attention", "model.pipeline", "model.demo_checkpoint",
                 "model.tasks", "worker.fast_path", "benchmarks.denoiser"],
    "fp8": ["torch"],
}


class PartLauncher:
    """The tiny CPU run's way to start parts: on two CPU cores, importing torch, diffusers and transformers
    takes longer than most tiny parts, and every fresh interpreter pays it again. A launcher process (started
    with the environment a part's interpreter would get) imports what the given parts use once, then forks one
    child per part: each part still runs in a process of its own, with nothing compiled or measured before
    it, and is killed at its budget like a fresh interpreter. The budget counts from the fork."""

    def __init__(self, parts: list[str], env: dict):
        modules = list(dict.fromkeys(m for part in parts for m in PRELOAD.get(part, [])))
        self.process = subprocess.Popen([sys.executable, "-m", "benchmarks.gpu_check", "--serve-parts", ",".join(modules)],
                                        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._buffer = b""

    def _line(self, deadline: float | None) -> str | None:
        """The launcher's next reply; None when `deadline` (time.monotonic) passes first."""
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and (left <= 0 or not select.select([fd], [], [], left)[0]):
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"the part launcher exited (code {self.process.wait()})")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def run(self, command: list[str], budget: float) -> tuple[int | None, str, float]:
        """(exit code or None when stopped at the budget, the child's stderr, seconds) of one part."""
        with tempfile.NamedTemporaryFile(suffix=".stderr") as stderr:
            self.process.stdin.write((json.dumps({"argv": command, "stderr": stderr.name}) + "\n").encode())
            self.process.stdin.flush()
            pid = int(self._line(None))
            started = time.perf_counter()
            reply = self._line(time.monotonic() + budget)
            if reply is None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:  # it ended just now; the launcher reaps it and replies
                    pass
                self._line(None)
            elapsed = time.perf_counter() - started
            return (None if reply is None else int(reply)), Path(stderr.name).read_text(errors="replace"), elapsed

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def launcher_for(args, parts: list[str]) -> PartLauncher | None:
    """The tiny CPU run forks its parts from a launcher; on the GPU each part is a fresh interpreter."""
    return PartLauncher(parts, part_env(args)) if args.tiny and args.device == "cpu" else None


def serve_parts(modules: list[str]) -> None:
    """The launcher process (`PartLauncher`): import `modules` (one that fails to import is left to the part
    that needs it to report), then for each request on stdin fork a child that runs the part, and reply with
    the child's pid, then its exit code."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception:
            pass
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # what a part prints (the denoiser's table) is dropped, as a fresh interpreter's stdout was
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                replies.close()
                os.dup2(devnull, 0)
                os.dup2(os.open(request["stderr"], os.O_WRONLY | os.O_TRUNC), 2)
                main(request["argv"])
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        replies.write(f"{pid}\n")
        _, status = os.waitpid(pid, 0)
        replies.write(f"{os.waitstatus_to_exitcode(status)}\n")


def _partial(path: Path) -> dict:
    """What a part stopped at its budget had saved (`_save`), if anything readable."""
    try:
        return json.loads(path.read_text() or "{}")
    except ValueError:  # stopped in the middle of a write
        return {}


def fastest_eager_backend(attention: dict) -> str | None:
    """The fastest backend at the longest measured length, for the denoiser's eager baseline."""
    tokens = attention.get("tokens") or {}
    if not tokens:
        return None
    row = tokens[max(tokens, key=int)]
    timed = {k: v["ms"] for k, v in row.items() if "ms" in v and k not in ("sdpa-no-cap", "math")}
    return min(timed, key=timed.get) if timed else None


def _why(part: dict) -> str:
    if part.get("status") == "timed out":
        return f"stopped at its budget of {part['budget_s']} s"
    lines = part.get("stderr", "").strip().splitlines()
    return part.get("why") or (lines[-1] if lines else "no output")


def table(results: dict) -> str:
    lines = [f"GPU check on {results['parts'].get('env', {}).get('card', '?')} ({results['when']})"]
    for name, part in results["parts"].items():
        lines.append(f"- {name}: {part.get('status')}" + (f" in {part['seconds']} s" if "seconds" in part else "")
                     + (f" ({_why(part)})" if part.get("status") != "ok" else ""))
    env = results["parts"].get("env", {})
    if "matmul_peak_tflops" in env:
        lines.append(f"  matmul peak {env['matmul_peak_tflops']} TFLOP/s; torch {env.get('torch')}, triton {env.get('triton')}")
    for length, row in results["parts"].get("attention", {}).get("tokens", {}).items():
        cells = ", ".join(f"{k} {v['tflops']} TFLOP/s" if "tflops" in v else f"{k} error" for k, v in row.items())
        lines.append(f"  attention @{length} tokens: {cells}")
    for name, row in results["parts"].get("compile", {}).get("backends", {}).items():
        lines.append(f"  compiled vs eager, {name}: " + ("passed" if row.get("passed") else "FAILED")
                     + (f" (rel. error {row['rel_error_vs_eager_math']:.1e})" if "rel_error_vs_eager_math" in row else f" ({row.get('error', '')[:120]})"))
    for row in results["parts"].get("denoiser", {}).get("workloads", []):
        lines.append(f"  {row['workload']:38s} {row['optimised_ms']:9.2f} ms/step (eager {row['eager_ms']:.2f}, {row['eager_attention']})"
                     f"  MFU {row['optimised_mfu']:.2f}")
    pipe = results["parts"].get("pipeline", {})
    if "s_per_image" in pipe:
        lines.append(f"  pipeline {pipe['size']}px {pipe['steps']} steps: {pipe['s_per_image']} s/image, "
                     f"{pipe['s_per_image_batch_of_4']} s/image in a batch of 4, first job {pipe['first_job_s']} s, peak {pipe['peak_mem_gib']} GiB")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="toy sizes (checks the code; the suite runs it on the CPU)")
    parser.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of: " + ", ".join(PARTS))
    parser.add_argument("--out", help="the JSON to write (default benchmarks/results/gpu_check-<card>.json)")
    parser.add_argument("--attention", help=argparse.SUPPRESS)  # set from the attention part's figures
    parser.add_argument("--part", help=argparse.SUPPRESS)  # child process: run one part
    parser.add_argument("--part-out", help=argparse.SUPPRESS)
    parser.add_argument("--serve-parts", help=argparse.SUPPRESS)  # the tiny CPU run's launcher: modules to import
    args = parser.parse_args(argv)
    if args.serve_parts is not None:
        serve_parts([m for m in args.serve_parts.split(",") if m])
        return {}
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    if args.part:
        figures = PARTS[args.part](args)
        Path(args.part_out).write_text(json.dumps(figures, default=float))
        return figures

    budgets = TINY_BUDGETS if args.tiny else BUDGETS
    missing = sorted({p for need in NEEDS.values() for p in need if importlib.util.find_spec(p) is None})
    if missing:
        print(f"[gpu-check] missing package(s): {', '.join(missing)}; the parts that need them are skipped "
              "(carry the wheels: see the module doc)", flush=True)
    results = {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "tiny": args.tiny, "device": args.device, "parts": {}}
    names = [p.strip() for p in args.parts.split(",") if p.strip()]
    launcher = launcher_for(args, [n for n in names if n in PARTS])
    try:
        for name in names:
            if name not in PARTS:
                parser.error(f"unknown part {name!r}; choose from {', '.join(PARTS)}")
            if name in ("denoiser", "pipeline") and not args.attention and args.device != "cpu":
                args.attention = fastest_eager_backend(results["parts"].get("attention", {}))
            print(f"[gpu-check] {name} (budget {budgets[name]} s) ...", flush=True)
            results["parts"][name] = run_part(name, args, budgets[name], launcher)
            print(f"[gpu-check] {name}: {results['parts'][name]['status']}", flush=True)
    finally:
        if launcher is not None:
            launcher.close()
    card = results["parts"].get("env", {}).get("card", args.device)
    out = Path(args.out) if args.out else RESULTS / f"gpu_check-{re.sub(r'[^A-Za-z0-9]+', '-', card).strip('-').lower()}{'-tiny' if args.tiny else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float))
    print(table(results))
    print(f"written: {out}")
    return results


if __name__ == "__main__":
    main()
