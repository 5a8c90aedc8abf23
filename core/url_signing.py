"""HMAC-signed, expiring URLs for job files. The gateway checks them; a job's JSON carries them (in API
answers and in webhook bodies the workers send)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Optional

from redis import Redis

from .connection import Keys


class UrlSigner:
    """HMAC-signed, expiring URLs for job files, so a webhook receiver can fetch results without a key.
    The signing secret is URL_SIGNING_SECRET, or one made once and kept in Redis for every process."""

    def __init__(self, redis: Redis, keys: Keys, secret: Optional[str] = None):
        self.redis = redis
        self.redis_key = keys.url_signing_secret
        self._secret = secret.encode() if secret else None

    @property
    def secret(self) -> bytes:
        if self._secret is None:
            # Read first: a process that starts while Redis refuses writes (full) still signs URLs.
            self._secret = self.redis.get(self.redis_key)
        if self._secret is None:
            self.redis.set(self.redis_key, secrets.token_hex(32), nx=True)
            self._secret = self.redis.get(self.redis_key)
        return self._secret

    def signature(self, job_id: str, name: str, expires: int) -> str:
        message = f"{job_id}/{name}/{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def query(self, job_id: str, name: str, ttl_s: int) -> str:
        expires = int(time.time()) + ttl_s
        return f"expires={expires}&sig={self.signature(job_id, name, expires)}"

    def valid(self, job_id: str, name: str, expires: Optional[int], sig: Optional[str]) -> bool:
        if expires is None or sig is None or expires < time.time():
            return False
        # bytes: compare_digest refuses str with non-ASCII characters (a forged `sig=%C2%90` is just wrong)
        return hmac.compare_digest(self.signature(job_id, name, expires).encode(), sig.encode("utf-8", "replace"))
