"""Admission limits, checked before a job is queued: a request rate per API key, a number of active
(queued or running) jobs per tenant, and a bound on the whole queue. Each answers 429 with Retry-After.
A job leaves its tenant's active set when it ends (core/job_store.py)."""

from __future__ import annotations

import time

from redis import Redis
from rq.job import Job

from core.connection import Keys
from core.settings import Settings

from .exceptions import ApiError

_ACTIVE = ("queued", "started", "deferred", "scheduled")


class Quotas:
    def __init__(self, redis: Redis, keys: Keys, settings: Settings):
        self.redis = redis
        self.keys = keys
        self.settings = settings

    def check_rate(self, key_id: str) -> None:
        limit = self.settings.rate_limit_per_minute
        if limit <= 0:
            return
        window = int(time.time() // 60)
        counter = f"{self.keys.prefix}:rate:{key_id}:{window}"
        with self.redis.pipeline() as pipe:
            pipe.incr(counter)
            pipe.expire(counter, 120)
            count, _ = pipe.execute()
        if count > limit:
            retry = 60 - int(time.time() % 60)
            raise ApiError(429, "rate_limited", f"more than {limit} submissions a minute for this key; retry in {retry} s",
                           {"Retry-After": str(retry)})

    def _prune(self, tenant: str) -> int:
        """Drop ids of jobs that ended or expired (a missed end-of-job hook must not block a tenant)."""
        key = self.keys.active_jobs(tenant)
        ids = [i.decode() for i in self.redis.smembers(key)]
        with self.redis.pipeline() as pipe:
            for job_id in ids:
                pipe.hget(Job.key_for(job_id), "status")
            statuses = pipe.execute()
        stale = [i for i, s in zip(ids, statuses) if s is None or s.decode() not in _ACTIVE]
        if stale:
            self.redis.srem(key, *stale)
        return len(ids) - len(stale)

    def check_active(self, tenant: str, new_jobs: int) -> None:
        limit = self.settings.max_active_jobs_per_tenant
        if limit <= 0:
            return
        active = self.redis.scard(self.keys.active_jobs(tenant))
        if active + new_jobs > limit:
            active = self._prune(tenant)
        if active + new_jobs > limit:
            raise ApiError(429, "quota_exceeded",
                           f"this tenant has {active} queued or running jobs and the limit is {limit}; "
                           "wait for some to finish", {"Retry-After": "10"})

    def check_queue(self, queue_length: int, new_jobs: int) -> None:
        limit = self.settings.max_queue_depth
        if limit > 0 and queue_length + new_jobs > limit:
            raise ApiError(429, "queue_full", f"the service queue is full ({queue_length} jobs waiting); retry later",
                           {"Retry-After": "30"})

    def added(self, tenant: str, job_ids: list[str], pipe=None) -> None:
        target = pipe if pipe is not None else self.redis
        target.sadd(self.keys.active_jobs(tenant), *job_ids)
        target.expire(self.keys.active_jobs(tenant), self.settings.results_ttl_s)
