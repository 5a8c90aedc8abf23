"""The caller's jobs and batches, newest first: one Redis sorted set per tenant and kind, paged by an opaque cursor.

Entries are scored by submission time; they outlive nothing (records that expired or were deleted are skipped
and dropped from the index when met)."""

from __future__ import annotations

import base64
import json
import math
import time
from typing import Callable, Iterator, Optional, TypeVar

from redis import Redis

from .errors import ApiError

T = TypeVar("T")
SCAN_CHUNK = 100
MAX_SCANNED = 2000  # entries looked at for one page when filters skip many


def index_key(prefix: str, kind: str, tenant: str) -> str:
    return f"{prefix}:index:{kind}:{tenant}"


def encode_cursor(score: float, member: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([score, member]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        score, member = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        score = float(score)
        if not math.isfinite(score):  # NaN or infinity: never a submission time, and Redis refuses NaN
            raise ValueError(score)
        return score, str(member)
    except Exception:
        raise ApiError(422, "invalid_request", "cursor: not a cursor this API gave; send next_cursor as it came",
                       fields=[{"field": "cursor", "message": "not a cursor this API gave"}]) from None


def add(pipe, prefix: str, kind: str, tenant: str, ids: list[str], ttl_s: int) -> None:
    """Index new ids (inside the caller's MULTI/EXEC pipeline)."""
    key, now = index_key(prefix, kind, tenant), time.time()
    pipe.zadd(key, {member: now + i * 1e-6 for i, member in enumerate(ids)})  # keeps a batch's items in order
    pipe.zremrangebyscore(key, "-inf", now - ttl_s)  # entries whose records have expired
    pipe.expire(key, ttl_s)


def remove(redis: Redis, prefix: str, kind: str, tenant: str, member: str) -> None:
    redis.zrem(index_key(prefix, kind, tenant), member)


def _entries(redis: Redis, key: str, after: Optional[tuple[float, str]]) -> Iterator[tuple[str, float]]:
    """(member, score) newest first, strictly after the cursor (score desc, then member desc as Redis orders)."""
    top = "+inf" if after is None else after[0]
    offset = 0
    while True:
        chunk = redis.zrevrangebyscore(key, top, "-inf", start=offset, num=SCAN_CHUNK, withscores=True)
        if not chunk:
            return
        for raw, score in chunk:
            member = raw.decode()
            if after is not None and score == after[0] and member >= after[1]:
                continue
            yield member, score
        offset += len(chunk)


def page(
    redis: Redis, prefix: str, kind: str, tenant: str, limit: int, cursor: Optional[str],
    load: Callable[[str], Optional[T]], keep: Callable[[T], bool],
) -> tuple[list[T], Optional[str]]:
    """Up to `limit` loaded items that `keep` accepts, and the cursor of the next page (None at the end)."""
    key = index_key(prefix, kind, tenant)
    found: list[T] = []
    stale: list[str] = []
    try:
        return _fill(redis, key, limit, cursor, load, keep, found, stale)
    finally:
        if stale:
            redis.zrem(key, *stale)  # expired or deleted (after the scan, so offsets stayed put)


def _fill(redis, key, limit, cursor, load, keep, found, stale):
    scanned = 0
    last = None
    for member, score in _entries(redis, key, decode_cursor(cursor) if cursor else None):
        scanned += 1
        last = (score, member)
        item = load(member)
        if item is None:
            stale.append(member)
        elif keep(item):
            found.append(item)
            if len(found) == limit:
                break
        if scanned >= MAX_SCANNED:
            break
    else:
        return found, None  # the index ran out
    return found, encode_cursor(*last) if last else None
