"""Where job inputs and outputs live: one small interface (`BlobStore`), backends chosen by URL scheme.

- `LocalStore` (`file`), the default: a folder (RESULTS_DIR, or `STORAGE_URL=file:///path`) that every API
  process and worker shares, one subfolder per job, swept by the workers after RESULTS_TTL_S.
- `S3Store` (`s3`, in `s3_store.py`), chosen by `STORAGE_URL=s3://bucket/prefix`: S3-compatible object
  storage (AWS, MinIO, Ceph, R2, ...), reached with the standard AWS environment variables. Clients fetch
  outputs from presigned URLs of the bucket, so output bytes never pass through the API; a bucket
  lifecycle rule expires them.

Why a registry of schemes (`register_store_backend`): `open_store` and the settings' check of STORAGE_URL
look the scheme up instead of testing for each backend, so a new backend is a module with its store and
one registration here, and an unknown scheme fails with the list of registered ones. A backend registers
its opener as "module:function", imported only when a URL of its scheme is opened: boto3 loads only in
processes that use S3.

A store that cannot be reached or refuses an operation raises `StorageUnavailable`, whose message names
the setting to check: the API answers it with 503, the worker retries and then fails the job with it.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import re
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from PIL import Image

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
DIGEST = re.compile(r"^[0-9a-f]{64}$")
INPUTS = "_inputs"  # the folder of input blobs beside the job folders (a job id never starts with "_")
FORMATS = {"png": ("PNG", "image/png"), "webp": ("WEBP", "image/webp"), "jpeg": ("JPEG", "image/jpeg")}
EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpeg", "jpg": "jpeg"}  # file name suffix -> format
MEDIA_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg", "jpg": "image/jpeg", "json": "application/json"}
S3_URL = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?$")


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix ending in `/` or empty) of `s3://bucket/prefix`; ValueError naming STORAGE_URL."""
    match = S3_URL.match(url.strip())
    if not match:
        raise ValueError(f"STORAGE_URL={url!r}: expected s3://bucket or s3://bucket/prefix (a valid S3 bucket name)")
    prefix = (match["prefix"] or "").strip("/")
    return match["bucket"], f"{prefix}/" if prefix else ""


class StorageUnavailable(RuntimeError):
    """The blob store cannot be reached, its bucket is missing, or it refuses an operation. The message says
    what failed and names the setting to check (STORAGE_URL, the AWS variables); nothing was changed."""


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


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file, then rename; a failed write (a full disk) leaves no temp file behind.

    The temp name is unique per write: two requests storing the same input at once (same digest, same
    process, two threads) must not share a temp file, or one rename finds it already gone.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class BlobStore(ABC):
    """Inputs and outputs of jobs, by job id and file name (outputs) or by content digest (inputs).

    `redirects`: outputs are fetched from the store itself (`presigned_url`), not streamed by the API."""

    redirects = False

    @abstractmethod
    def save(self, job_id: str, name: str, data: bytes) -> None:
        """Store an output; readers never see half of it."""

    @abstractmethod
    def read(self, job_id: str, name: str) -> Optional[bytes]:
        """An output's bytes; None when there is no such output (or it expired)."""

    @abstractmethod
    def exists(self, job_id: str, name: str) -> bool: ...

    @abstractmethod
    def delete(self, job_id: str) -> None:
        """Remove every output of the job."""

    @abstractmethod
    def save_input(self, data: bytes) -> str:
        """Store an input's bytes under their SHA-256 (hex), which is returned; the same bytes twice are one blob."""

    @abstractmethod
    def load_input(self, digest: str) -> bytes:
        """The bytes stored by `save_input`; FileNotFoundError when they expired or never were."""

    def sweep(self, ttl_s: float, now: Optional[float] = None) -> int:
        """Delete outputs and inputs older than the TTL; returns how many job folders went. A store whose
        expiry is the storage's own business (a bucket lifecycle rule) does nothing."""
        return 0

    def check(self) -> None:
        """Raise StorageUnavailable unless outputs can be written now."""

    def presigned_url(self, job_id: str, name: str, ttl_s: int) -> Optional[str]:
        """A URL that fetches the output without the API until `ttl_s` from now; None for a store the API serves."""
        return None

    @staticmethod
    def _checked(job_id: str, name: Optional[str] = None) -> None:
        if not SAFE_NAME.match(job_id):
            raise ValueError(f"bad job id {job_id!r}")
        if name is not None and not SAFE_NAME.match(name):
            raise ValueError(f"bad file name {name!r}")

    @staticmethod
    def _checked_digest(digest: str) -> None:
        if not DIGEST.match(digest):
            raise ValueError(f"bad input digest {digest!r}")


class LocalStore(BlobStore):
    """A folder shared by every process (RESULTS_DIR): `<root>/<job id>/<name>`, inputs in `<root>/_inputs/`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _folder(self, job_id: str) -> Path:
        self._checked(job_id)
        return self.root / job_id

    def save(self, job_id: str, name: str, data: bytes) -> Path:
        """Write atomically (temp file + rename) so a reader never sees half a file."""
        if not SAFE_NAME.match(name):
            raise ValueError(f"bad file name {name!r}")
        folder = self._folder(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        _write_atomic(path, data)
        return path

    def path(self, job_id: str, name: str) -> Optional[Path]:
        if not SAFE_NAME.match(job_id) or not SAFE_NAME.match(name):
            return None
        path = self._folder(job_id) / name
        return path if path.is_file() else None

    def read(self, job_id: str, name: str) -> Optional[bytes]:
        path = self.path(job_id, name)
        return path.read_bytes() if path else None

    def exists(self, job_id: str, name: str) -> bool:
        return self.path(job_id, name) is not None

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self._folder(job_id), ignore_errors=True)

    # ---- inputs, stored once by content so that queued work refers to them instead of carrying them ----
    def save_input(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        folder = self.root / INPUTS
        path = folder / digest
        if path.is_file():
            os.utime(path)  # used again: the sweep counts its age from now (a queued job still needs it)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, data)
        return digest

    def load_input(self, digest: str) -> bytes:
        self._checked_digest(digest)
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


# ---- backends by URL scheme --------------------------------------------------------------------------
Opener = Callable[[str, Any], BlobStore]  # (STORAGE_URL, settings) -> the store
URL_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
LOCAL = "file"  # the scheme of a plain folder path (RESULTS_DIR)


@dataclass
class StoreBackend:
    scheme: str
    opener: Union[Opener, str]  # the function, or "module:function" imported when a URL of the scheme is opened
    check_url: Optional[Callable[[str], Any]] = None  # raises ValueError naming STORAGE_URL on a bad URL (no import)

    def open(self, url: str, settings) -> BlobStore:
        if isinstance(self.opener, str):
            module, _, attr = self.opener.partition(":")
            self.opener = getattr(importlib.import_module(module), attr)
        return self.opener(url, settings)


_STORE_BACKENDS: dict[str, StoreBackend] = {}


def register_store_backend(scheme: str, opener: Union[Opener, str], check_url: Optional[Callable[[str], Any]] = None) -> None:
    """Open URLs `scheme://...` with `opener` (a function, or "module:function" to import it only when such a
    URL is opened); `check_url` validates a URL of the scheme without importing the backend."""
    _STORE_BACKENDS[scheme.lower()] = StoreBackend(scheme.lower(), opener, check_url)


def unregister_store_backend(scheme: str) -> None:
    _STORE_BACKENDS.pop(scheme.lower(), None)


def store_schemes() -> tuple[str, ...]:
    return tuple(_STORE_BACKENDS)


def url_scheme(url: str) -> str:
    """The scheme of a storage URL, lower case; a path without one is a local folder (`file`)."""
    match = URL_SCHEME.match(url.strip())
    return match["scheme"].lower() if match else LOCAL


def store_backend(url: str) -> StoreBackend:
    """The backend registered for the URL's scheme; ValueError naming STORAGE_URL and the registered schemes."""
    scheme = url_scheme(url)
    backend = _STORE_BACKENDS.get(scheme)
    if backend is None:
        raise ValueError(f"STORAGE_URL={url!r}: unknown storage scheme {scheme!r}; registered: "
                         f"{', '.join(f'{name}://' for name in _STORE_BACKENDS)}")
    return backend


def check_storage_url(url: str) -> str:
    """STORAGE_URL when its scheme is registered and its backend accepts it (nothing is imported or reached)."""
    backend = store_backend(url)
    if backend.check_url is not None:
        backend.check_url(url.strip())
    return url


def open_store(settings) -> BlobStore:
    """The store the settings name (every process builds its store here, so a backend is chosen once): the
    backend of STORAGE_URL's scheme, else the folder RESULTS_DIR."""
    url = settings.storage_url or str(settings.results_dir)
    return store_backend(url).open(url, settings)


def local_path(url: str) -> str:
    """The folder of `file:///path/to/folder` (or of a plain path: RESULTS_DIR)."""
    if not url.lower().startswith("file://"):
        return url
    if not url[len("file://"):]:
        raise ValueError(f"STORAGE_URL={url!r}: expected file:///path/to/folder")
    return url[len("file://"):]


def _open_local(url: str, settings) -> BlobStore:
    return LocalStore(local_path(url))


register_store_backend(LOCAL, _open_local, check_url=local_path)
register_store_backend("s3", "core.s3_store:open_s3_store", check_url=parse_url)  # boto3 loads only here


def wait_until_writable(store: BlobStore, log) -> None:
    """Block until the store takes writes, saying why not every time it does not (a worker that cannot
    store outputs takes no jobs: they wait in the queue for the storage to come back)."""
    delay = 1.0
    while True:
        try:
            store.check()
            return
        except StorageUnavailable as exc:
            log.error("not taking jobs until the storage answers: %s", exc)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


class StorageGate:
    """Whether the store takes writes, asked at most every `ok_ttl_s` while it does and every `fail_ttl_s`
    while it does not (a submission should not wait for a dead storage server each time)."""

    def __init__(self, store: BlobStore, ok_ttl_s: float = 10.0, fail_ttl_s: float = 2.0):
        self.store, self.ok_ttl_s, self.fail_ttl_s = store, ok_ttl_s, fail_ttl_s
        self._until = 0.0
        self._error: Optional[StorageUnavailable] = None

    def held(self) -> bool:
        """Without asking the store: True while the last answer holds and it was yes; raises it while it
        holds and was no; False when the store is to be asked again (`ensure`, which may block)."""
        if time.monotonic() >= self._until:
            return False
        error = self._error
        if error is not None:
            raise error
        return True

    def ensure(self) -> None:
        """`held`, asking the store when its last answer has lapsed."""
        if self.held():
            return
        now = time.monotonic()
        try:
            self.store.check()
            self._error, self._until = None, now + self.ok_ttl_s
        except StorageUnavailable as exc:
            self._error, self._until = exc, now + self.fail_ttl_s
            raise


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
