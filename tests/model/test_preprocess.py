"""Input preparation against the reference's own outputs (tests/fixtures/preprocess_ref): the default
size it picks and the (3, H, W) tensor in [-1, 1] that goes to the VAE, for every case of the fixture,
through `model.pipeline.image_tensor` and through the task requests that the service builds."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from model.pipeline import image_tensor
from model.images import closest_size
from model.preprocess import crop_box
from model.tasks import TASKS

CASES = ["photo_rgb", "rgba_shape", "la_gray", "palette_trns", "tiny_rgb", "big_square", "exact_bucket",
         "photo_rgb_512x768", "id_pair"]
ATOL = 1e-5  # the fixture's README: a float32 interpolate path reproduces it exactly


@pytest.fixture(scope="module")
def ref(fixtures_dir):
    path = fixtures_dir / "preprocess_ref" / "cases.safetensors"
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    return tensors, meta


def _inputs(ref, case: str) -> list[bytes]:
    tensors, meta = ref
    return [tensors[f"{name}.png"].numpy().tobytes() for name in meta[case]["inputs"]]


def _grid(ref, case: str, out: torch.Tensor) -> torch.Tensor:
    tensors, _ = ref
    rows, cols = tensors[f"{case}.rows"].long(), tensors[f"{case}.cols"].long()
    return out[..., rows, :][..., cols]


def test_fixture_has_every_case(ref):
    assert set(CASES) == set(ref[1]) - {"__fixture__"}


@pytest.mark.parametrize("case", [c for c in CASES if c != "photo_rgb_512x768"])  # that one's size is given
def test_default_size_matches_the_reference(ref, case):
    tensors, meta = ref
    assert meta[case]["size_source"].startswith("auto")
    first = Image.open(io.BytesIO(_inputs(ref, case)[0]))
    assert closest_size(first.height, first.width) == tuple(tensors[f"{case}.target_hw"].tolist())


@pytest.mark.parametrize("case", CASES)
def test_image_tensor_matches_the_reference(ref, case):
    tensors, _ = ref
    height, width = tensors[f"{case}.target_hw"].tolist()
    out = torch.stack([image_tensor(data, width, height) for data in _inputs(ref, case)])
    assert out.dtype == torch.float32 and out.shape[1:] == (3, height, width)
    expected = tensors[f"{case}.expected"]
    expected = expected if expected.dim() == 4 else expected[None]
    torch.testing.assert_close(_grid(ref, case, out), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", ["photo_rgb", "la_gray", "tiny_rgb", "palette_trns", "rgba_shape", "id_pair"])
def test_task_requests_prepare_images_as_the_reference(ref, case):
    """The service's path: a request with base64 images and no size -> plan -> tensors."""
    tensors, _ = ref
    inputs = _inputs(ref, case)
    encoded = [base64.b64encode(data).decode() for data in inputs]
    if len(inputs) > 1:
        plan = TASKS["id-customization"].model_validate({"images": encoded, "prompt": "a chef"}).plan()
    else:
        plan = TASKS["depth-to-image"].model_validate({"image": encoded[0], "prompt": "a cat"}).plan()
    assert (plan.height, plan.width) == tuple(tensors[f"{case}.target_hw"].tolist())
    out = torch.stack([image_tensor(data, plan.width, plan.height) for data in plan.images])
    expected = tensors[f"{case}.expected"]
    torch.testing.assert_close(_grid(ref, case, out), expected if expected.dim() == 4 else expected[None], atol=ATOL, rtol=0)


def test_transparent_black_background_stays_black(ref):
    """A condition map drawn on a transparent black background: alpha dropped, not composited on white."""
    out = image_tensor(_inputs(ref, "rgba_shape")[0], 512, 512)
    assert out[:, 0, 0].tolist() == [-1.0, -1.0, -1.0]


def test_bright_images_are_not_normalised_twice():
    """The reference maps a batch with no pixel below 128 through 2x - 1 a second time (a bug); we don't."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 220, 255)).save(buffer, format="PNG")
    out = image_tensor(buffer.getvalue(), 64, 64)
    expected = torch.tensor([200, 220, 255]) / 127.5 - 1
    torch.testing.assert_close(out[:, 10, 10], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("hw,target,box", [
    ((889, 600), (608, 416), (6, 0, 876, 600)),
    ((360, 300), (544, 448), (0, 1, 360, 296)),
    ((889, 600), (512, 768), (244, 0, 400, 600)),
    ((48, 64), (416, 576), (0, 0, 46, 64)),
    ((48, 64), (608, 416), (0, 15, 48, 32)),
])
def test_crop_box_truncates_like_the_reference(hw, target, box):
    assert crop_box(*hw, *target) == box


def test_explicit_size_uses_the_same_crop_for_every_image():
    """All images of a request are cropped to the one output aspect, whatever their own."""
    wide = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (64, 1))).convert("RGB")
    buffer = io.BytesIO()
    wide.save(buffer, format="PNG")
    out = image_tensor(buffer.getvalue(), 32, 32)
    assert out.shape == (3, 32, 32)
    # centre crop of columns 96..159, then an exact 2x bilinear downscale: the mean of columns 96 and 97
    assert abs(float(out[0, 0, 0]) - ((96.5 / 255) - 0.5) / 0.5) < 1e-5


def test_exif_orientation_is_applied_and_listed_as_a_difference():
    """An orientation-6 JPEG stored 640x384 is shown (and read by us) as a 384x640 portrait; the reference
    reads the stored pixels (landscape). docs/fidelity.md lists this among the knowingly different items."""
    import io as _io

    from PIL import Image as _Image

    from model.tasks import TASKS
    from tests.paths import ROOT

    stored = _Image.new("RGB", (640, 384), (200, 40, 40))
    exif = _Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    buffer = _io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif.tobytes())
    data = base64.b64encode(buffer.getvalue()).decode()
    plan = TASKS["depth-estimation"].model_validate({"image": data}).plan()
    assert (plan.width, plan.height) == (384, 640)  # upright: a portrait bucket
    assert _Image.open(_io.BytesIO(buffer.getvalue())).convert("RGB").size == (640, 384)  # the reference's reading
    fidelity = (ROOT / "docs" / "fidelity.md").read_text()
    different = fidelity.split("**Knowingly different:**", 1)[1].split("## ", 1)[0]
    assert "EXIF orientation" in different and "384x640" in different
