"""What `make run` and `make test` install (read from `make -n` on a fresh venv path): serving installs only
what serving needs; the tests' and the GPU check's extras come with their own targets."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.paths import ROOT


def planned(target: str, tmp_path: Path) -> list[str]:
    """The pip installs `make TARGET` would run on a machine without the venv."""
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    result = subprocess.run(["make", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if "pip install" in line]


def extras(lines: list[str]) -> set[str]:
    found = set()
    for line in lines:
        for group in re.findall(r'-e "?\.\[([^\]]+)\]', line):
            found.update(group.split(","))
    return found


def test_run_installs_only_what_serving_needs(tmp_path):
    lines = planned("run", tmp_path)
    assert any(re.search(r"-e \.$", line) for line in lines), lines  # the project itself
    assert extras(lines) == set(), lines  # no dev (pytest, playwright, triton, ...) and no fp8


def test_test_adds_the_dev_and_fp8_extras(tmp_path):
    lines = planned("test", tmp_path)  # fp8: the tests run its CPU path (tests/model/test_precision.py, the fp8 benchmarks)
    assert any(re.search(r"-e \.$", line) for line in lines) and extras(lines) == {"dev", "fp8"}, lines


def test_gpu_check_adds_fp8_not_dev(tmp_path):
    assert extras(planned("gpu-check", tmp_path)) == {"fp8"}


def test_serving_dependencies_hold_no_test_tools():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert not names & {"pytest", "playwright", "triton", "schemathesis", "torchao"}, names
    assert {"pytest", "playwright"} <= {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower()
                                        for d in project["optional-dependencies"]["dev"]}
