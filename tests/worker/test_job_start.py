"""A job that a worker took from the line starts even when Redis is full at that moment: the worker waits
for room instead of failing, which would end its loop and strand the batch the job was joining."""

from __future__ import annotations

import threading
import time

import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import JobStatus

from tests.service.harness import RedisServer
from worker.rq_adapter import start_job


@pytest.mark.slow  # waits for the store to have room
def test_a_job_starts_once_a_full_redis_has_room_again(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        redis = Redis.from_url(server.url)
        queue = Queue("start-test", connection=redis)
        job = queue.enqueue("builtins.len", "abc", meta={"attempts": 0})
        worker = SimpleWorker([queue], connection=redis, name="start-test-worker")
        worker.register_birth()

        redis.config_set("maxmemory", 1)  # full (noeviction): every write that needs memory is refused
        threading.Timer(1.5, lambda: Redis.from_url(server.url).config_set("maxmemory", 0)).start()
        started = time.monotonic()
        execution = start_job(worker, job, ttl=60)
        waited = time.monotonic() - started

        assert waited >= 1.0, "it did not wait for room"
        job.refresh()
        assert job.get_status() == JobStatus.STARTED
        assert job.meta["attempts"] == 1  # counted once, however many times Redis refused
        assert [e.id for e in job.get_executions()] == [execution.id]  # one execution, no leftovers
    finally:
        server.stop()
