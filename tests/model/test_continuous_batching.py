"""Step-level batching in the model: a plan's image is the same alone, batched from the start, or joined
to a running batch mid-run, whatever the step counts and guidance of its companions."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from model.pipeline import TaskResult
from model.tasks import TASKS
from tests.conftest import b64_image
from tests.model.golden import requests_of

pytestmark = pytest.mark.slow  # runs the demo model through whole trajectories, alone and batched

IMG = b64_image(96, 64)


def plan(task: str, steps: int, seed: int, **extra):
    return TASKS[task].model_validate({"width": 128, "height": 96, "num_inference_steps": steps, "seed": seed, **extra}).plan()


def pixels(result: TaskResult) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result.files[0].data)), dtype=int)


def run_live(model, schedule: dict[int, list[tuple[str, object]]]) -> dict[str, TaskResult]:
    """Run plans through one LiveBatch: `schedule[step]` = plans that join before that step."""
    first = next(iter(schedule.values()))[0][1]
    batch = model.live_batch(first)
    results, step = {}, 0
    while len(batch) or any(k >= step for k in schedule):
        for key, p in schedule.get(step, []):
            batch.join(key, p)
        for key in batch.step():
            results[key] = batch.take(key)
        step += 1
    return results


def test_joined_mid_run_equals_alone_and_batched(demo_model):
    short = plan("text-to-image", 3, seed=11, prompt="a red cat")
    long = plan("text-to-image", 7, seed=12, prompt="a dog on a hill", guidance_scale=1.0)
    cond = plan("depth-to-image", 5, seed=13, prompt="x", image=IMG)  # same token shape? no: two frames
    alone = demo_model.run([short])[0]
    together = run_live(demo_model, {0: [("long", long), ("short", short)]})
    joined = run_live(demo_model, {0: [("long", long)], 2: [("short", short)]})
    assert np.abs(pixels(alone) - pixels(together["short"])).max() <= 1
    assert np.abs(pixels(alone) - pixels(joined["short"])).max() <= 1
    assert np.abs(pixels(together["long"]) - pixels(joined["long"])).max() <= 1
    assert np.abs(pixels(demo_model.run([long])[0]) - pixels(joined["long"])).max() <= 1
    assert joined["short"].timings["batch_size"] == 2 and together["long"].timings["batch_size"] == 2
    batch = demo_model.live_batch(long)
    assert not batch.joinable(cond)  # another token shape never joins


def test_a_dropped_member_leaves_the_others_undisturbed(demo_model):
    a = plan("text-to-image", 4, seed=1, prompt="a")
    b = plan("text-to-image", 4, seed=2, prompt="b")
    batch = demo_model.live_batch(a)
    batch.join("a", a)
    batch.join("b", b)
    batch.step()
    batch.drop("a")
    done = []
    while len(batch):
        done += batch.step()
    assert done == ["b"]
    assert np.abs(pixels(batch.take("b")) - pixels(demo_model.run([b])[0])).max() <= 1


def test_sampler_rows_join_and_leave_between_steps(sampler, cases):
    a, b = requests_of(*cases["cond_to_image"])
    b.num_inference_steps = a.num_inference_steps + 2
    alone = [sampler.sample([r])[0].latents for r in (a, b)]
    batch = sampler.batch()
    batch.add("b", b)
    finished = {}
    for step in range(b.num_inference_steps + 5):
        if step == 1:
            batch.add("a", a)  # joins b one step in, with fewer steps: a finishes first
        for key in batch.step():
            finished[key] = (step, batch.pop_finished(key))
        if not len(batch):
            break
    assert finished["a"][0] == a.num_inference_steps and finished["b"][0] == b.num_inference_steps - 1
    torch.testing.assert_close(finished["a"][1], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(finished["b"][1], alone[1], atol=1e-5, rtol=1e-5)


def test_a_request_of_another_shape_is_refused(sampler, cases):
    batch = sampler.batch()
    batch.add(0, requests_of(*cases["cond_to_image"])[0])
    with pytest.raises(ValueError, match="one frame shape"):
        batch.add(1, requests_of(*cases["four_frames"])[0])
