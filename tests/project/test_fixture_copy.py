"""The repository's golden data is a copy of ../shared/fixtures (their source, absent in a user's clone)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.paths import ROOT

COPY = ROOT / "tests" / "fixtures"
SOURCE = (ROOT / ".." / "shared" / "fixtures").resolve()


def digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_fixtures_ship_with_the_repository():
    names = digests(COPY)
    for case in ("nextdit_tiny/cases.safetensors", "sampler_tiny/cases.safetensors", "preprocess_ref/cases.safetensors"):
        assert case in names


@pytest.mark.skipif(not SOURCE.is_dir(), reason="no ../shared/fixtures beside this clone (a user's machine)")
def test_copy_equals_its_source():
    assert digests(COPY) == digests(SOURCE), f"copy {SOURCE} into {COPY} again"
