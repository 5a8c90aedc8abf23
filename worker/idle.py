"""Idle workers stay quiet on Redis: an idle GPU worker or deliverer sends at most a couple of commands a
second, and a job is still picked up the moment it is queued (workers wait in one blocking command).

RQ's defaults poll: its maintenance (a dozen commands and more: registries, the worker registry, the
intermediate queue, groups) runs every interval in every worker, and its scheduler sends half a dozen
commands every second. Here maintenance runs in full only when a cheap look finds work left behind (a
job whose worker stopped heartbeating, a job stuck between the queue and its start) or every
FULL_MAINTENANCE_EVERY intervals, and the scheduler sleeps until its next job is due or a deliverer
wakes it after scheduling one (a retry, a postponed delivery).
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from redis.exceptions import RedisError
from rq.queue import Queue
from rq.scheduler import RQScheduler
from rq.utils import now

log = logging.getLogger(__name__)
FULL_MAINTENANCE_EVERY = 12  # intervals (MAINTENANCE_INTERVAL_S): a minute by default
HEARTBEAT_EVERY_S = 20  # RQ's worker record, which lives worker_ttl + 60 s after each beat
SCHEDULER_MAX_SLEEP_S = 30  # under the scheduler's lock lifetime (its interval + 60 s)


def wake_key(queue_key: str) -> str:
    """A one-element list the scheduler of `queue_key` waits on."""
    return f"{queue_key}:scheduler-wake"


class QuietMaintenance:
    """Mixin for RQ workers (before the RQ class in the bases): RQ's maintenance in full only when there
    is work left behind, or every FULL_MAINTENANCE_EVERY intervals (the look is one round trip), and
    RQ's idle-loop heartbeat of the worker record at most every HEARTBEAT_EVERY_S."""

    _last_full: Optional[float] = None
    _last_beat: float = -float("inf")

    heartbeat_every_s: float = HEARTBEAT_EVERY_S

    def heartbeat(self, timeout=None, pipeline=None):
        if timeout is None and pipeline is None and time.monotonic() - self._last_beat < self.heartbeat_every_s:
            return
        super().heartbeat(timeout, pipeline)  # type: ignore[misc]
        self._last_beat = time.monotonic()

    @property
    def should_run_maintenance_tasks(self) -> bool:
        if not super().should_run_maintenance_tasks:  # type: ignore[misc]
            return False
        full_every = FULL_MAINTENANCE_EVERY * self.maintenance_interval  # type: ignore[attr-defined]
        if self._last_full is None or time.monotonic() - self._last_full >= full_every or self.work_left_behind():
            return True
        self.last_cleaned_at = now()  # looked: nothing to do until the next interval
        return False

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()  # type: ignore[misc]
        self._last_full = time.monotonic()

    def work_left_behind(self) -> bool:
        """A started job whose heartbeat lapsed (its worker died) or a job in the intermediate queue."""
        with self.connection.pipeline(transaction=False) as pipe:  # type: ignore[attr-defined]
            for queue in self.queues:  # type: ignore[attr-defined]
                pipe.zcount(queue.started_job_registry.key, 0, time.time())
                pipe.llen(queue.intermediate_queue_key)
            return any(pipe.execute())


class _Stop(Exception):
    pass


class WakingScheduler(RQScheduler):
    """RQ's scheduler that waits in BLPOP on its wake key until the next scheduled job is due (at most
    SCHEDULER_MAX_SLEEP_S), instead of polling every second.

    Its lock lives `lock_ttl_s` (RQ's lives a minute and more): the lock of a scheduler killed before it
    could release it (its worker killed between taking the lock and forking it, or it killed before its
    signal handlers were in place) holds a restarted worker's retries back only that long. The lock and
    the record are refreshed at half that."""

    def __init__(self, *args, lock_ttl_s: int = 60, **kwargs):
        # RQ gives the lock and the record a lifetime of `interval + 60` s and uses `interval` for nothing
        # else once work() is this class's: the interval is what makes that lifetime lock_ttl_s.
        super().__init__(*args, interval=lock_ttl_s - 60, **kwargs)
        self.lock_ttl_s = lock_ttl_s
        self.beat_every_s = max(1.0, min(HEARTBEAT_EVERY_S, lock_ttl_s / 2))

    _waiting = False  # in the blocking wait, the one place a stop may cut short

    def request_stop(self, signum=None, frame=None):
        """Stop: out of the blocking wait at once (the worker waits for this process to end); anywhere else
        (a Redis command half sent, a library's own try block) the flag alone, seen before the next wait,
        so no command is cut in the middle and no exception is swallowed on the way out."""
        self._stop_requested = True
        if self._waiting:
            raise _Stop

    def next_wait(self) -> float:
        """Seconds until the earliest scheduled job of the queues this scheduler holds."""
        due = []
        for registry in self._scheduled_job_registries:
            first = self.connection.zrange(registry.key, 0, 0, withscores=True)
            if first:
                due.append(first[0][1] - time.time())
        return min([SCHEDULER_MAX_SLEEP_S, *due])

    def work(self):
        self._install_signal_handlers()
        try:
            self.register_birth()
            beat = -float("inf")
            look = True
            while not self._stop_requested:
                if self.should_reacquire_locks:
                    self.acquire_locks()
                if time.monotonic() - beat >= self.beat_every_s:  # the lock lives lock_ttl_s
                    self.heartbeat()
                    beat = time.monotonic()
                if look:
                    self.enqueue_scheduled_jobs()
                due = self.next_wait()
                next_beat = beat + self.beat_every_s - time.monotonic()
                wait = min(due, next_beat, (self._pool_kwargs.get("socket_timeout") or 60) - 5)
                keys = [wake_key(Queue.redis_queue_namespace_prefix + registry.name)
                        for registry in self._scheduled_job_registries]
                woken = False
                self._waiting = True
                try:
                    if self._stop_requested:  # asked while not waiting
                        break
                    if keys and wait > 0:
                        woken = self.connection.blpop(keys, timeout=max(wait, 0.05)) is not None
                    elif wait > 0:
                        time.sleep(wait)
                finally:
                    self._waiting = False
                look = woken or due <= wait  # not after a wait that only ended for the next beat
        except _Stop:
            pass
        self.stop()


def wake_scheduler(connection, queue) -> None:
    """Tell the queue's scheduler that a job may have been scheduled (its list holds one element). Best
    effort: without it the scheduler still wakes within SCHEDULER_MAX_SLEEP_S."""
    try:
        with connection.pipeline(transaction=False) as pipe:
            pipe.lpush(wake_key(queue.key), 1)
            pipe.ltrim(wake_key(queue.key), 0, 0)
            pipe.execute()
    except RedisError as exc:
        log.warning("could not wake the scheduler: %s", exc)
