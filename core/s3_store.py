"""Inputs and outputs in S3-compatible object storage (`STORAGE_URL=s3://bucket/prefix`).

Reached with boto3 and the standard AWS environment variables: AWS_ENDPOINT_URL_S3 (MinIO, Ceph, R2, ...),
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or any source boto3 knows: a profile, a web identity, an
instance role), AWS_DEFAULT_REGION. Layout: `<prefix>/<job id>/<name>` for outputs, `<prefix>/_inputs/<sha256>`
for inputs. Outputs are fetched from presigned GET URLs; expiry is the bucket's lifecycle rule (see docs/operations.md).
"""

from __future__ import annotations

import hashlib
import logging
from functools import lru_cache
from typing import Optional

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .storage import INPUTS, MEDIA_TYPES, BlobStore, StorageUnavailable, parse_url

log = logging.getLogger(__name__)

MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4's longest presigned URL
PROBE = "_probe"  # the object `check` writes
MISSING = ("NoSuchKey", "404", "NotFound")


class S3Store(BlobStore):
    redirects = True

    def __init__(self, bucket: str, prefix: str, client, presigner=None, url: str = ""):
        self.bucket, self.prefix, self.client = bucket, prefix, client
        self.presigner = presigner or client  # signs for the endpoint that clients reach (may differ)
        self.url = url or f"s3://{bucket}/{prefix}"

    @classmethod
    def from_url(cls, url: str, public_endpoint: Optional[str] = None, timeout_s: float = 10.0) -> "S3Store":
        bucket, prefix = parse_url(url)
        config = Config(
            signature_version="s3v4",  # SigV4 everywhere (SigV2 presigned URLs are refused by newer regions and R2)
            connect_timeout=timeout_s, read_timeout=timeout_s,
            retries={"mode": "standard", "max_attempts": 3},
        )
        session = boto3.session.Session()
        client = session.client("s3", config=config)  # endpoint: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS
        presigner = session.client("s3", config=config, endpoint_url=public_endpoint) if public_endpoint else client
        return cls(bucket, prefix, client, presigner, url)

    # ---- keys and errors ----
    def _key(self, job_id: str, name: Optional[str] = None) -> str:
        self._checked(job_id, name)
        return f"{self.prefix}{job_id}/{name}" if name else f"{self.prefix}{job_id}/"

    def _unavailable(self, action: str, exc: Exception) -> StorageUnavailable:
        endpoint = self.client.meta.endpoint_url
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                why = f"bucket {self.bucket!r} does not exist at {endpoint}: create it, or fix STORAGE_URL"
            elif code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"):
                why = (f"bucket {self.bucket!r} at {endpoint} refused it ({code}): check the credentials "
                       "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the bucket's policy")
            else:
                why = f"bucket {self.bucket!r} at {endpoint} answered {code or 'an error'}"
        else:
            why = f"object storage at {endpoint} is unreachable ({type(exc).__name__}): check AWS_ENDPOINT_URL_S3"
        return StorageUnavailable(f"could not {action} in STORAGE_URL={self.url}: {why}")

    @staticmethod
    def _missing(exc: Exception) -> bool:
        """An answer that the object is not there (not a failure to ask)."""
        return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code", "") in MISSING

    # ---- outputs ----
    def save(self, job_id: str, name: str, data: bytes) -> None:
        """One PUT: S3 shows an object whole or not at all."""
        key = self._key(job_id, name)
        media_type = MEDIA_TYPES.get(name.rsplit(".", 1)[-1].lower(), "application/octet-stream")
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=media_type)
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable(f"store output {job_id}/{name}", exc) from exc

    def read(self, job_id: str, name: str) -> Optional[bytes]:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(job_id, name))["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            if self._missing(exc):
                return None
            raise self._unavailable(f"read output {job_id}/{name}", exc) from exc

    def exists(self, job_id: str, name: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(job_id, name))
            return True
        except (BotoCoreError, ClientError) as exc:
            if self._missing(exc):
                return False
            raise self._unavailable(f"look up output {job_id}/{name}", exc) from exc

    def delete(self, job_id: str) -> None:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(job_id))
            for page in pages:
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable(f"delete the outputs of {job_id}", exc) from exc

    def presigned_url(self, job_id: str, name: str, ttl_s: int) -> str:
        """Signed here, offline (no request to the storage)."""
        return self.presigner.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(job_id, name)},
            ExpiresIn=max(1, min(int(ttl_s), MAX_PRESIGN_S)),
        )

    # ---- inputs ----
    def save_input(self, data: bytes) -> str:
        """Written even when present: the PUT restarts the object's lifecycle age (a queued job may need it)."""
        digest = hashlib.sha256(data).hexdigest()
        try:
            self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}{INPUTS}/{digest}", Body=data,
                                   ContentType="application/octet-stream")
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable("store an input image", exc) from exc
        return digest

    def load_input(self, digest: str) -> bytes:
        self._checked_digest(digest)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}{INPUTS}/{digest}")["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            if self._missing(exc):
                raise FileNotFoundError(f"input {digest} is not in STORAGE_URL={self.url} (expired?)") from None
            raise self._unavailable(f"read input {digest}", exc) from exc

    def check(self) -> None:
        """A small PUT: finds a missing bucket, bad credentials, a refused write and a dead endpoint alike."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}{PROBE}", Body=b"ok")
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable("write", exc) from exc


def open_s3_store(url: str, settings) -> S3Store:
    """The store of `STORAGE_URL=s3://...` (the `s3` backend registered in `storage.py`): one per
    configuration and process."""
    return _s3_store(url, settings.storage_public_endpoint, float(settings.storage_timeout_s))


@lru_cache(maxsize=4)
def _s3_store(url: str, public_endpoint: Optional[str], timeout_s: float) -> S3Store:
    return S3Store.from_url(url, public_endpoint=public_endpoint, timeout_s=timeout_s)
