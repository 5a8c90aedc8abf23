"""RQ's maintenance and scheduler, made to recover from killed processes within seconds.

RQ takes a queue's cleanup lock for 899 s and frees it when the cleanup ends: a worker killed while
cleaning (it cleans every MAINTENANCE_INTERVAL_S, so this is likely) leaves the lock for 15 minutes,
and no worker finds abandoned jobs meanwhile. Here the lock lapses after HEARTBEAT_TTL_S, and so does
the scheduler's lock (RQ's lives a minute). RQ's scheduler runs in a forked process that outlives a
killed parent (an orphan that keeps the scheduler lock); here it ends with its parent. Every worker
(GPU workers and deliverers) uses both."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import time

from rq import worker_registration
from rq.registry import clean_registries
from rq.utils import now

from .idle import WakingScheduler

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM to this process when its parent dies (no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class OwnedScheduler(WakingScheduler):
    """The scheduler process (waiting until its next job is due, worker/idle.py), ended (locks released)
    when the worker that forked it goes away, even by SIGKILL."""

    def work(self):
        parent = os.getppid()
        _die_with_parent()
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(0)
        original = self.heartbeat

        def heartbeat():
            if os.getppid() != parent:  # belt and braces where PDEATHSIG does not exist
                self.request_stop(signal.SIGTERM, None)
                return
            original()

        self.heartbeat = heartbeat
        return super().work()


class PromptMaintenance:
    """Mixin for RQ workers: a cleanup lock and a scheduler lock that lapse after `maintenance_lock_s`, and
    the owned scheduler. A worker that started while a killed one's scheduler lock was still held claims
    the lock every maintenance interval until it has it (one command), not only in full maintenance."""

    maintenance_lock_s: int = 20
    _last_claim: float = -float("inf")

    def scheduler_running(self) -> bool:
        scheduler = getattr(self, "scheduler", None)  # RQ sets it in __init__, after asking for timeouts
        process = scheduler._process if scheduler is not None else None
        return process is not None and process.is_alive()

    @property
    def should_run_maintenance_tasks(self) -> bool:
        due = super().should_run_maintenance_tasks  # type: ignore[misc]
        if (self.scheduler is not None and not self.scheduler_running()
                and time.monotonic() - self._last_claim >= self.maintenance_interval):
            self._last_claim = time.monotonic()
            self.scheduler.acquire_locks(auto_start=True)
        return due

    def clean_registries(self):
        for queue in self.queues:
            if self.connection.set(queue.registry_cleaning_key, self.name, nx=True, ex=self.maintenance_lock_s):
                try:
                    clean_registries(queue, self._exc_handlers)
                    worker_registration.clean_worker_registry(queue)
                    queue.intermediate_queue.cleanup(self, queue)
                finally:
                    queue.release_maintenance_lock()
        self.last_cleaned_at = now()

    def _start_scheduler(self, burst: bool = False, logging_level=None, date_format=None, log_format=None):
        kwargs = {k: v for k, v in (("date_format", date_format), ("log_format", log_format)) if v is not None}
        self.scheduler = OwnedScheduler(
            self.queues, connection=self.connection, serializer=self.serializer, lock_ttl_s=self.maintenance_lock_s,
            logging_level=logging_level if logging_level is not None else self.log.level, **kwargs,
        )
        self.scheduler.acquire_locks()
        if self.scheduler.acquired_locks:
            if burst:
                try:
                    self.scheduler.register_birth()
                    self.scheduler.enqueue_scheduled_jobs()
                finally:
                    self.scheduler.release_locks()
                    self.scheduler.register_death()
            else:
                self.scheduler.start()
