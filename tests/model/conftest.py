"""The model tests' fixtures: the tiny sampler and its golden cases (test_nextdit.py reads the denoiser's
own cases under the same fixture name)."""

from __future__ import annotations

import pytest

from tests.model.golden import load_cases


@pytest.fixture(scope="module")
def sampler(fixtures_dir):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from model.nextdit import NextDiT
    from model.sampler import FlowSampler

    model = NextDiT.from_pretrained(fixtures_dir / "nextdit_tiny").eval()
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(fixtures_dir / "sampler_tiny")
    return FlowSampler(model, scheduler)


@pytest.fixture(scope="module")
def cases(fixtures_dir):
    return load_cases(fixtures_dir / "sampler_tiny" / "cases.safetensors")
