"""Input images: decoding with limits, RGB conversion and the reference's aspect-ratio buckets.

Pillow only (no torch): the gateway uses this to check uploads before anything is queued.
The crop and resize that prepare an image for the VAE are in `model/preprocess.py` (torch).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from .decode_budget import DECODE_BUDGET

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


# ---- bounded decoding (the gateway's checks) -------------------------------------------------------------
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says, read without decoding a pixel or allocating a canvas."""

    format: str
    width: int
    height: int
    orientation: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) once turned as its EXIF orientation says."""
        return (self.height, self.width) if self.orientation in _ROTATED else (self.width, self.height)

    def decode_cost(self, keep_pixels: bool) -> int:
        """Estimated peak bytes of `check_pixels`: the decoder's buffers, the image, the RGB copy (kept
        only when asked) and a turned copy. A JPEG checked without keeping its pixels is decoded at 1/8
        scale (every coded byte is still read, so a truncated file is still found)."""
        px = self.pixels
        if self.format == "WEBP":  # libwebp's two canvases and the frame it returns, RGBA each
            base = 12 * px
        elif self.format in ("JPEG", "MPO") and not keep_pixels:
            base = 4 * px // 64 + 1
        else:
            base = 4 * px
        if keep_pixels:
            base += 3 * px + (3 * px if self.orientation != 1 else 0)
        return base


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """Canvas size from a WebP file's first chunk header (Pillow's decoder allocates its canvas on open)."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def read_header(data: bytes, max_pixels: int) -> ImageInfo:
    """Format, size and EXIF orientation of an image file, checked against `max_pixels`; no decoder is
    left open and no pixel memory is taken (a WebP's size is read from its bytes)."""
    if not data:
        raise ImageDecodeError("is empty")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        size = _webp_size(data)
        if size is None:
            raise ImageDecodeError("could not be decoded as an image (a WebP file without a readable size); send PNG, JPEG or WebP")
        _check_pixels_limit(*size, max_pixels)
        return ImageInfo("WEBP", size[0], size[1], _webp_orientation(data))
    image = open_image_header(data, max_pixels)
    try:
        try:
            orientation = int(image.getexif().get(0x0112, 1) or 1)
        except Exception:  # a broken EXIF block: decoding shows whether the image itself is sound
            orientation = 1
        return ImageInfo("JPEG" if image.format == "MPO" else image.format, image.width, image.height, orientation)
    finally:
        image.close()


def _check_pixels_limit(w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise ImageDecodeError(f"has {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}; downscale it")


def _webp_chunks(data: bytes):
    """(fourcc, payload) of a WebP file's top-level chunks."""
    at = 12
    while at + 8 <= len(data):
        fourcc, size = data[at:at + 4], int.from_bytes(data[at + 4:at + 8], "little")
        yield fourcc, data[at + 8:at + 8 + size]
        at += 8 + size + (size & 1)


def _webp_orientation(data: bytes) -> int:
    for fourcc, payload in _webp_chunks(data):
        if fourcc == b"EXIF":
            try:
                exif = Image.Exif()
                exif.load(payload)
                return int(exif.get(0x0112, 1) or 1)
            except Exception:
                return 1
    return 1


@dataclass(frozen=True)
class Checked:
    """An image whose pixels decoded soundly, of which only the upright size is kept."""

    width: int
    height: int


def _load_webp(data: bytes, info: ImageInfo) -> Image.Image:
    """The first frame of a WebP as an RGB(A) image, decoded once: libwebp's frame is wrapped without the
    copy that Pillow's loader makes, and the decoder (two canvases) is freed before anything else."""
    from PIL import _webp

    decoder = _webp.WebPAnimDecoder(data)
    (width, height), _loop, _background, _frames, rawmode = decoder.get_info()
    if width * height != info.pixels:
        raise ImageDecodeError("could not be decoded as an image (its size changed while decoding); send PNG, JPEG or WebP")
    frame = decoder.get_next()
    exif = decoder.get_chunk("EXIF")
    del decoder
    if frame is None:
        raise ImageDecodeError("could not be decoded as an image (a broken WebP frame); send PNG, JPEG or WebP")
    image = Image.frombuffer("RGBA", (width, height), frame[0], "raw", "RGBA", 0, 1)
    if rawmode == "RGBX":
        image = image.convert("RGB")
    if exif:
        image.info["exif"] = exif
    return image


def check_pixels(data: bytes, info: ImageInfo, keep_pixels: bool, budget=DECODE_BUDGET):
    """Decode an image whose header `read_header` checked, within the process's decode budget: the
    upright RGB image when `keep_pixels`, else only its upright size (`Checked`), the pixels dropped as
    soon as they have decoded. Raises ImageDecodeError for a file that does not decode, DecodeBusy when
    the budget stays full."""
    with budget.reserve(info.decode_cost(keep_pixels)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                if info.format == "WEBP":
                    image = _load_webp(data, info)
                else:
                    image = Image.open(io.BytesIO(data))
                    if getattr(image, "n_frames", 1) > 1:
                        image.seek(0)
                    if not keep_pixels and image.format in ("JPEG", "MPO"):
                        image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
                    image.load()
                if not keep_pixels:
                    image.close()
                    return Checked(*info.upright_size)
                image = ImageOps.exif_transpose(image) if info.orientation != 1 else image
        except ImageDecodeError:
            raise
        except Exception as exc:  # Pillow raises many types for corrupt data
            raise ImageDecodeError(f"could not be decoded as an image ({type(exc).__name__}); send PNG, JPEG or WebP") from None
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as the reference's inference path makes it: Pillow's plain `convert("RGB")`.

    No compositing: RGBA and LA drop their alpha and keep each pixel's stored colour (a condition map
    drawn on a transparent black background stays black), L and LA are copied to R, G and B, and a
    palette image's transparent index keeps its palette colour."""
    if image.mode == "RGB":
        return image  # already what convert would copy
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
