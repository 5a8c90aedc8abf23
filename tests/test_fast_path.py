"""The worker's start-up choice of fast path (worker/fast_path.py): by measured speed among the candidates
that agree with eager math, not by a fixed order; a wrong result is rejected with its reason."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

CHOICE = r"""
import json, time
import torch
import model.attention as attention
from benchmarks.denoiser import TINY, build
from worker.fast_path import choose_fast_path

config = dict(TINY, depth=1, hidden_size=96, num_heads=2, num_kv_heads=1, multiple_of=32, caption_channels=32)
transformer = build(config, torch.device("cpu"), torch.float32)

def slowed(slow_backend):
    # a stand-in "compiler": the eager model, made slow under one backend, so speed alone decides
    def compiler(module):
        def run(*args):
            if attention._pinned == slow_backend:
                time.sleep(0.3)
            return module(*args)
        return run
    return compiler

def wrong(module):
    return lambda *args: module(*args) * 1.5  # a "compiled" model that disagrees with eager

report = {}
for slow in ("math", "triton"):
    fast_path, _ = choose_fast_path(transformer, [(64, 64, 1)], compiler=slowed(slow), timed_runs=1)
    report[f"slow {slow}"] = fast_path.as_info()
fast_path, runner = choose_fast_path(transformer, [(64, 64, 1)], forced="math", compiler=wrong, timed_runs=1)
report["wrong"] = {**fast_path.as_info(), "runner_is_eager": runner is transformer, "pinned": attention._pinned}
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def report() -> dict:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1"}  # two passing backends on the CPU: math and the Triton kernel
    env.pop("ONEDIFFUSION_ATTENTION", None)
    result = subprocess.run([sys.executable, "-c", CHOICE], env=env, capture_output=True, text=True, timeout=600,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    return json.loads(lines[-1][len("REPORT "):])


def test_the_fastest_passing_backend_wins_whatever_the_order(report):
    # the CPU order is math, triton, triton-fast: a fixed order would keep math both times
    assert (report["slow math"]["attention"], report["slow math"]["compile"]) == ("triton", "inductor")
    assert (report["slow triton"]["attention"], report["slow triton"]["compile"]) == ("math", "inductor")
    assert report["slow math"]["fast_path"] == "ok"
    # the PTX-only fast tanh cannot run in the interpreter: kept out, with its reason
    assert "triton-fast compiled:" in report["slow math"]["fast_path_reason"]


def test_a_compiled_model_that_disagrees_with_eager_is_not_used(report):
    """Every compiled candidate is rejected (its reason kept); the worker drops compilation and keeps the
    fastest eager backend that passes (here the Triton kernel; eager math only when none does)."""
    wrong = report["wrong"]
    assert (wrong["attention"], wrong["compile"], wrong["fast_path"]) == ("triton", "off", "degraded")
    for name in ("math", "triton"):
        assert f"{name} compiled: relative error" in wrong["fast_path_reason"]
    assert "above 0.03" in wrong["fast_path_reason"]
    assert wrong["runner_is_eager"] and wrong["pinned"] == "triton"
