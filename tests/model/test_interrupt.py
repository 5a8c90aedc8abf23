"""A cancel or time limit takes effect between the denoiser's blocks, not only between whole steps."""

from __future__ import annotations

import model.sampler as sampler_module
from tests.model.golden import requests_of


def test_a_step_stops_between_blocks_when_every_request_is_dropped(sampler, cases, monkeypatch):
    monkeypatch.setattr(sampler_module, "INTERRUPT_POLL_S", 0.0)
    tensors, meta = cases["cond_to_image"]
    requests = requests_of(tensors, meta)
    blocks_run = []
    handles = [block.register_forward_hook(lambda m, a, o, i=i: blocks_run.append(i))
               for i, block in enumerate(sampler.transformer.layers)]
    try:
        # canceled as soon as the first block has run: the rest of the step is not computed
        results = sampler.sample(requests, canceled=lambda: {0, 1} if blocks_run else set())
        assert blocks_run == [0], blocks_run
        assert all(r.canceled and r.latents is None for r in results)
        # one request of two dropped: the step goes on for the other, which is unchanged
        blocks_run.clear()
        alone = sampler.sample(requests[1:])
        results = sampler.sample(requests, canceled=lambda: {0} if blocks_run else set())
        assert results[0].canceled and not results[1].canceled
        assert (results[1].latents - alone[0].latents).abs().max() < 1e-5
    finally:
        for handle in handles:
            handle.remove()
    assert not any(block._forward_pre_hooks for block in sampler.transformer.layers)  # hooks removed
