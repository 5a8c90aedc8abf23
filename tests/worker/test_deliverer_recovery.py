"""A killed deliverer holds a restarted one's deliveries back for HEARTBEAT_TTL_S, not a minute, and sends
nothing twice: the scheduler's lock lapses that fast, a worker without the lock claims it every maintenance
interval while it waits, a waiting deliverer wakes when a started delivery's deadline passes (a killed
deliverer's, to retry), and a delivery retried after a kill ends once."""

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


def count_run() -> int:
    """A job that counts its runs (in Redis, beside itself)."""
    from rq import get_current_job

    job = get_current_job()
    return job.connection.incr(f"runs:{job.id}")


def test_a_job_run_again_within_a_minute_of_a_killed_attempt_ends_once(queue):
    """A killed attempt's execution record lapses a minute before RQ forgets its id; the next run of the
    job (a delivery, deleted when done) must still end as done, not be counted failed and run again."""
    from rq import Retry
    from rq.executions import Execution, ExecutionRegistry

    job = queue.enqueue(count_run, retry=Retry(max=2), result_ttl=0)
    killed = Execution("killedattempt", job.id, queue.connection)
    ExecutionRegistry(job_id=job.id, connection=queue.connection).add(killed, ttl=8, pipeline=queue.connection)
    assert not queue.connection.exists(killed.key)  # its record lapsed; its id is listed for a minute more
    worker = _deliverer(queue)
    worker.work(burst=True)
    assert int(queue.connection.get(f"runs:{job.id}")) == 1
    assert not queue.connection.exists(job.key)  # done and deleted (result_ttl=0), not failed and retried
    assert queue.failed_job_registry.count == 0 and queue.scheduled_job_registry.count == 0
    queue.connection.delete(f"runs:{job.id}")


def test_a_stop_outside_the_wait_is_a_flag_not_an_exception():
    """A stop that lands while the scheduler talks to Redis must not cut that command in the middle (its
    reply left unread on a pooled connection) nor be swallowed by a library's own try block: it only sets
    the flag, which the loop reads before it waits."""
    scheduler = WakingScheduler([], connection=Redis(), lock_ttl_s=4)
    scheduler.request_stop()
    assert scheduler._stop_requested


def test_the_scheduler_stops_promptly_wherever_sigterm_lands(queue, redis_url):
    """SIGTERM at random moments of a scheduler's life (starting, beating, waiting): each process ends
    within seconds and gives its lock back."""
    import multiprocessing
    import os
    import random
    import signal

    def run():
        scheduler = WakingScheduler([queue.name], connection=Redis.from_url(redis_url), lock_ttl_s=4)
        scheduler.acquire_locks()
        scheduler.work()
        os._exit(0)

    lock = RQScheduler.get_locking_key(queue.name)
    rng = random.Random(7)
    context = multiprocessing.get_context("fork")
    for delay in [rng.uniform(0.0, 0.3) for _ in range(12)]:
        process = context.Process(target=run)
        process.start()
        time.sleep(delay)
        os.kill(process.pid, signal.SIGTERM)
        started = time.monotonic()
        process.join(10)
        assert not process.is_alive(), f"still running 10 s after SIGTERM (sent {delay:.2f} s after the start)"
        assert time.monotonic() - started < 3
        if process.exitcode == 0:  # it had its handlers: it gave its lock back
            assert queue.connection.get(lock) is None
        queue.connection.delete(lock)
