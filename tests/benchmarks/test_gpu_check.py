"""The GPU check's time budgets (its tiny CPU run as a whole: tests/model/test_gpu_path.py)."""

from __future__ import annotations

import pytest

from benchmarks import gpu_check


@pytest.mark.slow  # a child process run to its budget
@pytest.mark.parametrize("forked, budget", [(False, 1), (True, 0.05)], ids=["fresh-interpreter", "forked"])
def test_a_part_over_its_budget_is_stopped_and_reported(tmp_path, monkeypatch, forked, budget):
    """One slow part cannot eat the others' time: it is stopped at its budget and the run goes on. Both ways a
    part's process starts: a fresh interpreter (the GPU run) and forked from the tiny CPU run's launcher, which
    has imported torch already (so its budget here is far below the time of a part's first figures)."""
    if not forked:
        monkeypatch.setattr(gpu_check, "launcher_for", lambda args, parts: None)
    monkeypatch.setitem(gpu_check.TINY_BUDGETS, "attention", budget)
    results = gpu_check.main(["--tiny", "--device", "cpu", "--parts", "attention,fp8", "--out", str(tmp_path / "r.json")])
    assert results["parts"]["attention"] == {"status": "timed out", "budget_s": budget}
    assert results["parts"]["fp8"]["status"] == "ok"
