"""API keys bound to tenants, stored only as hashes.

A key looks like `od_<key id>_<secret>`. Redis keeps, per key id, the tenant, a name, an optional
priority and the SHA-256 of the secret (the secret is 256 random bits, so a plain hash is enough); the
key itself is shown once, when it is created.

A key's priority is both the default and the ceiling of its requests' `priority` (which orders a tenant's
own queued jobs; see `resolve_priority`): a key without one defaults to 0 and may ask for any priority.

Every `/v1` route needs `Authorization: Bearer <key>` unless AUTH_DISABLED is set, in which case every
caller is the tenant `public` (as a key without a priority); `app/callers.py` finds the caller of a request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Optional

from redis import Redis

from core.connection import Keys
from core.queueing import MAX_PRIORITY

PUBLIC_TENANT = "public"
KEY_PREFIX = "od_"
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # whole-string match: `$` would let a final newline through


@dataclass
class ApiKey:
    key_id: str
    tenant: str
    name: str
    created_at: float
    revoked_at: Optional[float] = None
    priority: Optional[int] = None  # the default and the most its requests may ask for; None: 0, up to MAX_PRIORITY


def check_priority(priority: Optional[int]) -> Optional[int]:
    """A key's priority as given (None: none); ValueError outside 0..MAX_PRIORITY."""
    if priority is None:
        return None
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"a key's priority is an integer from 0 to {MAX_PRIORITY}")
    return priority


def resolve_priority(requested: Optional[int], key_priority: Optional[int]) -> int:
    """The priority a request runs at: what it asked for, else its key's (0 for a key without one).
    ValueError when it asks for more than its key's priority (the key's ceiling)."""
    if requested is None:
        return key_priority or 0
    ceiling = MAX_PRIORITY if key_priority is None else key_priority
    if requested > ceiling:
        raise ValueError(f"{requested} is more than this API key allows: its maximum priority is {ceiling}")
    return requested


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    def __init__(self, redis: Redis, keys: Keys):
        self.redis = redis
        self.hash_key = f"{keys.prefix}:apikeys"

    def create(self, tenant: str, name: str = "", priority: Optional[int] = None) -> tuple[str, ApiKey]:
        """A new key for `tenant` (`priority`: its requests' default and most, see `resolve_priority`):
        returns (the full key, shown only now; its record)."""
        if not TENANT_NAME.fullmatch(tenant or ""):
            raise ValueError("a tenant name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        if tenant.lower() == PUBLIC_TENANT:
            raise ValueError(f"{PUBLIC_TENANT!r} is reserved (every caller is that tenant when AUTH_DISABLED is set)")
        priority = check_priority(priority)
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        record = {"tenant": tenant, "name": name, "created_at": time.time(), "revoked_at": None, "sha256": _digest(secret)}
        if priority is not None:
            record["priority"] = priority
        self.redis.hset(self.hash_key, key_id, json.dumps(record))
        return f"{KEY_PREFIX}{key_id}_{secret}", self._record(key_id, record)

    @staticmethod
    def _record(key_id: str, data: dict) -> ApiKey:
        return ApiKey(key_id, data["tenant"], data.get("name", ""), data["created_at"], data.get("revoked_at"),
                      data.get("priority"))

    def list(self) -> list[ApiKey]:
        items = self.redis.hgetall(self.hash_key)
        return sorted((self._record(k.decode(), json.loads(v)) for k, v in items.items()), key=lambda r: r.created_at)

    def revoke(self, key_id: str) -> bool:
        raw = self.redis.hget(self.hash_key, key_id)
        if raw is None:
            return False
        data = json.loads(raw)
        data["revoked_at"] = data.get("revoked_at") or time.time()
        self.redis.hset(self.hash_key, key_id, json.dumps(data))
        return True

    @staticmethod
    def split(presented: str) -> Optional[tuple[str, str]]:
        """(key id, secret) of a presented key in the key's form; None when it is not one."""
        if not presented.startswith(KEY_PREFIX):
            return None
        key_id, _, secret = presented[len(KEY_PREFIX):].partition("_")
        if not key_id or not secret:
            return None
        return key_id, secret

    digest = staticmethod(_digest)  # what the record keeps of a secret

    def verified(self, key_id: str, raw: Optional[bytes], secret_sha256: str) -> Optional[ApiKey]:
        """The key's record when `raw` (its stored record, None when there is none) holds this digest of the
        presented secret (`digest`) and no revocation; else None."""
        if raw is None:
            return None
        data = json.loads(raw)
        if not hmac.compare_digest(data["sha256"], secret_sha256) or data.get("revoked_at"):
            return None
        return self._record(key_id, data)

    def authenticate(self, presented: str) -> Optional[ApiKey]:
        """The key's record when `presented` is a valid, unrevoked key; else None. (A submission looks its
        key up inside its precheck instead: app/callers.py `admit`.)"""
        parts = self.split(presented)
        if parts is None:
            return None
        key_id, secret = parts
        return self.verified(key_id, self.redis.hget(self.hash_key, key_id), _digest(secret))
