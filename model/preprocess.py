"""Input images to VAE-ready tensors, as the reference prepares them for inference.

    bytes -> decode_rgb (Pillow `convert("RGB")`, alpha dropped) -> float32 / 255
          -> centre crop to the target aspect on whole pixels -> bilinear resize (no antialiasing)
          -> (x - 0.5) / 0.5

The size, when a request gives none, is `images.closest_size` of the first image (the ASPECT_RATIO_512
bucket nearest its h/w, ties to the earlier key), and every image of the request gets that size.
Checked against the reference's own outputs in tests/fixtures/preprocess_ref (exact in float32).

Knowingly not reproduced: after stacking a call's images, the reference normalises a second time
(`2x - 1`) when the whole batch has no value below 0 (roughly: no pixel darker than 128), which squashes
bright images towards -1. That is a bug in its image processor, not something the model was trained
to expect, so a bright image here keeps its colours.
"""

from __future__ import annotations

import warnings

import torch

from .images import decode_rgb

# Decoding limit in the worker: the gateway has already refused anything larger than the service's
# own (smaller) limit, so this only guards against a payload that skipped it.
MAX_DECODE_PIXELS = 40_000_000


def crop_box(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int, int, int]:
    """(top, left, rows, cols) of the centre crop to the target's aspect ratio.

    As the reference: a wider image keeps every row and `height * tw / th` columns, a taller one every
    column and `width * th / tw` rows; the start is half the excess; start and size are each truncated
    toward zero (so the crop may sit a pixel off centre and be a pixel short)."""
    aspect = target_width / target_height
    if width / height > aspect:
        rows, cols = float(height), height * aspect
    else:
        rows, cols = width / aspect, float(width)
    return int((height - rows) / 2), int((width - cols) / 2), int(rows), int(cols)


def _taps(out_size: int, in_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear (align_corners=False, no antialiasing) source taps of each output position, as
    `F.interpolate` computes them: the two input indices and the weight of the second."""
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size  # float32 throughout, as torch's kernel
    src = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    first = src.floor().long().clamp(max=in_size - 1)
    second = (first + 1).clamp(max=in_size - 1)
    return first, second, (src - first).clamp(0, 1)


def pixels_tensor(rgb: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(3, h, w) uint8 -> centre crop, float32 in [0, 1], bilinear resize to (3, height, width), [-1, 1].

    The reference converts the whole image to float, then resizes. A bilinear resize without
    antialiasing reads only two rows and two columns per output pixel, so only those are gathered (as
    uint8) and made float: the same numbers (to float rounding) without a float copy of a large photo."""
    top, left, rows, cols = crop_box(rgb.shape[1], rgb.shape[2], height, width)
    cropped = rgb[:, top : top + rows, left : left + cols]
    r0, r1, wr = _taps(height, rows)
    c0, c1, wc = _taps(width, cols)
    upper, lower = cropped.index_select(1, r0), cropped.index_select(1, r1)

    def blend_columns(band: torch.Tensor) -> torch.Tensor:
        return band.index_select(2, c0).float() / 255.0 * (1 - wc) + band.index_select(2, c1).float() / 255.0 * wc

    wr = wr[:, None]
    resized = blend_columns(upper) * (1 - wr) + blend_columns(lower) * wr
    return (resized - 0.5) / 0.5


def image_tensor(data: bytes, width: int, height: int, max_pixels: int = MAX_DECODE_PIXELS) -> torch.Tensor:
    """Image file bytes and a target size -> the (3, height, width) float32 tensor in [-1, 1] that the
    VAE encodes. The decoded image is copied once into the tensor and dropped."""
    image = decode_rgb(data, max_pixels)
    size = (image.height, image.width)
    with warnings.catch_warnings():  # read-only bytes: the tensor is only read (indexed) below
        warnings.simplefilter("ignore", UserWarning)
        rgb = torch.frombuffer(image.tobytes(), dtype=torch.uint8)
    image.close()
    return pixels_tensor(rgb.view(*size, 3).permute(2, 0, 1), width, height)
