"""The GPU path, proven on the CPU: our attention op under opcheck on the model's own layouts, the model
compiled with torch.compile equal to eager (math path, and the Triton kernel in Triton's interpreter),
the worker's start-up fallback, and the GPU check's tiny run.

Our first H100 run crashed on a fake-kernel stride mismatch (the fake output followed q's transposed
strides, the real one was contiguous); every test here would have caught it on the CPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from worker.fast_path import choose_fast_path
from tests.paths import ROOT

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed (dev extra, Linux x86_64)")
pytestmark = pytest.mark.slow  # compiles the model (inductor, Triton's interpreter) several times


@pytest.fixture(scope="module")
def gpu_check(tmp_path_factory):
    """`python -m benchmarks.gpu_check --tiny --device cpu`, run once as a user would; its JSON."""
    out = tmp_path_factory.mktemp("gpu_check") / "result.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--tiny", "--device", "cpu", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "GPU check on CPU" in run.stdout and f"written: {out}" in run.stdout, run.stdout
    return json.loads(out.read_text())


@needs_triton
def test_gpu_check_runs_every_part(gpu_check):
    parts = gpu_check["parts"]
    assert list(parts) == ["env", "opcheck", "compile", "attention", "denoiser", "pipeline", "fp8"]
    for name, part in parts.items():
        assert part["status"] in ("ok", "skipped"), (name, part)
    assert parts["env"]["card"] == "CPU" and parts["env"]["matmul_peak_tflops"] > 0
    assert parts["pipeline"]["s_per_image"] > 0 and parts["pipeline"]["first_job_s"] > 0
    assert len(parts["denoiser"]["workloads"]) == 2


@needs_triton
def test_opcheck_on_the_models_layouts(gpu_check):
    """torch.library.opcheck (fake vs real: shapes, dtypes, strides; autograd registration; schema) on q, k, v
    as the model passes them, transposed views of (B, L, H, D), with grouped and ungrouped heads."""
    opcheck = gpu_check["parts"]["opcheck"]
    assert opcheck["passed"] and len(opcheck["cases"]) == 2, opcheck


@needs_triton
@pytest.mark.parametrize("backend", ["math", "triton"])
def test_compiled_model_equals_eager(gpu_check, backend):
    """The tiny model compiled (dynamic=False) against eager math, float32: the math path, and the fused
    kernel in Triton's interpreter."""
    row = gpu_check["parts"]["compile"]["backends"][backend]
    assert row["passed"] and row["max_abs_error"] < 1e-3, row


@needs_triton
def test_attention_backends_match_the_float32_formula(gpu_check):
    for length, row in gpu_check["parts"]["attention"]["tokens"].items():
        for backend in ("math", "triton"):
            assert row[backend]["rel_error_vs_fp32"] < 1e-5, (length, backend, row)
        assert row["sdpa-no-cap"]["tflops"] >= 0


STRIDES = r"""
import torch
from model.triton_attention import softcap_attention_op
q = torch.randn(2, 40, 4, 48).transpose(1, 2)
k = torch.randn(2, 40, 2, 48).transpose(1, 2)
v = torch.randn(2, 40, 2, 48).transpose(1, 2)
real = softcap_attention_op(q, k, v, 30.0, False)
from torch._subclasses.fake_tensor import FakeTensorMode
with FakeTensorMode() as mode:
    fake = softcap_attention_op(*(mode.from_tensor(t) for t in (q, k, v)), 30.0, False)
print(tuple(real.stride()), tuple(fake.stride()))
"""


@needs_triton
def test_fake_and_real_outputs_have_the_same_strides():
    run = subprocess.run([sys.executable, "-c", STRIDES], cwd=ROOT, env={**__import__("os").environ, "TRITON_INTERPRET": "1"},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    real, fake = run.stdout.strip().split(") (")
    assert real + ")" == "(" + fake, run.stdout


# ---- the worker's start-up check ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    from model.nextdit import NextDiT

    return NextDiT.from_pretrained(fixtures_dir / "nextdit_tiny").eval()


def test_a_compiled_model_that_gives_wrong_numbers_is_not_used(tiny):
    """A 'compiler' whose module runs but is off by 50% fails the check: the worker falls back to eager."""

    def broken_compiler(module):
        return lambda *args: module(*args) * 1.5

    fast_path, runner = choose_fast_path(tiny, [(32, 32, 1)], compile=True, compiler=broken_compiler, timed_runs=1)
    assert (fast_path.attention, fast_path.compiled) == ("math", False)
    assert runner is tiny
    info = fast_path.as_info()
    assert info["fast_path"] == "degraded" and "relative error" in info["fast_path_reason"]


def test_a_compiler_that_raises_is_not_used(tiny):
    def failing_compiler(module):
        def run(*args):
            raise RuntimeError("expected size 32==32, stride 491520==120 at dim=1")
        return run

    fast_path, runner = choose_fast_path(tiny, [(32, 32, 1)], compile=True, compiler=failing_compiler, timed_runs=1)
    assert not fast_path.compiled and runner is tiny
    assert "stride 491520==120" in fast_path.as_info()["fast_path_reason"]


def test_the_fastest_passing_candidate_wins_not_the_first(tiny, monkeypatch):
    """Two candidates pass; the one listed first is slower, so the other is chosen."""
    import time

    import worker.fast_path as fast_path_module
    from model.attention import backend_for

    monkeypatch.setattr(fast_path_module, "candidates", lambda device: ["flex", "math"])

    def slow_flex_compiler(module):
        def run(*args):
            if backend_for(torch.device("cpu"), torch.float32) == "flex":
                time.sleep(0.5)  # far above the run-to-run spread of a loaded machine
                from model import attention
                with torch.no_grad():
                    attention.use_backend("math")  # same numbers as flex, without compiling flex here
                    try:
                        return module(*args)
                    finally:
                        attention.use_backend("flex")
            return module(*args)
        return run

    fast_path, runner = choose_fast_path(tiny, [(32, 32, 1)], compile=True, compiler=slow_flex_compiler, timed_runs=3)
    attempts = {a.name: a for a in fast_path.attempts}
    assert attempts["flex compiled"].ms > attempts["math compiled"].ms
    assert (fast_path.attention, fast_path.compiled) == ("math", True)
    assert fast_path.as_info()["fast_path"] == "ok"


def test_worker_on_a_broken_backend_falls_back_and_says_so(make_service):
    """A real worker told to compile with flex on the CPU (inductor cannot lower flex in the model here):
    it logs why, runs compiled math instead, shows it in /readyz and /metrics, and serves jobs."""
    service = make_service(onediffusion_attention="flex", compile_on_cpu="true", deliverer=False)
    ready = service.client.get("/readyz").json()
    (info,) = ready["worker_info"].values()
    assert (info["attention"], info["compile"], info["fast_path"]) == ("math", "inductor", "degraded"), info
    assert "flex compiled" in info["fast_path_reason"]
    assert ready["worker_modes"] == {next(iter(ready["worker_modes"])): 1}
    assert "attention=math" in next(iter(ready["worker_modes"]))
    assert "fast path flex compiled not used" in service.logs(full=True)
    metrics = service.client.get("/metrics").text
    assert 'onediffusion_workers_ready_by_mode{attention="math",compile="inductor",fast_path="degraded"} 1' in metrics
    job = service.submit("text-to-image", {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 2},
                         headers={"Prefer": "wait=120"}).json()
    assert job["status"] == "succeeded", job
