"""Where a worker's checkpoint comes from: a local folder, an S3 prefix or a Hugging Face Hub repo.

    /models/onediffusion               a folder in the released layout, used as it is
    s3://bucket/prefix                 every object under the prefix (endpoint, region and credentials
                                       come from the usual AWS_* variables, e.g. AWS_ENDPOINT_URL_S3)
    hf://owner/name[@revision]         a Hub repo (branch, tag or commit), through huggingface_hub's cache

A remote checkpoint is fetched once into a node-local cache folder and loaded from there, so no shared
(ReadWriteMany) model volume is needed. Workers of one node that start together share one fetch: a
file lock per checkpoint makes the others wait, then find it complete. An S3 fetch is verified (every
object's size, and its ETag where that is an MD5) before it is published, by renaming a finished
folder into place: a folder that exists is complete. Its name is a digest of the listing (keys, sizes,
ETags), so a checkpoint replaced in the bucket lands in a new folder and a worker that is loading the
old one is not disturbed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional

from .errors import CheckpointError  # not .nextdit: fetching needs no torch

log = logging.getLogger(__name__)

S3_SCHEME = "s3://"
HUB_SCHEME = "hf://"
MANIFEST = ".onediffusion-manifest.json"  # in a published S3 snapshot: what was fetched and verified
LATEST = "latest"  # in an S3 checkpoint's cache folder: the newest published snapshot (used when S3 is away)
# What a worker needs from a Hub repo in the released layout (model/loading.py); other files are skipped.
HUB_PATTERNS = ["model_index.json", "transformer/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*"]
_CHUNK = 8 * 1024 * 1024


class CheckpointFetchError(CheckpointError):
    """A remote checkpoint could not be fetched or did not verify; the message says which and why."""


def resolve_checkpoint(spec: str, cache_dir: str | Path) -> Path:
    """The local folder to load `spec` (ONEDIFFUSION_MODEL) from, fetching it first if it is remote."""
    if spec.startswith(S3_SCHEME):
        return fetch_s3(S3Location.parse(spec), Path(cache_dir))
    if spec.startswith(HUB_SCHEME):
        return fetch_hub(HubLocation.parse(spec), Path(cache_dir))
    return Path(spec)


# ---- locations -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # without a trailing slash; "" = the whole bucket

    @classmethod
    def parse(cls, uri: str) -> "S3Location":
        rest = uri[len(S3_SCHEME):]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise CheckpointFetchError(f"ONEDIFFUSION_MODEL={uri!r}: expected s3://bucket/prefix")
        return cls(bucket, prefix.strip("/"))

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}"

    @property
    def key_prefix(self) -> str:
        """Listing prefix: `prefix/`, so `models/a` does not also take `models/ab/...`."""
        return f"{self.prefix}/" if self.prefix else ""


@dataclass(frozen=True)
class HubLocation:
    repo_id: str
    revision: Optional[str]  # None = the repo's default branch

    @classmethod
    def parse(cls, uri: str) -> "HubLocation":
        rest = uri[len(HUB_SCHEME):]
        repo_id, _, revision = rest.partition("@")
        parts = repo_id.strip("/").split("/")
        if len(parts) != 2 or not all(parts):
            raise CheckpointFetchError(f"ONEDIFFUSION_MODEL={uri!r}: expected hf://owner/name or hf://owner/name@revision")
        return cls("/".join(parts), revision or None)

    @property
    def uri(self) -> str:
        return f"{HUB_SCHEME}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


# ---- the node lock ---------------------------------------------------------------------------------
@contextmanager
def node_lock(cache_dir: Path, name: str) -> Iterator[None]:
    """One fetch of `name` at a time on this node (an OS file lock: released if its holder dies)."""
    from filelock import FileLock, Timeout

    locks = cache_dir / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(locks / (hashlib.sha256(name.encode()).hexdigest()[:24] + ".lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another worker on this node is fetching %s; waiting for it", name)
        started = time.monotonic()
        lock.acquire()
        log.info("waited %.1f s for %s", time.monotonic() - started, name)
    try:
        yield
    finally:
        lock.release()


# ---- S3 --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class S3Object:
    key: str
    path: str  # relative to the checkpoint prefix, with forward slashes
    size: int
    etag: str  # without quotes


def s3_client():
    """boto3's S3 client, configured from the environment (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL for
    MinIO and the like, AWS_REGION, credentials from the variables, a profile or the instance role)."""
    import boto3

    return boto3.client("s3")


def list_checkpoint(client, location: S3Location) -> list[S3Object]:
    objects = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=location.bucket, Prefix=location.key_prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            relative = key[len(location.key_prefix):]
            if not relative or relative.endswith("/"):
                continue  # "folder" marker objects
            parts = PurePosixPath(relative).parts
            if any(part in ("..", ".") for part in parts) or relative.startswith("/"):
                raise CheckpointFetchError(f"{location.uri}: refusing object key {key!r} (it leaves the checkpoint folder)")
            objects.append(S3Object(key, relative, int(item["Size"]), item["ETag"].strip('"')))
    return sorted(objects, key=lambda o: o.path)


def listing_digest(objects: list[S3Object]) -> str:
    text = json.dumps([[o.path, o.size, o.etag] for o in objects])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_md5s(path: Path, part_size: Optional[int]) -> list[bytes]:
    """MD5 of the whole file, or of each `part_size` part (an S3 multipart upload's ETag is the MD5 of
    the parts' MD5s, suffixed with their count)."""
    digests, current, filled = [], hashlib.md5(), 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK if part_size is None else min(_CHUNK, part_size - filled)):
            current.update(chunk)
            filled += len(chunk)
            if part_size is not None and filled == part_size:
                digests.append(current.digest())
                current, filled = hashlib.md5(), 0
    if filled or not digests:
        digests.append(current.digest())
    return digests


def verify_object(client, location: S3Location, obj: S3Object, path: Path) -> None:
    """Size always; the ETag where S3 made it from MD5s (not for SSE-KMS/SSE-C objects, whose ETag is
    opaque: those are checked by size, and the log says so)."""
    size = path.stat().st_size
    if size != obj.size:
        raise CheckpointFetchError(f"{location.uri}: {obj.path} came as {size} bytes, the bucket lists {obj.size}")
    head = client.head_object(Bucket=location.bucket, Key=obj.key, PartNumber=1)
    encryption = head.get("ServerSideEncryption")
    if encryption == "aws:kms" or head.get("SSECustomerAlgorithm"):
        log.info("%s: %s is encrypted with %s; checked by size only", location.uri, obj.path, encryption or "SSE-C")
        return
    if "-" in obj.etag:
        count = int(obj.etag.rsplit("-", 1)[1])
        part_size = int(head["ContentLength"])  # part 1's size: every part but the last has it
        digests = _file_md5s(path, part_size)
        actual = f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"
        if len(digests) != count:
            actual = f"{len(digests)} parts of {part_size} bytes (the bucket's object has {count})"
    else:
        actual = _file_md5s(path, None)[0].hex()
    if actual != obj.etag:
        raise CheckpointFetchError(f"{location.uri}: {obj.path} does not match its ETag {obj.etag} (got {actual}); "
                                   "the download is corrupt or the object changed while it was fetched")


def _latest_snapshot(root: Path) -> Optional[Path]:
    try:
        snapshot = root / (root / LATEST).read_text().strip()
    except OSError:
        return None
    return snapshot if (snapshot / MANIFEST).is_file() else None


def fetch_s3(location: S3Location, cache_dir: Path, client=None) -> Path:
    """The checkpoint under `location`, fetched into `cache_dir/s3/BUCKET/PREFIX/DIGEST` unless there."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = client or s3_client()
    root = cache_dir / "s3" / location.bucket / (location.prefix or "_bucket")
    try:
        objects = list_checkpoint(client, location)
    except (BotoCoreError, ClientError) as exc:
        cached = _latest_snapshot(root)
        if cached is None:
            raise CheckpointFetchError(f"cannot list {location.uri}: {exc}") from exc
        log.warning("cannot list %s (%s); loading the copy fetched before: %s", location.uri, exc, cached)
        return cached
    if not objects:
        raise CheckpointFetchError(f"{location.uri} holds no objects (expected a checkpoint in the released layout)")
    snapshot = root / listing_digest(objects)
    if (snapshot / MANIFEST).is_file():
        return snapshot
    with node_lock(cache_dir, location.uri):
        if not (snapshot / MANIFEST).is_file():  # not fetched by another worker while this one waited
            try:
                _download(client, location, objects, snapshot)
            except (BotoCoreError, ClientError, OSError) as exc:
                raise CheckpointFetchError(f"cannot fetch {location.uri}: {exc}") from exc
        (root / LATEST).write_text(snapshot.name)
    return snapshot


def _download(client, location: S3Location, objects: list[S3Object], snapshot: Path) -> None:
    """Into `snapshot.partial`, one verified file at a time (a file under its final name there is
    verified, so a fetch cut off midway resumes), then renamed into place."""
    partial = snapshot.with_name(snapshot.name + ".partial")
    started, fetched, total = time.monotonic(), 0, sum(o.size for o in objects)
    log.info("fetching %s (%d files, %.1f MB) into %s", location.uri, len(objects), total / 1e6, snapshot)
    for obj in objects:
        target = partial / obj.path
        if target.is_file() and target.stat().st_size == obj.size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(target.name + ".download")
        client.download_file(location.bucket, obj.key, str(temporary))
        try:
            verify_object(client, location, obj, temporary)
        except CheckpointFetchError:
            temporary.unlink(missing_ok=True)
            raise
        os.replace(temporary, target)
        fetched += obj.size
    manifest = {"source": location.uri, "objects": [[o.path, o.size, o.etag] for o in objects]}
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if snapshot.exists():  # a folder without a manifest: left by an older, interrupted layout; replace it
        shutil.rmtree(snapshot)
    os.replace(partial, snapshot)
    seconds = time.monotonic() - started
    log.info("fetched %s: %.1f MB in %.1f s", location.uri, fetched / 1e6, seconds,
             extra={"source": location.uri, "bytes": fetched, "seconds": round(seconds, 2)})


# ---- the Hugging Face Hub --------------------------------------------------------------------------
def fetch_hub(location: HubLocation, cache_dir: Path) -> Path:
    """The repo's snapshot in huggingface_hub's cache under `cache_dir/hub` (downloaded where missing;
    HF_HUB_OFFLINE=1 uses only what the cache holds; HF_TOKEN for gated or private repos)."""
    from huggingface_hub import snapshot_download

    with node_lock(cache_dir, location.uri):
        started = time.monotonic()
        try:
            path = snapshot_download(
                location.repo_id, revision=location.revision, cache_dir=str(cache_dir / "hub"), allow_patterns=HUB_PATTERNS,
            )
        except Exception as exc:  # huggingface_hub's errors (offline cache miss, 404, auth) and the network's
            raise CheckpointFetchError(f"cannot fetch {location.uri}: {type(exc).__name__}: {exc}") from exc
    log.info("checkpoint %s at %s (%.1f s)", location.uri, path, time.monotonic() - started)
    return Path(path)
