"""Input images: decoding with limits, RGB conversion and the reference's aspect-ratio buckets.

Pillow only (no torch): the gateway uses this to check uploads before anything is queued.
The crop and resize that prepare an image for the VAE are in `model/preprocess.py` (torch).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, ImageOps

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")

# The reference's ASPECT_RATIO_512 buckets: aspect ratio (h/w) -> (height, width).
ASPECT_RATIO_512: dict[float, tuple[int, int]] = {
    0.25: (256, 1024), 0.26: (256, 992), 0.27: (256, 960), 0.28: (256, 928),
    0.32: (288, 896), 0.33: (288, 864), 0.35: (288, 832), 0.4: (320, 800),
    0.42: (320, 768), 0.48: (352, 736), 0.5: (352, 704), 0.52: (352, 672),
    0.57: (384, 672), 0.6: (384, 640), 0.68: (416, 608), 0.72: (416, 576),
    0.78: (448, 576), 0.82: (448, 544), 0.88: (480, 544), 0.94: (480, 512),
    1.0: (512, 512), 1.07: (512, 480), 1.13: (544, 480), 1.21: (544, 448),
    1.29: (576, 448), 1.38: (576, 416), 1.46: (608, 416), 1.67: (640, 384),
    1.75: (672, 384), 2.0: (704, 352), 2.09: (736, 352), 2.4: (768, 320),
    2.5: (800, 320), 2.89: (832, 288), 3.0: (864, 288), 3.11: (896, 288),
    3.62: (928, 256), 3.75: (960, 256), 3.88: (992, 256), 4.0: (1024, 256),
}


class ImageDecodeError(ValueError):
    """The bytes are not an acceptable image; the message says what to change."""


def closest_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) of the ASPECT_RATIO_512 bucket whose key is nearest the image's h/w ratio.

    As the reference: on a tie the earlier (smaller) key wins (`min` keeps the first minimum and the
    table is in ascending order), e.g. h/w 0.75 -> key 0.72 -> (416, 576)."""
    ratio = height / width
    key = min(ASPECT_RATIO_512, key=lambda r: abs(r - ratio))
    return ASPECT_RATIO_512[key]


_DATA_URI = re.compile(r"^data:(?P<mime>[\w/+.-]+)?(;[\w=.-]+)*;base64,", re.IGNORECASE)


def decode_base64(text: str) -> bytes:
    """Bytes of a base64 string or a `data:image/...;base64,` URI."""
    match = _DATA_URI.match(text)
    payload = text[match.end():] if match else text
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageDecodeError("is not valid base64 (send the file's bytes base64-encoded, or a data: URI)") from None


def open_image_header(data: bytes, max_pixels: int) -> Image.Image:
    """Open an image reading only its header: format and size are checked, no pixels are decoded yet.
    A phone camera's MPO (a JPEG with extra pictures appended) counts as JPEG; its first picture is used."""
    if not data:
        raise ImageDecodeError("is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ALLOWED_FORMATS + ("MPO",):
                raise ImageDecodeError(f"is a {image.format} image; send PNG, JPEG or WebP")
            w, h = image.size
            if w * h > max_pixels:
                raise ImageDecodeError(f"has {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}; downscale it")
    except ImageDecodeError:
        raise
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise ImageDecodeError(f"could not be decoded as an image ({type(exc).__name__}); send PNG, JPEG or WebP") from None
    return image


def load_upright(image: Image.Image) -> Image.Image:
    """Decode the pixels of an image opened by `open_image_header`: the first picture of a multi-picture
    file, turned upright as its EXIF Orientation tag says (a portrait phone photo stays portrait)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no copy when there is nothing to turn
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise ImageDecodeError(f"could not be decoded as an image ({type(exc).__name__}); send PNG, JPEG or WebP") from None
    return image


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode and fully load an image, refusing other formats, oversized and truncated files."""
    return load_upright(open_image_header(data, max_pixels))


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as the reference's inference path makes it: Pillow's plain `convert("RGB")`.

    No compositing: RGBA and LA drop their alpha and keep each pixel's stored colour (a condition map
    drawn on a transparent black background stays black), L and LA are copied to R, G and B, and a
    palette image's transparent index keeps its palette colour."""
    with warnings.catch_warnings():  # Pillow suggests RGBA for palette images with transparency
        warnings.simplefilter("ignore", UserWarning)
        return image.convert("RGB")


def decode_rgb(data: bytes, max_pixels: int) -> Image.Image:
    """Input bytes -> the RGB image that preprocessing starts from.

    The one place where an uploaded file becomes pixels, for the gateway's checks and the worker's
    tensors alike: format and size limits (`open_image`), then `to_rgb`. Decode-time fixes (EXIF
    orientation, multi-picture JPEGs) belong here. The reference applies no EXIF rotation."""
    return to_rgb(open_image(data, max_pixels))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
