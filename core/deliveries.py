"""The webhook delivery log: every delivery of a job's or batch's webhook with its attempts, so an owner
can see what was sent and how the receiver answered, and send one again (GET .../deliveries, POST
.../deliveries/{id}/redeliver). Written when a delivery is queued and after each attempt; kept as long as
job records (JOB_TTL_S). The body sent is kept in the blob store beside the job's outputs (`body_name`).

A record is a small hash (a listpack): its id is in its key, not in a field, times are integer milliseconds,
and an attempt's status code and error are left out while there is none (records of earlier releases, with
an `id` field and times in float seconds, read the same)."""

from __future__ import annotations

import time
from typing import Optional

from redis import Redis

MAX_LISTED = 200  # the newest deliveries of one job or batch that a listing returns


def now_ms() -> int:
    return int(time.time() * 1000)


class DeliveryLog:
    def __init__(self, redis: Redis, prefix: str, ttl_s: int):
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s

    def _record_key(self, delivery_id: str) -> str:
        return f"{self.prefix}:delivery:{delivery_id}"

    def _owner_key(self, owner: str, owner_id: str) -> str:
        return f"{self.prefix}:deliveries:{owner}:{owner_id}"

    def claim(self, delivery_id: str) -> bool:
        """Whether this is the first time the delivery is queued (its record did not exist): a job run twice
        (its worker killed) queues each event once."""
        key = self._record_key(delivery_id)
        with self.redis.pipeline() as pipe:
            pipe.hsetnx(key, "created_at", now_ms())
            pipe.expire(key, self.ttl_s)
            return bool(pipe.execute()[0])

    def queued(self, owner: str, owner_id: str, delivery_id: str, event: str, body: Optional[str] = None) -> None:
        """A delivery was queued (again, for a redelivery: its attempts go on counting). The body is kept
        here only when the blob store could not take it (`body_name`)."""
        now = now_ms()
        key = self._record_key(delivery_id)
        with self.redis.pipeline() as pipe:
            pipe.hsetnx(key, "created_at", now)
            pipe.hset(key, mapping={"owner": owner, "owner_id": owner_id, "event": event,
                                    "status": "pending", **({"body": body} if body is not None else {})})
            pipe.hsetnx(key, "attempts", 0)
            pipe.expire(key, self.ttl_s)
            pipe.zadd(self._owner_key(owner, owner_id), {delivery_id: now / 1000}, nx=True)
            pipe.expire(self._owner_key(owner, owner_id), self.ttl_s)
            pipe.execute()

    def attempted(self, delivery_id: str, status: str, status_code: Optional[int] = None,
                  error: Optional[str] = None, attempt: bool = True) -> None:
        """The outcome of an attempt: delivered, retrying, failed (retries used up), refused (an unsafe
        address) or skipped (no webhook any more)."""
        key = self._record_key(delivery_id)
        with self.redis.pipeline() as pipe:
            if attempt:
                pipe.hincrby(key, "attempts", 1)
            pipe.hset(key, mapping={"status": status, "last_attempt_at": now_ms(),
                                    **({"last_status_code": status_code} if status_code is not None else {}),
                                    **({"last_error": error} if error else {})})
            # this attempt had no status code or error: not the previous attempt's either
            absent = [name for name, value in (("last_status_code", status_code), ("last_error", error))
                      if value in (None, "")]
            if absent:
                pipe.hdel(key, *absent)
            pipe.expire(key, self.ttl_s)
            pipe.execute()

    def get(self, owner: str, owner_id: str, delivery_id: str) -> Optional[dict]:
        """The record (body included) of one delivery of this owner; None when there is none."""
        raw = self.redis.hgetall(self._record_key(delivery_id))
        record = {k.decode(): v.decode() for k, v in raw.items()}
        if not record or record.get("owner") != owner or record.get("owner_id") != owner_id:
            return None
        return {**record, "id": delivery_id}

    def list(self, owner: str, owner_id: str) -> list[dict]:
        """The owner's deliveries, newest first, without their bodies."""
        ids = [i.decode() for i in self.redis.zrevrange(self._owner_key(owner, owner_id), 0, MAX_LISTED - 1)]
        with self.redis.pipeline() as pipe:
            for delivery_id in ids:
                pipe.hgetall(self._record_key(delivery_id))
            found = pipe.execute()
        return [view({**{k.decode(): v.decode() for k, v in raw.items()}, "id": delivery_id})
                for delivery_id, raw in zip(ids, found) if raw]


def body_name(delivery_id: str) -> str:
    """The file, in the job's (or batch's) folder of the blob store, of the body a delivery sent: kept beside
    the outputs, for a redelivery, so that the Redis records of a job do not grow with its input echo."""
    return f"webhook-{delivery_id}.json"


def view(record: dict) -> dict:
    """A delivery as its owner sees it (times as ISO 8601 UTC; no body)."""
    def iso(value: str) -> Optional[str]:
        if not value:
            return None
        ms = int(value) if value.isdigit() else int(round(float(value) * 1000))  # float seconds: earlier releases
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"

    code = record.get("last_status_code", "")
    return {
        "id": record["id"],
        "event": record.get("event", ""),
        "status": record.get("status", "pending"),
        "attempts": int(record.get("attempts", 0)),
        "last_status_code": int(code) if code else None,
        "last_error": record.get("last_error") or None,
        "created_at": iso(record.get("created_at", "")),
        "last_attempt_at": iso(record.get("last_attempt_at", "")),
    }

