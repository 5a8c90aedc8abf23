"""`python -m benchmarks.gpu_check --tiny --device cpu`: the GPU check's code, every part, at toy size on the
CPU (Triton's kernels in its interpreter), so the command is known to run before a GPU is at hand."""

from __future__ import annotations

import json

from benchmarks import gpu_check
from benchmarks.denoiser import WORKLOADS


def test_gpu_check_runs_every_part_at_tiny_size(tmp_path, capsys):
    out = tmp_path / "gpu_check-cpu-tiny.json"
    results = gpu_check.main(["--tiny", "--device", "cpu", "--out", str(out)])
    parts = results["parts"]
    assert list(parts) == list(gpu_check.PARTS)
    for name, part in parts.items():
        assert part["status"] == "ok", (name, part)
    assert parts["opcheck"]["passed"] and parts["opcheck"]["cases"]
    assert parts["compile"]["backends"]["triton"]["passed"], parts["compile"]
    lengths = parts["attention"]["tokens"]
    for row in lengths.values():
        assert row["triton"]["rel_error_vs_fp32"] < 1e-4 and row["sdpa-no-cap"]["ms"] > 0
    assert [w["workload"] for w in parts["denoiser"]["workloads"]] == [w.name for w in WORKLOADS]
    assert parts["pipeline"]["s_per_image"] > 0 and parts["pipeline"]["first_job_s"] > 0
    assert "FP8 needs a CUDA card" in parts["fp8"]["skipped"]
    assert json.loads(out.read_text())["parts"].keys() == parts.keys()
    printed = capsys.readouterr().out
    assert "GPU check on CPU" in printed and "compiled vs eager, triton: passed" in printed and "attention @" in printed


def test_a_part_over_its_budget_is_stopped_and_reported(tmp_path, monkeypatch):
    """One slow part cannot eat the others' time: it is stopped at its budget and the run goes on."""
    monkeypatch.setitem(gpu_check.TINY_BUDGETS, "attention", 1)
    results = gpu_check.main(["--tiny", "--device", "cpu", "--parts", "attention,fp8", "--out", str(tmp_path / "r.json")])
    assert results["parts"]["attention"] == {"status": "timed out", "budget_s": 1}
    assert results["parts"]["fp8"]["status"] == "ok"
