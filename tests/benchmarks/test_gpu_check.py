"""The GPU check's time budgets (its tiny CPU run as a whole: tests/model/test_gpu_path.py)."""

from __future__ import annotations

import pytest

from benchmarks import gpu_check


@pytest.mark.slow  # a child process run to its budget
def test_a_part_over_its_budget_is_stopped_and_reported(tmp_path, monkeypatch):
    """One slow part cannot eat the others' time: it is stopped at its budget and the run goes on."""
    monkeypatch.setitem(gpu_check.TINY_BUDGETS, "attention", 1)
    results = gpu_check.main(["--tiny", "--device", "cpu", "--parts", "attention,fp8", "--out", str(tmp_path / "r.json")])
    assert results["parts"]["attention"] == {"status": "timed out", "budget_s": 1}
    assert results["parts"]["fp8"]["status"] == "ok"
