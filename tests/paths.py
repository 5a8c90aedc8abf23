"""Where things are, for every test module: the repository root and the golden data."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The golden data lives in the repository (a clone alone passes its tests); ../shared/fixtures is only
# its source, and tests/project/test_fixture_copy.py says when the two drift apart.
FIXTURES = ROOT / "tests" / "fixtures"
