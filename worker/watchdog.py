"""The worker's watchdog: a main thread that stops making progress gives its jobs back and the process exits.

A worker's Redis heartbeat comes from its own thread, so a main thread stuck in a step (a wedged GPU
call, a deadlock) used to keep its jobs "running" for ever, never retried, and counted ready. The
watchdog thread watches the main thread instead: while a batch runs, every denoising step must come
within a bound (WATCHDOG_STALL_S, or, when that is 0, AUTO_FACTOR times the slowest of the recent steps,
at least AUTO_FLOOR_S: the floor covers a batch's start and end, text encoding and decoding, and the
compilation of a new shape). Past it the watchdog

  1. reports the worker not ready and not live (probes; out of the Redis readiness set that /readyz reads),
  2. stops the heartbeats and hands the jobs back: their executions are expired and RQ's own clean-up
     re-queues each (a retry, counted against JOB_RETRIES, like a worker that died; no retry left: failed),
  3. exits with EXIT_STALLED, so the container (or supervisor) starts a fresh process.

The worker calls `batch_started()`, `progress()` at every step and `batch_ended()`; `start()`/`stop()`
run the thread.

For tests, ONEDIFFUSION_FAULT_STALL_AT_STEP=N makes the main thread hang at the N-th step of every
batch (never set it in production).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import Callable, Optional

from rq.executions import Execution
from rq.registry import StartedJobRegistry
from rq.timeouts import TimerDeathPenalty

from core.settings import Settings

from .probes import HEALTH, WorkerHealth

log = logging.getLogger(__name__)

AUTO_FLOOR_S = 300.0
AUTO_FACTOR = 20.0
RECENT_STEPS = 50
EXIT_STALLED = 75  # EX_TEMPFAIL: try again (a fresh process)
FAULT_STALL_AT_STEP = "ONEDIFFUSION_FAULT_STALL_AT_STEP"


class Watchdog:
    def __init__(self, settings: Settings, on_stall: Callable[[str], None], health: WorkerHealth = HEALTH,
                 exit: Callable[[int], None] = os._exit):
        self.fixed_bound = float(settings.watchdog_stall_s)
        self.on_stall = on_stall
        self.health = health
        self.exit = exit
        self.lock = threading.Lock()
        self.steps: collections.deque[float] = collections.deque(maxlen=RECENT_STEPS)
        self.last_progress: Optional[float] = None  # None = no batch running: nothing to watch
        self.step_in_batch = 0
        self.last_was_step = False
        self.stop_event = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.tripped = False
        fault = os.environ.get(FAULT_STALL_AT_STEP, "")
        self.fault_step = int(fault) if fault.isdigit() else None
        health.details = self.view

    # ---- called by the worker's main thread -----------------------------------------------------------
    def start(self) -> None:
        if self.thread is None or not self.thread.is_alive():
            self.stop_event.clear()
            self.thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
            self.thread.start()
        self.health.working(True)

    def stop(self) -> None:
        self.health.working(False)
        self.stop_event.set()

    def batch_started(self) -> None:
        with self.lock:
            self.last_progress = time.monotonic()
            self.step_in_batch = 0
            self.last_was_step = False

    def progress(self) -> None:
        """A step finished. The gap since the previous step is a step time (the gap since the batch
        started is not: it holds text encoding and maybe compilation)."""
        now = time.monotonic()
        with self.lock:
            if self.last_progress is not None and self.last_was_step:
                self.steps.append(now - self.last_progress)
            self.last_progress = now
            self.last_was_step = True
            self.step_in_batch += 1
            step = self.step_in_batch
        if self.fault_step is not None and step == self.fault_step:
            log.warning("%s=%d: the main thread hangs here (a test fault)", FAULT_STALL_AT_STEP, step)
            time.sleep(24 * 3600)

    def batch_ended(self) -> None:
        with self.lock:
            self.last_progress = None

    # ---- the watching thread ---------------------------------------------------------------------------
    def bound(self) -> float:
        if self.fixed_bound > 0:
            return self.fixed_bound
        with self.lock:
            slowest = max(self.steps, default=0.0)
        return max(AUTO_FLOOR_S, AUTO_FACTOR * slowest)

    def stalled_for(self) -> float:
        with self.lock:
            last = self.last_progress
        return 0.0 if last is None else time.monotonic() - last

    def view(self) -> dict:
        return {"busy": self.last_progress is not None, "since_progress_s": round(self.stalled_for(), 1),
                "stall_bound_s": round(self.bound(), 1)}

    def _watch(self) -> None:
        while not self.stop_event.is_set():
            bound = self.bound()
            stalled = self.stalled_for()
            if stalled > bound:
                self.trip(f"no step for {stalled:.0f} s (bound {bound:.0f} s)")
                return
            self.stop_event.wait(min(5.0, max(0.2, bound / 10)))

    def trip(self, reason: str) -> None:
        """Give up on this process: not ready, jobs handed back, exit."""
        self.tripped = True
        self.health.failed(reason)
        log.error("watchdog: the main thread is stuck (%s); handing its jobs back and exiting", reason)
        try:
            self.on_stall(reason)
        except Exception:  # Redis away, say: the jobs' executions expire without heartbeats and are retried anyway
            log.exception("watchdog: handing the jobs back failed; they are retried once their heartbeats expire")
        finally:
            self.exit(EXIT_STALLED)


# ---- handing an RQ worker's jobs back ---------------------------------------------------------------
def hand_back(worker, heartbeat: Optional[threading.Thread] = None, readiness_key: Optional[str] = None,
              info_key: Optional[str] = None) -> list[str]:
    """Re-queue (or fail, with no retry left) the jobs `worker` (an RQ worker) has started, through RQ's own
    clean-up of abandoned jobs. Returns the job ids handed back."""
    connection = worker.connection
    if heartbeat is not None:  # first, so nothing refreshes the executions or the readiness entry again
        heartbeat.stop_event.set()
        heartbeat.join(15)
    if readiness_key:
        connection.zrem(readiness_key, worker.name)
    if info_key:
        connection.delete(info_key)
    handed = []
    for queue in worker.queues:
        # RQ runs the jobs' failure callbacks under a death penalty; the signal-based one works only in
        # the main thread, which is the stuck one: a timer here.
        registry = StartedJobRegistry(queue=queue, job_class=queue.job_class, death_penalty_class=TimerDeathPenalty)
        members = [m.decode() if isinstance(m, bytes) else m for m in connection.zrange(registry.key, 0, -1)]
        with connection.pipeline() as pipe:
            for member in members:
                pipe.hget(Execution.from_composite_key(member, connection).key, "worker_name")
            owners = pipe.execute()
        mine = {m: 1 for m, owner in zip(members, owners) if (owner or b"").decode() == worker.name}
        if not mine:
            continue
        connection.zadd(registry.key, mine, xx=True)  # expired: abandoned, as if the worker had died
        handed += [m.partition(":")[0] for m in mine]
        if queue.acquire_maintenance_lock():
            try:
                registry.cleanup()
            finally:
                queue.release_maintenance_lock()
        else:  # another worker is cleaning right now; its next round (MAINTENANCE_INTERVAL_S) takes them
            log.info("watchdog: another worker holds the maintenance lock; it re-queues the jobs")
    log.warning("watchdog: handed back %d job(s)", len(handed), extra={"jobs": handed})
    return handed


def for_batch_worker(worker, settings: Settings) -> Watchdog:
    """The watchdog of a BatchWorker: gives back its jobs, readiness entry and heartbeat on a stall."""
    keys = worker.keys
    return Watchdog(settings, lambda reason: hand_back(
        worker, heartbeat=getattr(worker, "beats", None), readiness_key=keys.workers, info_key=keys.worker_info(worker.name),
    ))
