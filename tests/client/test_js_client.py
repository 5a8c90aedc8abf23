"""The JavaScript client (clients/js, ESM without dependencies) against the real service, run by Node:
a task with progress and its output, typed errors, cancel, num_outputs, idempotent batches, paging, and
Standard Webhooks verification (clients/js/test/smoke.mjs). Skips without node."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODE = shutil.which("node") or shutil.which("nodejs")


def test_js_client_against_the_service(shared_service):
    if NODE is None:
        pytest.skip("no node on this machine (Debian: apt-get install nodejs)")
    result = subprocess.run([NODE, str(ROOT / "clients/js/test/smoke.mjs"), shared_service.url],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["progress"][-1] == 4


def test_js_types_declare_every_task():
    from model.tasks import TASKS

    source = (ROOT / "clients/js/onediffusion.mjs").read_text()
    types = (ROOT / "clients/js/onediffusion.d.ts").read_text()
    for task in TASKS:
        assert f'"{task}"' in source, task
        method = task.split("-")[0] + "".join(part.title() for part in task.split("-")[1:])
        assert f"{method}(" in types, method
