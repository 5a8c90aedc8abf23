"""Images in (paths, bytes, PIL images, URLs, data URIs) and out (bytes to PIL).

Every input image becomes a data URI in the JSON body; URLs are fetched by the client (the service
never fetches URLs itself)."""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path
from typing import Any, Union

import httpx

# What an image argument may be: a path, encoded bytes, a PIL image, an http(s) URL or a data URI.
ImageLike = Union[str, bytes, os.PathLike, Any]

IMAGE_FIELDS = ("image", "mask")
IMAGE_LIST_FIELDS = ("images",)

_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")
_MAGIC = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"RIFF": "image/webp"}


def media_type(data: bytes) -> str:
    for magic, kind in _MAGIC.items():
        if data.startswith(magic):
            return kind
    return "application/octet-stream"


def data_uri(data: bytes) -> str:
    return f"data:{media_type(data)};base64,{base64.b64encode(data).decode()}"


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def _pil_png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_local(value: ImageLike) -> str:
    """A data URI (or base64 as given) of an image that needs no network (everything but http(s) URLs)."""
    if isinstance(value, str) and value.startswith("data:"):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return data_uri(bytes(value))
    if isinstance(value, str) and len(value) > 64 and _BASE64.fullmatch(value) and not Path(value[:255]).exists():
        return value  # already base64, as the API takes it
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"image {str(value)[:200]!r} is not a file, an http(s) URL or a data URI")
        return data_uri(path.read_bytes())
    if hasattr(value, "save") and hasattr(value, "size"):  # a PIL image
        return data_uri(_pil_png(value))
    raise TypeError(f"cannot use {type(value).__name__} as an image: give a path, bytes, a PIL image, a URL or a data URI")


def _map_images(fields: dict, encode) -> dict:
    """`fields` with every image (image, mask, images[], frames[].image) passed through `encode`."""
    out = dict(fields)
    for name in IMAGE_FIELDS:
        if out.get(name) is not None:
            out[name] = encode(out[name])
    for name in IMAGE_LIST_FIELDS:
        if out.get(name) is not None:
            out[name] = [encode(v) for v in out[name]]
    if out.get("frames") is not None:
        frames = []
        for frame in out["frames"]:
            frame = dict(frame)
            if frame.get("image") is not None:
                frame["image"] = encode(frame["image"])
            frames.append(frame)
        out["frames"] = frames
    return out


def _urls(fields: dict) -> list[str]:
    found: list[str] = []
    _map_images(fields, lambda v: found.append(v) if isinstance(v, str) and _is_url(v) else None)
    return found


def encode_images(fields: dict, http: httpx.Client | None = None) -> dict:
    """Encode the images of a request body, fetching URLs with a plain (key-less) client."""
    urls = _urls(fields)
    fetched: dict[str, str] = {}
    if urls:
        with httpx.Client(follow_redirects=True, timeout=60) as plain:
            for url in urls:
                response = plain.get(url)
                response.raise_for_status()
                fetched[url] = data_uri(response.content)
    return _map_images(fields, lambda v: fetched[v] if isinstance(v, str) and v in fetched else encode_local(v))


async def aencode_images(fields: dict) -> dict:
    urls = _urls(fields)
    fetched: dict[str, str] = {}
    if urls:
        async with httpx.AsyncClient(follow_redirects=True, timeout=60) as plain:
            for url in urls:
                response = await plain.get(url)
                response.raise_for_status()
                fetched[url] = data_uri(response.content)
    return _map_images(fields, lambda v: fetched[v] if isinstance(v, str) and v in fetched else encode_local(v))


def to_pil(data: bytes):
    """A loaded PIL image of encoded bytes (needs Pillow: `pip install onediffusion-client[pil]`)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("PIL images need Pillow: pip install 'onediffusion-client[pil]'") from None
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
