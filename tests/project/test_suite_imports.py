"""The suite's own shape: test files sit in folders that follow the source, and no test file imports from
another. What several share lives in a module that is not a test: tests/cases.py (task payloads),
tests/paths.py, tests/service/harness.py (process stacks and their helpers), a folder's helper module or
its conftest.py (fixtures)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.paths import ROOT

TESTS = ROOT / "tests"


def suite_files() -> list[Path]:
    return sorted(path for path in TESTS.rglob("test_*.py") if "fixtures" not in path.relative_to(TESTS).parts)


def imported_test_modules(path: Path) -> list[str]:
    """The test modules `path` imports (absolute or relative), as written."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.rsplit(".", 1)[-1].startswith("test_")]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            if module.rsplit(".", 1)[-1].startswith("test_"):
                found.append(module)
            else:  # `from tests.service import test_security`
                found += [f"{module}.{alias.name}" for alias in node.names if alias.name.startswith("test_")]
    return found


def test_no_test_file_imports_another():
    offenders = {str(path.relative_to(ROOT)): names for path in suite_files() if (names := imported_test_modules(path))}
    assert not offenders, f"move what these import into a shared module or a conftest.py: {offenders}"


def test_test_files_live_in_packages_below_tests():
    misplaced = [str(path.relative_to(ROOT)) for path in suite_files() if path.parent == TESTS]
    assert not misplaced, f"put these in the folder of what they test (tests/model, tests/core, ...): {misplaced}"
    not_packages = sorted({str(path.parent.relative_to(ROOT)) for path in suite_files()
                           if not (path.parent / "__init__.py").is_file()})
    assert not not_packages, f"these folders need an __init__.py (imports name them tests.<folder>): {not_packages}"
