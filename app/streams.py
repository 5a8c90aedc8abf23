"""Event streams (SSE) that stay cheap: a bound on open streams per API key and per tenant (429 past it),
and one poll of a job's state per API process, shared by every stream open on that job."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator, Optional

from fastapi.concurrency import run_in_threadpool
from redis import Redis
from redis.exceptions import OutOfMemoryError, RedisError

from core.job_store import JobNotFound
from core.views import TERMINAL, JobView

from .errors import ApiError

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25
SLOT_REFRESH_S = 15  # an open stream renews its slot this often ...
SLOT_STALE_S = 60  # ... and a slot not renewed this long (an API process that died) is freed

# Prune stale slots, check both bounds, take a slot in both sets: one atomic step.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
if tonumber(ARGV[4]) > 0 and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 1 end
if tonumber(ARGV[5]) > 0 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 2 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return 0
"""


class StreamSlots:
    """Open streams per API key and per tenant, counted in Redis so every API replica sees them."""

    def __init__(self, redis: Redis, prefix: str, per_key: int, per_tenant: int):
        self.redis = redis
        self.prefix = prefix
        self.per_key = per_key
        self.per_tenant = per_tenant
        self._take = redis.register_script(_TAKE)

    def _keys(self, key_id: str, tenant: str) -> list[str]:
        return [f"{self.prefix}:streams:key:{key_id}", f"{self.prefix}:streams:tenant:{tenant}"]

    def take(self, key_id: str, tenant: str) -> str:
        slot = uuid.uuid4().hex
        now = time.time()
        try:
            refused = self._take(
                keys=self._keys(key_id, tenant),
                args=[now, now - SLOT_STALE_S, slot, self.per_key, self.per_tenant, SLOT_STALE_S * 2],
            )
        except OutOfMemoryError:  # a full Redis refuses writes, not reads: the stream goes on, uncounted
            log.warning("event stream opened without a slot: the job store is full")
            return ""
        if refused:
            who, limit = ("API key", self.per_key) if refused == 1 else ("tenant", self.per_tenant)
            raise ApiError(429, "too_many_streams",
                           f"this {who} has {limit} event streams open, the limit; close one or poll GET /v1/jobs/{{id}}",
                           {"Retry-After": "5"})
        return slot

    def renew(self, slot: str, key_id: str, tenant: str) -> None:
        if not slot:
            return
        try:
            with self.redis.pipeline() as pipe:
                for key in self._keys(key_id, tenant):
                    pipe.zadd(key, {slot: time.time()}, xx=True)
                pipe.execute()
        except OutOfMemoryError:  # full: the slot ages out later instead; the stream goes on
            pass

    def give_back(self, slot: str, key_id: str, tenant: str) -> None:
        if not slot:
            return
        try:  # no MULTI: a full Redis refuses every command queued in one, deletes included
            with self.redis.pipeline(transaction=False) as pipe:
                for key in self._keys(key_id, tenant):
                    pipe.zrem(key, slot)
                pipe.execute()
        except RedisError as exc:  # the stream has ended either way; the slot ages out after SLOT_STALE_S
            log.warning("could not give back an event stream's slot: %s", type(exc).__name__)


class _Watch:
    """The latest view of one job and an event that fires when a new one arrives."""

    def __init__(self, view: JobView):
        self.view: Optional[JobView] = view
        self.version = 0
        self.subscribers = 0
        self.changed = asyncio.Event()
        self.task: Optional[asyncio.Task] = None

    def publish(self, view: Optional[JobView]) -> None:
        self.view, self.version = view, self.version + 1
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    async def wait(self, version: int, timeout: float) -> bool:
        """True when a view newer than `version` is there (at once if it already is), False on timeout."""
        if self.version != version:
            return True
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


class JobWatcher:
    """One poller per job per API process, however many streams watch the job."""

    def __init__(self, service, interval: float = POLL_INTERVAL_S):
        self.service = service
        self.interval = interval
        self.watches: dict[str, _Watch] = {}

    @asynccontextmanager
    async def watch(self, job_id: str, first: JobView) -> AsyncIterator[_Watch]:
        watch = self.watches.get(job_id)
        if watch is None:
            watch = self.watches[job_id] = _Watch(first)
            watch.task = asyncio.create_task(self._poll(job_id, watch))
        watch.subscribers += 1
        try:
            yield watch
        finally:
            watch.subscribers -= 1
            if watch.subscribers == 0 and self.watches.get(job_id) is watch:
                del self.watches[job_id]
                watch.task.cancel()

    async def _poll(self, job_id: str, watch: _Watch) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                view = await run_in_threadpool(self.service.view, job_id)
            except JobNotFound:
                watch.publish(None)
                return
            except Exception:  # Redis away for a moment: the streams keep their last view
                continue
            watch.publish(view)
            if view.status in TERMINAL:
                return
