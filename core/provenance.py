"""What a job was asked, for reproducing it: the validated input with the resolved seed, images shown as
their size and SHA-256 instead of their bytes; and the same parameters written into PNG outputs."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from typing import Any

from PIL import Image

from model.images import ImageDecodeError, decode_base64
from model.tasks import TaskRequest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SERVICE_FIELDS = {"webhook", "output_format", "task"}


def image_summary(data: str) -> dict:
    """{"sha256", "bytes", "format", "width", "height"} of a base64 image (or data URI)."""
    try:
        raw = decode_base64(data)
    except ImageDecodeError:
        raw = data.encode()
    summary: dict[str, Any] = {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
    try:
        with Image.open(io.BytesIO(raw)) as image:  # reads the header only
            summary.update(format=(image.format or "").lower(), width=image.width, height=image.height)
    except Exception:  # a request that passed validation decodes; anything else is shown by hash alone
        pass
    return summary


def input_echo(request: TaskRequest) -> dict:
    """The request's fields as validated (seed included), each input image replaced by its summary."""
    images = {data: image_summary(data) for _, data in request._images() if isinstance(data, str)}

    def walk(value):
        if isinstance(value, str) and value in images:
            return images[value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(request.model_dump(mode="json", exclude=SERVICE_FIELDS))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def with_text_chunks(png: bytes, texts: dict[str, str]) -> bytes:
    """The PNG with UTF-8 text chunks (iTXt) added after its header; pixels untouched, not re-encoded."""
    if not png.startswith(PNG_SIGNATURE):
        return png
    ihdr_end = len(PNG_SIGNATURE) + 8 + struct.unpack(">I", png[8:12])[0] + 4
    chunks = b"".join(
        _chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8")) for key, value in texts.items()
    )
    return png[:ihdr_end] + chunks + png[ihdr_end:]


def parameter_texts(task: str, echo: dict) -> dict[str, str]:
    """Text chunks of an output: `parameters` is the JSON of {task, input} (what to send to get it again)."""
    return {
        "parameters": json.dumps({"task": task, "input": echo}, separators=(",", ":"), sort_keys=True),
        "Software": "OneDiffusion service",
    }
