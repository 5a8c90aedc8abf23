"""Tests for model/outputs.py: depth maps, class masks, class boxes and PNG encoding."""

import io
import time
from collections import deque

import numpy as np
import pytest
from PIL import Image

from model.outputs import (
    COLOURS,
    _components,
    class_boxes,
    class_masks,
    depth_outputs,
    encode_png16,
    image_png,
    mask_png,
    spectral,
)


def _noisy(image: np.ndarray, amount: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-amount, amount + 1, size=image.shape)
    return np.clip(image.astype(np.int32) + noise, 0, 255).astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def _fill(image: np.ndarray, box: list[int], colour: str) -> None:
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = COLOURS[colour]


def _outline(image: np.ndarray, box: list[int], colour: str, width: int = 2) -> None:
    x0, y0, x1, y1 = box
    c = COLOURS[colour]
    image[y0:y0 + width, x0:x1] = c
    image[y1 - width:y1, x0:x1] = c
    image[y0:y1, x0:x0 + width] = c
    image[y0:y1, x1 - width:x1] = c


# --- colours ---------------------------------------------------------------------------------


def test_colour_table():
    assert len(COLOURS) == 20
    assert list(COLOURS)[:3] == ["red", "lime", "blue"]
    assert list(COLOURS)[-1] == "orchid"
    assert COLOURS["darkorange"] == (255, 140, 0)
    assert COLOURS["turquoise"] == (64, 224, 208)


# --- depth -----------------------------------------------------------------------------------


def test_depth_gradient():
    ramp = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    rgb = np.repeat(ramp[:, :, None], 3, axis=2)
    depth16, preview = depth_outputs(rgb)

    assert depth16.dtype == np.uint16 and depth16.shape == (8, 256)
    assert depth16[0, 0] == 0 and depth16[0, -1] == 65535
    assert np.all(np.diff(depth16.astype(np.int64), axis=1) > 0)
    np.testing.assert_array_equal(depth16[0], np.arange(256) * 257)

    assert preview.dtype == np.uint8 and preview.shape == (8, 256, 3)
    near, far = preview[0, -1], preview[0, 0]
    assert not np.array_equal(near, far)
    assert tuple(near) == (158, 1, 66)  # bright = near = dark red
    assert tuple(far) == (94, 79, 162)  # dark = far = blue


def test_depth_is_the_references_luma_reading_and_constant_frame():
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # luma 0.299 * 255 -> 76 (a channel mean would say 85)
    depth16, preview = depth_outputs(rgb)
    assert np.all(depth16 == 76 * 257)
    # Constant depth normalises to zeros, coloured as Spectral(1 - 0).
    assert np.all(preview == spectral(np.float64(1.0)))


def test_depth_of_a_noisy_frame_matches_convert_L_exactly():
    """The reference reads a depth frame with PIL's convert('L'); on a noisy frame (channels apart) that is
    up to ~14 levels from a channel mean, so ours must be the same reading, pixel for pixel."""
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, size=(48, 64, 1))
    rgb = np.clip(grey + rng.integers(-40, 41, size=(48, 64, 3)), 0, 255).astype(np.uint8)
    depth16, _ = depth_outputs(rgb)
    reference = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint16) * 257
    np.testing.assert_array_equal(depth16, reference)
    mean = np.rint(rgb.astype(np.float64).mean(axis=2)) * 257
    assert np.abs(mean - depth16.astype(np.float64)).max() / 257 > 5  # the old reading was off


def test_spectral_middle_is_pale_yellow():
    assert tuple(spectral(np.float64(0.5))) == (255, 255, 191)


def test_png16_round_trip():
    rng = np.random.default_rng(1)
    depth16 = rng.integers(0, 65536, size=(37, 53), dtype=np.uint16)
    depth16[0, 0], depth16[0, 1] = 0, 65535
    with Image.open(io.BytesIO(encode_png16(depth16))) as image:
        assert image.format == "PNG"
        assert image.mode in ("I;16", "I")
        back = np.array(image)
    assert back.shape == depth16.shape
    np.testing.assert_array_equal(back.astype(np.int64), depth16.astype(np.int64))


def test_png16_rejects_wrong_dtype():
    with pytest.raises(ValueError):
        encode_png16(np.zeros((4, 4), dtype=np.uint8))


# --- masks -----------------------------------------------------------------------------------


def _blob_image() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = 96, 128
    yy, xx = np.mgrid[:h, :w]
    cyan = (yy - 30) ** 2 + (xx - 35) ** 2 < 20**2
    red = (yy >= 50) & (yy < 85) & (xx >= 70) & (xx < 120)
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    rgb[cyan] = COLOURS["cyan"]
    rgb[red] = COLOURS["red"]
    return _noisy(rgb, 20), cyan, red


def test_masks_match_blobs():
    rgb, cyan, red = _blob_image()
    masks = class_masks(rgb, ["cyan", "red", "lime"])
    assert set(masks) == {"cyan", "red", "lime"}
    for mask in masks.values():
        assert mask.dtype == bool and mask.shape == rgb.shape[:2]
    assert _iou(masks["cyan"], cyan) > 0.95
    assert _iou(masks["red"], red) > 0.95
    assert not masks["lime"].any()


def test_masks_nearest_colour_wins_and_tolerance_caps():
    rgb = np.zeros((1, 4, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 140, 0)  # darkorange, near orange and orangered too
    rgb[0, 1] = (255, 69, 0)  # orangered
    rgb[0, 2] = (200, 0, 0)  # 55 from red
    rgb[0, 3] = (30, 30, 30)  # near-black background
    masks = class_masks(rgb, ["orange", "orangered", "red"])
    assert masks["orange"].tolist() == [[True, False, False, False]]
    assert masks["orangered"].tolist() == [[False, True, False, False]]
    assert masks["red"].tolist() == [[False, False, True, False]]
    assert not class_masks(rgb, ["red"], tolerance=40.0)["red"][0, 2]


def test_masks_unknown_colour():
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="chartreuse") as info:
        class_masks(rgb, ["red", "chartreuse"])
    assert "turquoise" in str(info.value)  # lists the allowed names


def test_masks_reject_non_rgb():
    with pytest.raises(ValueError):
        class_masks(np.zeros((4, 4), dtype=np.uint8), ["red"])


# --- boxes -----------------------------------------------------------------------------------


def test_boxes_filled_and_outlined():
    rgb = np.zeros((200, 300, 3), dtype=np.uint8)
    red1, red2, blue = [20, 30, 90, 80], [150, 100, 260, 180], [100, 10, 180, 90]
    _fill(rgb, red1, "red")
    _fill(rgb, red2, "red")
    _outline(rgb, blue, "blue")
    # Specks below min_area.
    rgb[5:8, 5:8] = COLOURS["red"]
    rgb[190:192, 290:292] = COLOURS["blue"]
    rgb = _noisy(rgb, 15, seed=3)

    boxes = class_boxes(rgb, ["red", "blue", "gold"])
    assert set(boxes) == {"red", "blue", "gold"}
    assert boxes["gold"] == []
    assert len(boxes["red"]) == 2 and len(boxes["blue"]) == 1
    for got, want in zip(boxes["red"], [red1, red2]):  # sorted by (y0, x0)
        assert np.abs(np.subtract(got, want)).max() <= 1
    assert np.abs(np.subtract(boxes["blue"][0], blue)).max() <= 1
    assert all(isinstance(v, int) for b in boxes["red"] for v in b)

    everything = class_boxes(rgb, ["red", "blue"], min_area=1)
    assert [5, 5, 8, 8] in everything["red"]
    assert [290, 190, 292, 192] in everything["blue"]


def test_boxes_sorted_by_row_then_column():
    rgb = np.zeros((60, 60, 3), dtype=np.uint8)
    for box in ([40, 30, 50, 40], [5, 30, 15, 40], [20, 5, 30, 15]):
        _fill(rgb, box, "lime")
    assert class_boxes(rgb, ["lime"])["lime"] == [[20, 5, 30, 15], [5, 30, 15, 40], [40, 30, 50, 40]]


def _reference_components(mask: np.ndarray, connectivity: int) -> list[list[int]]:
    h, w = mask.shape
    seen = np.zeros_like(mask)
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    out = []
    for y in range(h):
        for x in range(w):
            if not mask[y, x] or seen[y, x]:
                continue
            seen[y, x] = True
            queue, ys, xs = deque([(y, x)]), [], []
            while queue:
                cy, cx = queue.popleft()
                ys.append(cy)
                xs.append(cx)
                for dy, dx in steps:
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
            out.append([min(xs), min(ys), max(xs) + 1, max(ys) + 1, len(xs)])
    return sorted(out, key=lambda r: (r[1], r[0], r[2], r[3], r[4]))


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("density", [0.3, 0.5, 0.6])
def test_components_match_flood_fill(connectivity, density):
    rng = np.random.default_rng(int(density * 10) + connectivity)
    for _ in range(5):
        mask = rng.random((40, 50)) < density
        got = sorted(_components(mask, connectivity).tolist(), key=lambda r: (r[1], r[0], r[2], r[3], r[4]))
        assert got == _reference_components(mask, connectivity)


def test_components_nested_rings_match_flood_fill():
    n = 101
    mask = np.zeros((n, n), dtype=bool)
    top, left, bottom, right = 0, 0, n - 1, n - 1
    while top <= bottom and left <= right:
        mask[top, left:right + 1] = True
        mask[top:bottom + 1, right] = True
        if top + 2 <= bottom:
            mask[bottom, left:right + 1] = True
        if left + 2 <= right:
            mask[top + 2:bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
        if top <= bottom:
            mask[top - 1, left - 1] = True  # step into the next ring
    comps = _components(mask, 4)
    assert len(comps) == len(_reference_components(mask, 4))


def test_components_empty_and_full():
    assert _components(np.zeros((5, 7), dtype=bool)).shape == (0, 5)
    assert _components(np.ones((5, 7), dtype=bool)).tolist() == [[0, 0, 7, 5, 35]]


def test_boxes_large_frame_is_fast():
    rgb = np.zeros((1024, 1024, 3), dtype=np.uint8)
    _fill(rgb, [10, 10, 500, 400], "red")
    _fill(rgb, [600, 50, 1000, 900], "red")
    _outline(rgb, [100, 500, 550, 1000], "blue")
    rgb = _noisy(rgb, 20, seed=5)
    start = time.perf_counter()
    boxes = class_boxes(rgb, ["red", "blue"])
    elapsed = time.perf_counter() - start
    assert boxes["red"] == [[10, 10, 500, 400], [600, 50, 1000, 900]]
    assert boxes["blue"] == [[100, 500, 550, 1000]]
    assert elapsed < 5.0  # generous: typically well under a second


# --- PNG -------------------------------------------------------------------------------------


def test_mask_png():
    mask = np.zeros((6, 9), dtype=bool)
    mask[2:4, 3:7] = True
    with Image.open(io.BytesIO(mask_png(mask))) as image:
        assert image.mode == "L"
        back = np.array(image)
    np.testing.assert_array_equal(back, np.where(mask, 255, 0))


def test_image_png():
    rgb = np.random.default_rng(2).integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    with Image.open(io.BytesIO(image_png(rgb))) as image:
        assert image.mode == "RGB"
        np.testing.assert_array_equal(np.array(image), rgb)
