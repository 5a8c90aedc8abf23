"""Each task builds the frame layout, mask and prompt of docs/tasks.md; bad input fails early."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image
from pydantic import ValidationError

from model import tasks as T
from model.tasks import TASKS, TaskInputError, TaskLimits
from tests.conftest import b64_image, make_image

IMG = b64_image(96, 64)
SQUARE = b64_image(64, 64, seed=1)


def layout(plan):
    return [(f.kind, int(f.generate)) for f in plan.frames]


CASES = [
    # task, payload, token, frames [(kind, mask)]
    ("text-to-image", {"prompt": "a cat"}, "[[text2image]]", [("image", 1)]),
    ("depth-to-image", {"image": IMG, "prompt": "a cat"}, "[[depth2image]]", [("image", 1), ("image", 0)]),
    ("canny-to-image", {"image": IMG, "prompt": "a cat"}, "[[canny2image]]", [("image", 1), ("image", 0)]),
    ("hed-to-image", {"image": IMG, "prompt": "a cat"}, "[[hed2img]]", [("image", 1), ("image", 0)]),
    ("pose-to-image", {"image": IMG, "prompt": "a man"}, "[[pose2image]]", [("image", 1), ("image", 0)]),
    ("semantic-map-to-image", {"image": IMG, "prompt": "x", "classes": [{"name": "dragon"}]}, "[[semanticmap2image]]", [("image", 1), ("image", 0)]),
    ("boxes-to-image", {"image": IMG, "prompt": "x", "classes": [{"name": "bird"}]}, "[[boundingbox2image]]", [("image", 1), ("image", 0)]),
    ("depth-estimation", {"image": IMG}, "[[depth2image]]", [("image", 0), ("image", 1)]),
    ("edge-estimation", {"image": IMG}, "[[canny2image]]", [("image", 0), ("image", 1)]),
    ("edge-estimation", {"image": IMG, "edge_type": "hed"}, "[[hed2img]]", [("image", 0), ("image", 1)]),
    ("pose-estimation", {"image": IMG}, "[[pose2image]]", [("image", 0), ("image", 1)]),
    ("segmentation", {"image": IMG, "classes": [{"name": "dragon"}]}, "[[semanticmap2image]]", [("image", 0), ("image", 1)]),
    ("detection", {"image": IMG, "classes": [{"name": "bird"}]}, "[[boundingbox2image]]", [("image", 0), ("image", 1)]),
    ("deblurring", {"image": IMG}, "[[deblurring]]", [("image", 1), ("image", 0)]),
    ("inpainting", {"image": IMG, "mask": IMG}, "[[image_inpainting]]", [("image", 1), ("image", 0)]),
    ("image-editing", {"image": IMG, "prompt": "make it winter"}, "[[image_editing]]", [("image", 1), ("image", 0)]),
    ("id-customization", {"images": [IMG, IMG], "prompt": "a portrait"}, "[[faceid]]", [("image", 1), ("image", 0), ("image", 0)]),
    ("subject-driven", {"image": IMG, "item": "dog", "prompt": "on a beach"}, "[[subject_driven]]", [("image", 1), ("image", 0)]),
    ("image-to-multiview", {"image": SQUARE}, "[[multiview]]",
     [("image", 0), ("camera", 0), ("image", 1), ("camera", 0), ("image", 1), ("camera", 0), ("image", 1), ("camera", 0)]),
    ("text-to-multiview", {"prompt": "a chair", "cameras": [{"azimuth": 0, "elevation": 0}, {"azimuth": 90, "elevation": 10}]},
     "[[multiview]]", [("image", 1), ("camera", 0), ("image", 1), ("camera", 0)]),
    ("camera-pose-estimation", {"images": [SQUARE, SQUARE, SQUARE]}, "[[multiview]]",
     [("image", 0), ("camera", 0), ("image", 0), ("camera", 1), ("image", 0), ("camera", 1)]),
]


def test_every_task_is_covered():
    assert {c[0] for c in CASES} | {"generate"} == set(TASKS)


@pytest.mark.parametrize("task,payload,token,frames", CASES, ids=[c[0] + str(i) for i, c in enumerate(CASES)])
def test_frame_layout_mask_and_token(task, payload, token, frames):
    plan = TASKS[task].model_validate(payload).plan()
    assert plan.prompt.split(" ")[0] == token
    assert layout(plan) == frames
    assert plan.denoise_mask == [m for _, m in frames]
    n_given_images = sum(1 for k, m in frames if k == "image" and m == 0)
    assert len(plan.images) == n_given_images
    for data in plan.images:  # the inputs at their own size: the worker crops and resizes them
        assert Image.open(io.BytesIO(data)).size in ((96, 64), (64, 64))


def test_prompts_follow_the_guide():
    seg = T.Segmentation(image=IMG, classes=[{"name": "dragon", "colour": "cyan"}, {"name": "bird"}], prompt="a scene").plan()
    assert seg.prompt == "[[semanticmap2image]] <#00FFFF cyan mask: dragon> <#FF0000 red mask: bird> a scene"
    assert seg.classes == [{"name": "dragon", "colour": "cyan"}, {"name": "bird", "colour": "red"}]
    det = T.Detection(image=IMG, classes=[{"name": "bird", "colour": "red"}]).plan()
    assert det.prompt == "[[boundingbox2image]] <#FF0000 red boundingbox: bird>"
    face = T.IdCustomization(images=[IMG, IMG], prompt="a chef", reference_captions=["a man", "the man smiling"]).plan()
    assert face.prompt == "[[faceid]] [[img0]] a chef [[img1]] a man [[img2]] the man smiling"
    subject = T.SubjectDriven(image=IMG, item="dog", prompt="a dog on the moon", source_caption="a dog").plan()
    assert subject.prompt == "[[subject_driven]] <item: dog> [[img0]] a dog on the moon [[img1]] a dog"
    edit = T.ImageEditing(image=IMG, prompt="add snow").plan()
    assert edit.prompt == "[[image_editing]] add snow" and edit.guidance_scale == pytest.approx(3.2)
    assert T.TextToImage(prompt="a cat").plan().negative_prompt == T.NEGATIVE_PROMPT
    assert T.TextToImage(prompt="a cat", negative_prompt="").plan().negative_prompt == ""


def test_defaults_follow_the_guide():
    t2i = T.TextToImage(prompt="a cat").plan()
    assert (t2i.width, t2i.height, t2i.num_inference_steps, t2i.guidance_scale) == (1024, 1024, 50, 4.0)
    wide = T.DepthEstimation(image=b64_image(300, 150)).plan()
    assert (wide.height, wide.width) == (352, 704)  # closest ASPECT_RATIO_512 bucket to 0.5
    multiview = T.ImageToMultiview(image=b64_image(90, 60)).plan()
    assert (multiview.width, multiview.height, multiview.num_inference_steps) == (512, 512, 60)
    assert len(multiview.cameras) == 4 and multiview.cameras[1]["azimuth"] == 30
    assert multiview.cameras[1]["distance"] == 1.5  # the reference's inference.py and demo


# default steps of the reference's examples (gradio_demo.py, inference.py); 50 elsewhere
REFERENCE_STEPS = {"id-customization": 75, "subject-driven": 70, "image-editing": 60, "image-to-multiview": 60,
                   "text-to-multiview": 60, "camera-pose-estimation": 60}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_default_steps_are_the_reference_examples(task):
    field = TASKS[task].model_fields["num_inference_steps"]
    assert field.default == REFERENCE_STEPS.get(task, 50)
    assert "reference" in field.description  # says where the default comes from


def test_noise_scale_is_documented_as_beyond_the_reference():
    assert "beyond the reference" in T.TaskRequest.model_fields["noise_scale"].description


def test_rope_scaling_is_per_request_and_splits_batches():
    base = {"prompt": "a chair", "width": 64, "height": 64}
    plain = T.TextToMultiview(**base).plan()
    scaled = T.TextToMultiview(**base, scale_factor=1.3, scale_watershed=300).plan()
    assert (plain.scale_factor, plain.scale_watershed, plain.rope_group) == (1.0, 1.0, ())
    assert (scaled.scale_factor, scaled.scale_watershed) == (1.3, 300)
    assert scaled.bucket != plain.bucket and scaled.bucket.startswith(plain.bucket)
    raw = T.Generate(prompt="[[multiview]] x", frames=[{"generate": True}], width=64, height=64, scale_factor=1.2).plan()
    assert raw.scale_factor == 1.2
    with pytest.raises(ValidationError, match="scale_factor"):
        T.TextToMultiview(**base, scale_factor=0.5)


def test_camera_pose_estimation_gives_camera_0():
    """As the reference: camera 0 is the identity (the frame of reference) and is given; the others are
    generated."""
    plan = T.CameraPoseEstimation(images=[SQUARE, SQUARE, SQUARE]).plan()
    assert plan.cameras == [{"azimuth": None, "elevation": None, "distance": T.DEFAULT_DISTANCE, "c2w": T.IDENTITY_CAMERA}]
    assert plan.frames[1].camera == 0 and plan.postprocess == "poses"


def test_inpainting_blacks_out_the_masked_pixels():
    image = Image.new("RGB", (64, 64), (10, 200, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    enc = lambda im: base64.b64encode(_png(im)).decode()  # noqa: E731
    plan = T.Inpainting(image=enc(image), mask=enc(mask), width=64, height=64).plan()
    masked = Image.open(io.BytesIO(plan.images[0])).convert("RGB")
    assert masked.getpixel((5, 30)) == (0, 0, 0)  # as the reference's inpainting example
    assert masked.getpixel((50, 30)) == (10, 200, 30)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_raw_generate_builds_any_layout():
    plan = T.Generate(
        prompt="[[depth2image]] [[canny2image]] a house",
        frames=[
            {"kind": "image", "generate": True},
            {"kind": "image", "generate": False, "image": IMG},
            {"kind": "image", "generate": True},
        ],
    ).plan()
    assert layout(plan) == [("image", 1), ("image", 0), ("image", 1)]
    assert plan.prompt == "[[depth2image]] [[canny2image]] a house"
    cams = T.Generate(
        prompt="[[multiview]]", width=64, height=64,
        frames=[{"kind": "image", "generate": True}, {"kind": "camera", "generate": False, "camera": {"azimuth": 0, "elevation": 0}}],
    ).plan()
    assert layout(cams) == [("image", 1), ("camera", 0)] and len(cams.cameras) == 1


# ---- bad input: clear errors before any model work -------------------------------------------------
def test_wrong_image_count():
    with pytest.raises(ValidationError, match="at most 3"):
        T.IdCustomization(images=[IMG] * 4, prompt="x")
    with pytest.raises(ValidationError, match="at least 2"):
        T.CameraPoseEstimation(images=[SQUARE])
    with pytest.raises(TaskInputError, match="one caption per reference"):
        T.IdCustomization(images=[IMG, IMG], prompt="x", reference_captions=["only one"]).plan()


def test_no_images_for_an_image_task():
    with pytest.raises(ValidationError, match="image"):
        T.DepthEstimation.model_validate({})
    with pytest.raises(TaskInputError, match="needs an image"):
        T.Generate(prompt="x", frames=[{"generate": True}, {"generate": False}]).plan()


def test_size_not_multiple_of_16():
    with pytest.raises(ValidationError, match="multiple of 16"):
        T.TextToImage(prompt="x", width=500, height=512)
    with pytest.raises(TaskInputError, match="both width and height"):
        T.TextToImage(prompt="x", width=512).plan()
    with pytest.raises(TaskInputError, match="limit"):
        T.TextToImage(prompt="x", width=2048, height=2048).plan(TaskLimits(max_output_pixels=1024 * 1024))
    with pytest.raises(TaskInputError, match="square"):
        T.TextToMultiview(prompt="x", width=512, height=256).plan()


def test_unknown_colour_name():
    with pytest.raises(ValidationError, match="unknown colour 'chartreuse'.*cyan"):
        T.Segmentation(image=IMG, classes=[{"name": "x", "colour": "chartreuse"}])
    with pytest.raises(TaskInputError, match="same colour"):
        T.Detection(image=IMG, classes=[{"name": "a", "colour": "red"}, {"name": "b", "colour": "red"}]).plan()


def test_bad_images():
    with pytest.raises(TaskInputError, match="image: the image is not valid base64"):
        T.DepthEstimation(image="not an image!").plan()
    with pytest.raises(TaskInputError, match="could not be decoded"):
        T.DepthEstimation(image=base64.b64encode(b"hello world").decode()).plan()
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    with pytest.raises(TaskInputError, match="GIF image; send PNG, JPEG or WebP"):
        T.DepthEstimation(image=base64.b64encode(gif.getvalue()).decode()).plan()
    with pytest.raises(TaskInputError, match="more than the limit"):
        T.DepthEstimation(image=IMG).plan(TaskLimits(max_input_pixels=100))
    truncated = base64.b64encode(make_image(64, 64)[:200]).decode()
    with pytest.raises(TaskInputError, match="could not be decoded"):
        T.DepthEstimation(image=truncated).plan()
    data_uri = "data:image/jpeg;base64," + b64_image(64, 64, fmt="JPEG")
    assert T.DepthEstimation(image=data_uri).plan().width == 512


def test_out_of_range_options():
    with pytest.raises(ValidationError, match="less than or equal to 200"):
        T.TextToImage(prompt="x", num_inference_steps=500)
    with pytest.raises(ValidationError, match="guidance_scale"):
        T.TextToImage(prompt="x", guidance_scale=-1)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        T.TextToImage(prompt="x", steps=10)
    with pytest.raises(ValidationError, match="at least 1 character"):
        T.TextToImage(prompt="")
    with pytest.raises(TaskInputError, match="limit of 2"):
        T.TextToMultiview(prompt="x", cameras=[{"azimuth": a, "elevation": 0} for a in (0, 90, 180)]).plan(TaskLimits(max_views=2))


def test_bad_cameras():
    with pytest.raises(ValidationError, match="azimuth and elevation"):
        T.CameraPose(azimuth=10)
    with pytest.raises(ValidationError, match="rotation"):
        T.CameraPose(c2w=[[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    with pytest.raises(ValidationError, match="either"):
        T.CameraPose(azimuth=0, elevation=0, c2w=[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


def test_tasks_module_does_not_need_torch():
    import subprocess
    import sys

    code = "import sys, model.tasks; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
