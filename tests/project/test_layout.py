"""The layout's rule: what the gateway and the workers share lives in `core/`, which imports nothing from
HTTP and nothing from either side; the workers import nothing of the gateway's; the gateway imports no
worker code (nor torch). Each module is imported alone in a fresh interpreter, so what one module pulls
in cannot hide or blame another; imports inside functions (run later, so not seen by importing) are
read from the source."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from core.job_store import OLD_CALLBACKS
from tests.paths import ROOT

HTTP = ("fastapi", "starlette", "uvicorn")
FORBIDDEN = {
    "core": HTTP + ("app", "worker"),
    "worker": HTTP + ("app",),
    "app": ("worker", "torch"),
}
# The gateway is checked through the module that assembles it (it imports every route).
GATEWAY = ["app.main"]


def modules(package: str) -> list[str]:
    return sorted(f"{package}.{path.stem}" if path.stem != "__init__" else package
                  for path in (ROOT / package).glob("*.py"))


CHECKED = modules("core") + modules("worker") + GATEWAY

PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by(module: str) -> list[str]:
    """Every module in sys.modules after importing `module` alone in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    if done.returncode != 0:
        raise AssertionError(f"importing {module} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def imports() -> dict[str, list[str]]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(CHECKED, pool.map(loaded_by, CHECKED)))


def test_the_packages_are_found():
    """A guard on the guard: the lists below are not empty because a folder moved."""
    assert "core.job_store" in CHECKED and "core.settings" in CHECKED
    assert "worker.batch_worker" in CHECKED and "worker.webhooks" in CHECKED


@pytest.mark.parametrize("module", CHECKED)
@pytest.mark.slow
def test_module_imports_only_what_its_side_may(module, imports):
    forbidden = FORBIDDEN[module.split(".")[0]]
    offending = [name for name in imports[module] if name.split(".")[0] in forbidden]
    assert not offending, f"{module} imports {', '.join(offending[:12])} (not allowed: {', '.join(forbidden)})"


DOTTED = re.compile(r"^[a-z_]+(\.[a-z_]+)+$")


def named_modules(path: Path) -> tuple[list[str], list[str]]:
    """(every absolute module name an import statement of the file names, at any depth: function bodies
    too; every string that looks like a dotted path to a function, as RQ resolves job functions and
    callbacks by name in whichever process runs them)."""
    imports, dotted = [], []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            imports += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imports.append(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and DOTTED.match(node.value):
            dotted.append(node.value)
    return imports, dotted


@pytest.mark.parametrize("package", ["core", "worker"])
def test_no_import_statement_crosses_the_line(package):
    """Also no RQ function named by a string runs gateway code in a worker (naming worker functions is how
    jobs are queued, so core may)."""
    crossing = []
    for path in sorted((ROOT / package).glob("*.py")):
        imports, dotted = named_modules(path)
        crossing += [f"{path.relative_to(ROOT)}: import {name}" for name in imports
                     if name.split(".")[0] in FORBIDDEN[package]]
        crossing += [f"{path.relative_to(ROOT)}: {name!r}" for name in dotted
                     if name.split(".")[0] in HTTP + ("app",) and name not in OLD_CALLBACKS]  # names core renames
    assert not crossing, "not allowed here:\n" + "\n".join(crossing)
