"""The layout's rule: what the gateway and the workers share lives in `core/`, which imports nothing from
HTTP and nothing from either side; the workers import nothing of the gateway's; the gateway imports no
worker code (nor torch). Each module is imported alone in a process of its own (forked from one that
imported only third-party libraries), so what one module pulls in cannot hide or blame another; imports inside functions (run later, so not seen by importing) are
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

# Third-party libraries the worker side loads (torch alone takes seconds on two cores); none is forbidden on
# either side that uses them. A probe process imports them once and forks a child per module, which imports
# the module and reports every module it then has, the preloaded ones included: so a preloaded library can
# only add names to a module's list (a forbidden one would fail every module), never hide one.
PRELOAD = ("torch", "diffusers", "transformers", "numpy", "PIL", "pydantic", "redis", "rq", "boto3", "botocore")
PROJECT = sorted(path.name for path in ROOT.iterdir() if (path / "__init__.py").is_file())
PRELOADED_SIDES = ("core", "worker")  # not the gateway: it may not import torch, so it is probed without any

PROBE = """
import json, sys
for name in {preload!r}:
    try:
        __import__(name)
    except ImportError:
        pass
project = [name for name in sys.modules if name.split(".")[0] in {project!r}]
if project:
    sys.exit(f"the preloaded libraries imported the project's own modules: {{project}}")
from tests.forked_each import each_in_a_fork  # standard library only; after the check above

def imported(module):  # in a child per module: none sees what another imported
    __import__(module)
    return {{"modules": sorted(sys.modules)}}

print(json.dumps(each_in_a_fork({modules!r}, imported)))
"""


def loaded_by(modules: list[str], preload: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """For each of `modules`: every module in sys.modules after importing it alone, in a process forked from one
    that has imported only `preload` (third-party libraries) and the standard library's json and os."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(preload=preload, modules=modules, project=PROJECT)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise AssertionError(f"the import probe failed:\n{done.stderr[-3000:]}")
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for module, result in results.items():
        if "error" in result:
            raise AssertionError(f"importing {module} failed:\n{result['error'][-3000:]}")
    return {module: result["modules"] for module, result in results.items()}


@pytest.fixture(scope="module")
def imports() -> dict[str, list[str]]:
    preloaded = [m for m in CHECKED if m.split(".")[0] in PRELOADED_SIDES]
    alone = [m for m in CHECKED if m not in preloaded]
    with ThreadPoolExecutor(max_workers=2) as pool:
        found = pool.map(lambda job: loaded_by(*job), [(preloaded, PRELOAD), (alone, ())])
        return {module: names for result in found for module, names in result.items()}


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
