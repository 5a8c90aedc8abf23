"""The denoiser benchmark runs (toy size, CPU) and counts FLOPs by the published formula (benchmarks/RESULTS.md, reference anchors)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import denoiser
from model.nextdit import NextDiT


def test_flop_formula_matches_the_spec_anchors():
    with torch.device("meta"):
        model = NextDiT(**denoiser.RELEASED)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(2.8e9, rel=0.01)
    assert denoiser.block_params(model) == pytest.approx(170.6e6, rel=1e-3)
    anchors = [53.6, 24.8, 123.7, 214.6]  # TFLOP per guided forward: the reference anchors of benchmarks/RESULTS.md
    for workload, tflop in zip(denoiser.WORKLOADS, anchors):
        assert denoiser.forward_flops(model, workload) / 1e12 == pytest.approx(tflop, abs=0.1)


def test_tiny_benchmark_runs_on_cpu(capsys, tmp_path):
    rows = denoiser.main(["--tiny", "--device", "cpu", "--iters", "1", "--warmup", "0", "--json", str(tmp_path / "f.json")])
    assert [r["workload"] for r in rows] == [w.name for w in denoiser.WORKLOADS]
    for row in rows:
        assert row["optimised_ms"] > 0 and row["eager_ms"] > 0 and row["optimised_tflops"] > 0
    assert rows[0]["rel_error_vs_fp32"] < 1e-5  # float32 on the CPU: the same computation
    out = capsys.readouterr().out
    assert "matmul peak" in out and "MFU" in out and (tmp_path / "f.json").exists()
