"""The sampler reproduces the reference loop and batches requests without coupling them."""

from __future__ import annotations

import pytest
import torch

from tests.model.golden import requests_of


@pytest.mark.parametrize("case", ["t2i", "cond_to_image", "estimation", "four_frames"])
def test_reproduces_reference_loop(sampler, cases, case):
    tensors, meta = cases[case]
    results = sampler.sample(requests_of(tensors, meta))
    final = torch.stack([r.latents for r in results])
    expected = tensors["final_latents"]
    torch.testing.assert_close(final, expected.reshape(final.shape), atol=1e-4, rtol=0)
    for r in results:
        assert r.timesteps == pytest.approx(meta["timesteps"], abs=1e-3)


def test_condition_frames_hold_their_clean_latents(sampler, cases):
    tensors, meta = cases["four_frames"]
    (result,) = sampler.sample(requests_of(tensors, meta))
    torch.testing.assert_close(result.latents[1:], tensors["cond_latents"][0])


def test_batch_equals_requests_run_alone(sampler, cases):
    """Two different requests (guided and unguided, different masks, schedules and text lengths) in
    one batch give what each gives alone."""
    a = requests_of(*cases["cond_to_image"])[0]  # mask [1, 0], guided
    t_est, m_est = cases["estimation"]
    b = requests_of(t_est, m_est)[0]  # mask [0, 1], unguided, 96x64
    # give b the shape and step count of a so they share a bucket
    b.noise = torch.randn(a.noise.shape, generator=torch.Generator().manual_seed(3))
    b.cond_latents = torch.randn((1,) + a.noise.shape[1:], generator=torch.Generator().manual_seed(4))
    b.num_inference_steps = a.num_inference_steps
    b.cond_embeds, b.cond_mask = b.cond_embeds[:7], b.cond_mask[:7]  # a shorter text

    alone = [sampler.sample([r])[0].latents for r in (a, b)]
    together = sampler.sample([a, b])
    for single, batched in zip(alone, together):
        torch.testing.assert_close(batched.latents, single, atol=1e-5, rtol=1e-5)


def test_text_padding_changes_nothing(sampler, cases):
    tensors, meta = cases["cond_to_image"]
    request = requests_of(tensors, meta)[0]
    (plain,) = sampler.sample([request])
    pad = 20
    request.cond_embeds = torch.cat([request.cond_embeds, torch.randn(pad, request.cond_embeds.shape[1])])
    request.cond_mask = torch.cat([request.cond_mask, torch.zeros(pad, dtype=request.cond_mask.dtype)])
    (padded,) = sampler.sample([request])
    torch.testing.assert_close(padded.latents, plain.latents, atol=1e-5, rtol=1e-5)


def test_progress_and_cancel(sampler, cases):
    tensors, meta = cases["cond_to_image"]
    requests = requests_of(tensors, meta)
    seen = []
    stop_after = 2

    def canceled():
        return {0} if len(seen) >= stop_after else set()

    results = sampler.sample(requests, on_step=lambda step, total: seen.append((step, total)), canceled=canceled)
    assert seen[0] == (1, meta["num_inference_steps"])
    assert results[0].canceled and results[0].latents is None
    assert not results[1].canceled and len(seen) == meta["num_inference_steps"]

    seen.clear()
    results = sampler.sample(requests, on_step=lambda s, t: seen.append(s), canceled=lambda: {0, 1} if seen else set())
    assert seen == [1] and all(r.canceled for r in results)


def test_mismatched_batch_is_refused(sampler, cases):
    a = requests_of(*cases["cond_to_image"])[0]
    b = requests_of(*cases["four_frames"])[0]
    with pytest.raises(ValueError, match="one frame shape"):
        sampler.sample([a, b])


def test_missing_condition_latents_are_refused(sampler, cases):
    a = requests_of(*cases["cond_to_image"])[0]
    a.cond_latents = None
    with pytest.raises(ValueError, match="condition frames"):
        sampler.sample([a])
