"""Shared fixtures: paths to the golden data, and one demo checkpoint per test session."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = (ROOT / ".." / "shared" / "fixtures").resolve()

os.environ.setdefault("ONEDIFFUSION_ATTENTION", "math")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"golden fixtures not found at {FIXTURES} (expected ../shared/fixtures beside the project)")
    return FIXTURES


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory) -> Path:
    from model.demo_checkpoint import make_demo_checkpoint

    return make_demo_checkpoint(tmp_path_factory.mktemp("demo") / "checkpoint")


@pytest.fixture(scope="session")
def demo_model(demo_checkpoint):
    from model.pipeline import OneDiffusion

    return OneDiffusion.load(str(demo_checkpoint), device="cpu")


def make_image(width: int = 96, height: int = 64, seed: int = 0, fmt: str = "PNG") -> bytes:
    """A random-ish but smooth RGB test image, encoded."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    pixels = (base + rng.normal(0, 10, base.shape)).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def b64_image(*args, **kwargs) -> str:
    return base64.b64encode(make_image(*args, **kwargs)).decode()
