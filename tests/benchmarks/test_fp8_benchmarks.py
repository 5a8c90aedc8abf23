"""The FP8 measurement and quality-check scripts run on the CPU at toy size (FP8 emulated there)."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import fp8, fp8_quality

pytestmark = pytest.mark.slow  # runs the FP8 benchmark end to end


def test_fp8_benchmark_runs_on_cpu(capsys):
    figures = fp8.measure(device="cpu", tiny=True, iters=1, warmup=0, steps=3, workloads=[0])
    assert [w["workload"] for w in figures["workloads"]] == [w.name for w in fp8.denoiser.WORKLOADS[:1]]
    assert all(w["bf16_ms"] > 0 and w["fp8_ms"] > 0 for w in figures["workloads"])
    assert figures["fp8_mode"].startswith("emulated") and figures["fp8_layers"] == 14
    kept, every = figures["velocity_rel_error"], figures["velocity_rel_error_all_linears"]
    assert len(kept["per_step"]) == 3 and 0 < kept["max"] < 0.05
    assert kept["max"] < every["mean"]  # keeping the listed layers in bf16 is what keeps the error small
    assert 0 < figures["final_latents_rel_error"] < 0.05
    assert 0.01 < figures["block_update_rel_error"] < 0.15  # e4m3 rounding through q, k, v, o and the FFN
    assert 0 < figures["block_update_ratio"] < 1
    ablation = figures["velocity_rel_error_ablation"]
    assert set(ablation) == {"kept_as_listed"} | {f"also_{name}" for name in fp8.precision.KEEP_BF16}
    assert ablation["also_final_layer"] > ablation["kept_as_listed"] > 0
    assert 25 < figures["decoded_psnr_db"] < math.inf
    out = capsys.readouterr().out
    assert "velocity rel. error per step" in out and "do not predict real-weight quality" in out


def test_fp8_quality_check_runs_tiny_on_cpu(tmp_path, capsys):
    report = fp8_quality.main(["--tiny", "--device", "cpu", "--prompts", "a red fox", "--seeds", "0", "3",
                               "--steps", "2", "--out", str(tmp_path / "renders"), "--json", str(tmp_path / "q.json")])
    assert report["second_render"] == "fp8" and "emulated" in report["how"]
    assert len(report["images"]) == 2
    for row in report["images"]:
        assert 20 < row["psnr_db"] < math.inf and row["max_abs_diff"] > 0  # FP8 changes pixels, not the picture
        assert len(row["bf16_channel_mean"]) == len(row["fp8_channel_std"]) == 3
    assert len(list((tmp_path / "renders").glob("*_bf16_left_fp8_right.png"))) == 2
    assert json.loads((tmp_path / "q.json").read_text())["min_psnr_db"] == report["min_psnr_db"]
    assert "PSNR of fp8 against bf16" in capsys.readouterr().out
