"""A killed deliverer's scheduler lock holds a restarted one's retries back for HEARTBEAT_TTL_S, not a minute:
the lock lapses that fast, a worker without the lock claims it every maintenance interval while it waits,
and a waiting deliverer wakes when a started delivery's deadline passes (a killed deliverer's, to retry)."""

from __future__ import annotations

import time
import uuid

import pytest
from redis import Redis
from rq import Queue
from rq.scheduler import RQScheduler

from worker.idle import WakingScheduler
from worker.main import DELIVERER_WAIT_S, DeliveryWorker


@pytest.fixture
def queue(redis_url):
    redis = Redis.from_url(redis_url)
    queue = Queue(f"lock-test-{uuid.uuid4().hex[:8]}", connection=redis)
    yield queue
    redis.delete(RQScheduler.get_locking_key(queue.name), queue.started_job_registry.key)


def _deliverer(queue: Queue) -> DeliveryWorker:
    worker = DeliveryWorker([queue], connection=queue.connection, name=f"w-{uuid.uuid4().hex[:8]}",
                            maintenance_interval=1)
    worker.maintenance_lock_s = 3
    return worker


def test_the_scheduler_lock_and_record_live_lock_ttl_s(queue):
    scheduler = WakingScheduler([queue], connection=queue.connection, lock_ttl_s=4)
    assert scheduler.acquire_locks() == {queue.name}
    lock = RQScheduler.get_locking_key(queue.name)
    assert 0 < queue.connection.pttl(lock) <= 4000
    scheduler.register_birth()
    scheduler.heartbeat()
    assert 0 < queue.connection.pttl(lock) <= 4000 and 0 < queue.connection.ttl(scheduler.key) <= 4
    assert scheduler.beat_every_s <= 4 / 2
    scheduler.release_locks()
    scheduler.register_death()


def test_a_worker_claims_the_lock_a_killed_scheduler_left_once_it_lapses(queue):
    lock = RQScheduler.get_locking_key(queue.name)
    queue.connection.set(lock, "killed-scheduler", ex=2)  # what a scheduler killed before releasing leaves
    worker = _deliverer(queue)
    worker._start_scheduler()
    try:
        assert not worker.scheduler_running()
        assert worker.dequeue_timeout == 1  # waits one interval at a time until it has the lock
        deadline = time.monotonic() + 6
        while not worker.scheduler_running() and time.monotonic() < deadline:
            worker.should_run_maintenance_tasks  # the look between two waits
            time.sleep(0.2)
        assert worker.scheduler_running(), "the lapsed lock was not claimed"
        assert queue.connection.get(lock).decode() == worker.scheduler.name
        assert worker.dequeue_timeout == DELIVERER_WAIT_S
    finally:
        worker.stop_scheduler()


def test_a_waiting_deliverer_wakes_when_a_started_delivery_lapses(queue):
    worker = _deliverer(queue)
    worker._start_scheduler()
    try:
        assert worker.scheduler_running()
        queue.connection.zadd(queue.started_job_registry.key, {"job:execution": time.time() + 5})
        assert 5 <= worker.dequeue_timeout <= 7
        queue.connection.zadd(queue.started_job_registry.key, {"job:execution": time.time() - 5})
        assert worker.dequeue_timeout == 1  # lapsed: recover it at once
    finally:
        worker.stop_scheduler()
