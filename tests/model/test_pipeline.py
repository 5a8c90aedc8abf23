"""Every task runs end to end on the demo checkpoint (CPU) and returns outputs of the right kind."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model.pipeline import Canceled, OneDiffusion, TaskResult
from model.tasks import TASKS
from tests.cases import CASES, IMG, SMALL, SMALL_SQ
from tests.conftest import b64_image


def test_all_tasks_covered():
    assert set(CASES) == set(TASKS)


@pytest.mark.parametrize("task", sorted(CASES))
def test_task_end_to_end(demo_model: OneDiffusion, task):
    payload, expected = CASES[task]
    plan = TASKS[task].model_validate(payload).plan()
    (result,) = demo_model.run([plan])
    assert isinstance(result, TaskResult), result
    files = {f.name: f for f in result.files}
    assert set(files) == set(expected)
    for name, (kind, mode) in expected.items():
        image = Image.open(io.BytesIO(files[name].data))
        image.load()
        assert files[name].kind == kind and image.mode == mode
        assert image.size == (plan.width, plan.height) == (files[name].width, files[name].height)
    if task == "segmentation":
        assert [c["mask"] for c in result.data["classes"]] == ["mask_0.png", "mask_1.png"]
    if task == "detection":
        boxes = result.data["classes"][0]["boxes"]
        assert isinstance(boxes, list) and all(len(b) == 4 for b in boxes)
    if task == "camera-pose-estimation":
        cams = result.data["cameras"]
        assert len(cams) == 3 and all(np.asarray(c["c2w"]).shape == (4, 4) for c in cams)
        # camera 0 is given (the identity), as in the reference; the others are generated
        assert cams[0]["c2w"] == np.eye(4).tolist() and not cams[0]["predicted"]
        assert cams[0]["intrinsics"]["fx"] == pytest.approx(1.3887)
        assert all(c["predicted"] for c in cams[1:])
        assert {"fx", "fy", "cx", "cy"} <= set(cams[1]["intrinsics"])


def test_seed_makes_results_reproducible_and_batch_independent(demo_model):
    a = TASKS["depth-to-image"].model_validate({"image": IMG, "prompt": "a red cat", "seed": 1, **SMALL}).plan()
    b = TASKS["deblurring"].model_validate({"image": IMG, "seed": 2, "guidance_scale": 1.0, **SMALL}).plan()
    alone = [demo_model.run([p])[0] for p in (a, b)]
    together = demo_model.run([a, b])
    for single, batched in zip(alone, together):
        x = np.asarray(Image.open(io.BytesIO(single.files[0].data)), dtype=int)
        y = np.asarray(Image.open(io.BytesIO(batched.files[0].data)), dtype=int)
        assert np.abs(x - y).max() <= 1  # identical up to float32 rounding of the last bit
    assert together[0].timings["batch_size"] == 2
    other_seed = TASKS["depth-to-image"].model_validate({"image": IMG, "prompt": "a red cat", "seed": 9, **SMALL}).plan()
    assert demo_model.run([other_seed])[0].files[0].data != alone[0].files[0].data


def test_a_broken_plan_fails_alone(demo_model):
    good = TASKS["deblurring"].model_validate({"image": IMG, "seed": 2, **SMALL}).plan()
    bad = TASKS["deblurring"].model_validate({"image": IMG, "seed": 3, **SMALL}).plan()
    bad.images = [b"not a png"]
    results = demo_model.run([good, bad])
    assert isinstance(results[0], TaskResult) and isinstance(results[1], Exception)


def test_cancel_stops_the_job(demo_model):
    plan = TASKS["text-to-image"].model_validate({"prompt": "x", **SMALL, "num_inference_steps": 5}).plan()
    steps = []
    (result,) = demo_model.run([plan], on_step=lambda s, n: steps.append(s), canceled=lambda: {0} if steps else set())
    assert isinstance(result, Canceled) and steps == [1]


def test_long_prompt_warns(demo_model):
    plan = TASKS["text-to-image"].model_validate({"prompt": "cat " * 400, **SMALL}).plan()
    (result,) = demo_model.run([plan])
    (warning,) = [w for w in result.warnings if "cut to 300 tokens" in w]
    # where it was cut and how much, not the whole dropped text (it would be in every record and webhook)
    assert len(warning) < 160 and "characters were not used, from 'cat cat" in warning


@pytest.mark.slow
def test_demo_two_frame_task_at_512(demo_model):
    """The demo checkpoint is small enough for a 512x512 two-frame task with 4 steps on the CPU."""
    plan = TASKS["depth-estimation"].model_validate({"image": b64_image(512, 512), "num_inference_steps": 4}).plan()
    assert (plan.width, plan.height, len(plan.frames)) == (512, 512, 2)
    (result,) = demo_model.run([plan])
    assert isinstance(result, TaskResult) and result.files[0].width == 512


def _pixels(result: TaskResult) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(f.data)), dtype=int) for f in result.files]


def test_rope_scaling_applies_per_request(demo_model):
    """A request's RoPE scaling is its own: its result is the same alone or batched with requests that
    scale differently (or not at all), and differs from the same request unscaled."""
    base = {"prompt": "a chair", "cameras": [{"azimuth": 0, "elevation": 0}, {"azimuth": 60, "elevation": 10}],
            "seed": 4, **SMALL_SQ}
    scaled = TASKS["text-to-multiview"].model_validate({**base, "scale_factor": 1.5, "scale_watershed": 400}).plan()
    plain = TASKS["text-to-multiview"].model_validate({**base, "seed": 5}).plan()
    other = TASKS["text-to-multiview"].model_validate({**base, "seed": 6, "scale_factor": 1.2}).plan()
    unscaled_twin = TASKS["text-to-multiview"].model_validate(base).plan()
    alone = demo_model.run([scaled])[0]
    batched = demo_model.run([plain, scaled, other])
    for x, y in zip(_pixels(alone), _pixels(batched[1])):
        assert np.abs(x - y).max() <= 1
    for x, y in zip(_pixels(demo_model.run([plain])[0]), _pixels(batched[0])):
        assert np.abs(x - y).max() <= 1
    assert any(np.abs(x - y).max() > 1 for x, y in zip(_pixels(alone), _pixels(demo_model.run([unscaled_twin])[0])))


@pytest.mark.parametrize("task", ["text-to-image", "depth-to-image", "id-customization", "image-to-multiview",
                                  "text-to-multiview", "camera-pose-estimation"])
def test_seed_draws_in_the_references_order(demo_model, task):
    """One CPU generator per request, drawn as the reference's pipeline draws from it: with input images a
    one-frame noise tensor it never uses, then the VAE posterior sample of the images (diffusers'
    `latent_dist.sample(generator)`, the call the reference makes), then the noise of every frame."""
    import torch

    from model.pipeline import LATENT_CHANNELS
    from model.preprocess import image_tensor

    payload, _ = CASES[task]
    plan = TASKS[task].model_validate({**payload, "seed": 1234}).plan()
    h, w = plan.height // 8, plan.width // 8
    noise, cond = demo_model.seeded_inputs(plan)

    generator = torch.Generator(device="cpu").manual_seed(1234)
    expected_images = None
    if plan.images:
        torch.randn((1, LATENT_CHANNELS, h, w), generator=generator)  # the reference's unused draw
        pixels = torch.stack([image_tensor(data, plan.width, plan.height) for data in plan.images])
        vae = demo_model.components.vae
        with torch.no_grad():
            sample = vae.encode(pixels.to(vae.dtype)).latent_dist.sample(generator)
        expected_images = sample.float() * vae.config.scaling_factor
    expected_noise = torch.randn((1, len(plan.frames), LATENT_CHANNELS, h, w), generator=generator)[0]
    torch.testing.assert_close(noise, expected_noise, rtol=0, atol=0)
    if expected_images is not None:
        image_frames = [f.source for f in plan.frames if not f.generate and f.kind == "image"]
        given = [f for f in plan.frames if not f.generate]
        got = torch.stack([cond[i] for i, f in enumerate(given) if f.kind == "image"])
        torch.testing.assert_close(got, expected_images[image_frames], rtol=1e-5, atol=1e-5)
    if task == "text-to-image":  # the reference's text-to-image: one (1, 16, h, w) draw, the same numbers
        torch.testing.assert_close(noise, torch.randn((1, LATENT_CHANNELS, h, w),
                                                            generator=torch.Generator().manual_seed(1234)))


@pytest.mark.parametrize("task", sorted(CASES))
def test_every_task_takes_rope_scaling(task):
    """The reference's pipeline takes RoPE scaling for any task: every request has the fields, and the plan
    (and so the denoiser's batch) carries them."""
    payload, _ = CASES[task]
    plan = TASKS[task].model_validate({**payload, "scale_factor": 1.25, "scale_watershed": 300}).plan()
    assert (plan.scale_factor, plan.scale_watershed) == (1.25, 300) and "xrope1.25_300" in plan.bucket
    assert TASKS[task].model_validate(payload).plan().rope_group == ()


def test_rope_scaling_changes_an_estimation(demo_model):
    base = {**CASES["depth-estimation"][0], "seed": 9}
    scaled = demo_model.run([TASKS["depth-estimation"].model_validate({**base, "scale_factor": 1.5}).plan()])[0]
    plain = demo_model.run([TASKS["depth-estimation"].model_validate(base).plan()])[0]
    assert any(np.abs(x - y).max() > 1 for x, y in zip(_pixels(scaled), _pixels(plain)))
