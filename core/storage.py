"""Where job outputs live: a local folder by default, one subfolder per job, kept for a time-to-live."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import time
from pathlib import Path
from typing import Optional

from PIL import Image

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
DIGEST = re.compile(r"^[0-9a-f]{64}$")
INPUTS = "_inputs"  # the folder of input blobs beside the job folders (a job id never starts with "_")
FORMATS = {"png": ("PNG", "image/png"), "webp": ("WEBP", "image/webp"), "jpeg": ("JPEG", "image/jpeg")}
EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpeg", "jpg": "jpeg"}  # file name suffix -> format


class LossyConversion(ValueError):
    """The conversion would change what the pixels mean (16-bit depth values squeezed into 8 bits)."""


def converted_name(name: str, fmt: str) -> str:
    """The name an output has in format `fmt`: `image.png` as jpeg is `image.jpeg`."""
    stem = name.rsplit(".", 1)[0]
    return name if fmt == "png" else f"{stem}.{fmt}"


def source_of(name: str) -> tuple[str, str]:
    """(stored PNG name, format) that a requested name stands for: `image.jpeg` -> (`image.png`, `jpeg`)."""
    stem, dot, suffix = name.rpartition(".")
    fmt = EXTENSIONS.get(suffix.lower()) if dot else None
    if fmt is None or fmt == "png":
        return name, "png"
    return f"{stem}.png", fmt


def _write_atomic(tmp: Path, path: Path, data: bytes) -> None:
    """Temp file, then rename; a failed write (a full disk) leaves no temp file behind."""
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ResultStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _folder(self, job_id: str) -> Path:
        if not SAFE_NAME.match(job_id):
            raise ValueError(f"bad job id {job_id!r}")
        return self.root / job_id

    def save(self, job_id: str, name: str, data: bytes) -> Path:
        """Write atomically (temp file + rename) so a reader never sees half a file."""
        if not SAFE_NAME.match(name):
            raise ValueError(f"bad file name {name!r}")
        folder = self._folder(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        _write_atomic(folder / f".{name}.tmp", path, data)
        return path

    def path(self, job_id: str, name: str) -> Optional[Path]:
        if not SAFE_NAME.match(job_id) or not SAFE_NAME.match(name):
            return None
        path = self._folder(job_id) / name
        return path if path.is_file() else None

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self._folder(job_id), ignore_errors=True)

    # ---- inputs, stored once by content so that queued work refers to them instead of carrying them ----
    def save_input(self, data: bytes) -> str:
        """Store an input's bytes under their SHA-256 (hex), which is returned; the same bytes twice are one blob."""
        digest = hashlib.sha256(data).hexdigest()
        folder = self.root / INPUTS
        path = folder / digest
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(folder / f".{digest}.{os.getpid()}.tmp", path, data)
        return digest

    def load_input(self, digest: str) -> bytes:
        """The bytes stored by `save_input`; FileNotFoundError when they expired or never were."""
        if not DIGEST.match(digest):
            raise ValueError(f"bad input digest {digest!r}")
        return (self.root / INPUTS / digest).read_bytes()

    def sweep(self, ttl_s: float, now: Optional[float] = None) -> int:
        """Delete job folders older than the TTL; returns how many."""
        if not self.root.is_dir():
            return 0
        cutoff = (now or time.time()) - ttl_s
        removed = 0
        for folder in self.root.iterdir():
            if folder.name == INPUTS:
                for blob in folder.iterdir():
                    if blob.stat().st_mtime < cutoff:
                        blob.unlink(missing_ok=True)
            elif folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed


def open_store(settings) -> ResultStore:
    """The store the settings name (every process builds its store here, so a backend is chosen once)."""
    return ResultStore(settings.results_dir)


def convert(data: bytes, fmt: str) -> tuple[bytes, str]:
    """Re-encode a stored PNG as PNG, WebP or JPEG; returns (bytes, media type)."""
    pil_format, media_type = FORMATS[fmt]
    if fmt == "png":
        return data, media_type
    image = Image.open(io.BytesIO(data))
    if image.mode in ("I;16", "I;16B", "I", "F"):
        raise LossyConversion(
            f"this output holds 16-bit values (depth); {fmt} keeps 8 bits per channel and would change what they "
            "mean: fetch it as png, or fetch the depth preview image for a picture"
        )
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, quality=95)
    return buffer.getvalue(), media_type
