"""An RQ worker that runs queued jobs of one shape together, keeping RQ's job states and registries true.

RQ runs one job at a time; GPU batching is ours. When RQ hands this worker a job, it claims up to
`MAX_BATCH - 1` queued companions with the same bucket (resolution, frame count, steps), waiting at
most `BATCH_WINDOW_MS` for them. A claim moves the job from the queue to RQ's intermediate queue in one
atomic step, so a worker that dies right after still leaves it where RQ's maintenance finds and re-queues
it. Each job then goes through RQ's own steps: an Execution in the started registry (heartbeats keep
it alive; a dead worker's jobs expire and `Retry` re-queues them), and `handle_job_success` /
`handle_job_failure` at the end, one job at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from redis.exceptions import RedisError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.utils import now
from rq.worker import SimpleWorker, WorkerStatus

from core.connection import wait_replicated
from core.job_store import JobStore
from core.redis_errors import is_transient
from core.settings import Settings

from .execution import Executor, WorkItem
from .idle import QuietMaintenance
from .model_host import worker_info
from .watchdog import for_batch_worker

log = logging.getLogger(__name__)

# Move a job id from the queue to the intermediate queue only if it is still queued (atomic claim).
_CLAIM = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""
# The reverse, for a job taken but never started (still 'queued'): back to the front of the queue.
_RETURN = """
if redis.call('HGET', KEYS[3], 'status') ~= 'queued' then return 0 end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""
# Jobs this process took from the queue but has not started yet. Normally empty between batches; after a
# Redis outage broke a batch's start, the restarted worker puts them back at once (RQ's own sweep of the
# intermediate queue would wait a minute).
_taken_not_started: set[str] = set()
RESULTS_SWEEP_INTERVAL_S = 60


def retry_redis(action, what: str, stop: Optional[threading.Event] = None, max_wait: float = 30.0):
    """Run `action` until Redis takes it (back from an outage or a failover, or with room again when it
    was full): results are already on disk, so waiting loses nothing."""
    delay = 0.5
    while True:
        try:
            return action()
        except RedisError as exc:
            if not is_transient(exc):
                raise
            log.warning("redis unavailable while %s (%s: %s); retrying in %.1fs", what, type(exc).__name__, exc, delay)
            if stop is not None and stop.is_set():
                raise
            time.sleep(delay)
            delay = min(delay * 2, max_wait)


class Heartbeat(threading.Thread):
    """Keeps the worker's readiness entry and the running jobs' RQ heartbeats fresh while the main
    thread is busy in a long step or a model compile."""

    def __init__(self, worker: "BatchWorker", interval: float):
        super().__init__(daemon=True, name="heartbeat")
        self.worker = worker
        self.interval = interval
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.running: dict[str, tuple[Job, Execution]] = {}
        self.beats_sent = 0

    def track(self, job: Job, execution: Execution) -> None:
        with self.lock:
            self.running[job.id] = (job, execution)

    def untrack(self, job_id: str) -> None:
        with self.lock:
            self.running.pop(job_id, None)

    def beat(self) -> None:
        worker = self.worker
        ttl = worker.settings.heartbeat_ttl_s
        with self.lock:
            running = list(self.running.values())
        with worker.connection.pipeline(transaction=False) as pipe:  # no MULTI/EXEC: nothing here needs it
            pipe.zadd(worker.keys.workers, {worker.name: time.time()})
            pipe.expire(worker.keys.workers, ttl * 10)
            if worker.info and self.beats_sent % 10 == 0:  # it lives 40 beats: every 10th is enough
                pipe.hset(worker.keys.worker_info(worker.name), mapping=worker.info)
                pipe.expire(worker.keys.worker_info(worker.name), ttl * 10)
            if running:  # RQ's own worker heartbeat only once it is registered and working
                worker.heartbeat(ttl + 60, pipeline=pipe)
            for job, execution in running:
                execution.heartbeat(job.started_job_registry, ttl, pipeline=pipe)
                job.heartbeat(now(), ttl, pipeline=pipe, xx=True)
            pipe.execute()
        self.beats_sent += 1

    def run(self) -> None:
        while True:
            try:
                self.beat()
            except Exception as exc:  # Redis away: try again next time
                log.warning("heartbeat failed: %s", exc)
            if self.stop_event.wait(self.interval):
                return


class BatchWorker(QuietMaintenance, SimpleWorker):
    def __init__(self, queues, connection, executor: Executor, settings: Settings, name: Optional[str] = None):
        self.settings = settings
        super().__init__(
            queues,
            name=name,
            connection=connection,
            worker_ttl=max(10, settings.maintenance_interval_s + 5),
            maintenance_interval=settings.maintenance_interval_s,
            default_result_ttl=settings.results_ttl_s,
            log_job_description=True,
        )
        self.executor = executor
        self.info = worker_info(getattr(executor, "model", None))  # precision (and the like) for /readyz and /metrics
        self.job_store = JobStore(connection, settings)
        self.keys = self.job_store.keys
        self._claim = connection.register_script(_CLAIM)
        self._return = connection.register_script(_RETURN)
        self.beats = Heartbeat(self, interval=max(1.0, settings.heartbeat_ttl_s / 4))
        self.watchdog = for_batch_worker(self, settings)  # a stuck main thread: jobs back to the queue, exit
        self._last_sweep = -float("inf")

    def get_heartbeat_ttl(self, job: Job) -> int:
        return self.settings.heartbeat_ttl_s

    @property
    def dequeue_timeout(self) -> int:
        """Wake up often enough to run maintenance (finding jobs of dead workers) while idle."""
        return max(1, self.settings.maintenance_interval_s)

    def work(self, *args, **kwargs):
        self.return_taken_jobs()
        self.job_store.rename_old_callbacks()  # before RQ's maintenance resolves them
        if not self.beats.is_alive():
            self.beats.start()
        self.watchdog.start()
        try:
            return super().work(*args, **kwargs)
        finally:
            self.watchdog.stop()
            self.beats.stop_event.set()

    def run_maintenance_tasks(self) -> None:
        """RQ's (abandoned jobs, stuck intermediate entries), plus expiring old output folders."""
        super().run_maintenance_tasks()
        if time.monotonic() - self._last_sweep >= RESULTS_SWEEP_INTERVAL_S:
            self._last_sweep = time.monotonic()
            removed = self.executor.store.sweep(self.settings.results_ttl_s)
            if removed:
                log.info("removed expired outputs", extra={"folders": removed})

    def return_taken_jobs(self) -> None:
        for queue in self.queues:
            for job_id in list(_taken_not_started):
                if self._return(keys=[queue.intermediate_queue_key, queue.key, Job.key_for(job_id)], args=[job_id]):
                    log.warning("put back a job taken before the Redis outage", extra={"job_id": job_id})
                _taken_not_started.discard(job_id)

    # ---- batching ------------------------------------------------------------------------------------
    def take_companions(self, job: Job, queue: Queue) -> list[Job]:
        """Claim queued jobs of the same bucket, waiting up to the batch window for them."""
        want = self.settings.max_batch - 1
        bucket = (job.meta or {}).get("bucket")
        if want <= 0 or bucket is None:
            return []
        taken: list[Job] = []
        deadline = time.monotonic() + self.settings.batch_window_ms / 1000
        while True:
            ids = [i for i in queue.get_job_ids(0, 255) if i != job.id]
            if ids:
                with self.connection.pipeline() as pipe:
                    for job_id in ids:
                        pipe.hget(Job.key_for(job_id), "meta")
                    metas = pipe.execute()
                for job_id, raw in zip(ids, metas):
                    if len(taken) >= want:
                        break
                    meta = self.serializer.loads(raw) if raw else {}
                    if meta.get("bucket") == bucket and self._claim(keys=[queue.key, queue.intermediate_queue_key], args=[job_id]):
                        _taken_not_started.add(job_id)
                        companion = Job.fetch(job_id, connection=self.connection, serializer=self.serializer)
                        if not self.already_ended(companion, queue):
                            taken.append(companion)
            if len(taken) >= want or time.monotonic() >= deadline:
                return taken
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    def already_ended(self, job: Job, queue: Queue) -> bool:
        """A job that ended but is queued again: a Redis failover can promote a replica that had not yet
        heard the job leave the queue. Dropped here (not run twice); its result stands."""
        if job.get_status() not in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED):
            return False
        log.warning("dropped a queue entry of a job that already ended", extra={"job_id": job.id})
        self.connection.lrem(queue.intermediate_queue_key, 1, job.id)
        _taken_not_started.discard(job.id)
        return True

    def execute_job(self, job: Job, queue: Queue) -> None:
        if self.already_ended(job, queue):
            return
        _taken_not_started.add(job.id)
        jobs = [job] + self.take_companions(job, queue)
        self.watchdog.batch_started()
        try:
            self.run_batch(jobs, queue)
        finally:
            self.watchdog.batch_ended()
            self.set_state(WorkerStatus.IDLE)

    # ---- one batch -----------------------------------------------------------------------------------
    def start_job(self, job: Job, queue: Queue) -> Execution:
        """RQ's bookkeeping for a job that starts: an Execution in the started registry, status started."""
        ttl = self.get_heartbeat_ttl(job)
        with self.connection.pipeline() as pipe:
            execution = Execution.create(job, ttl, pipeline=pipe, worker_name=self.name)
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            pipe.execute()
        self.execution = execution
        self.prepare_job_execution(job, remove_from_intermediate_queue=True)
        _taken_not_started.discard(job.id)
        job.meta["attempts"] = int(job.meta.get("attempts", 0)) + 1
        job.save_meta()
        self.beats.track(job, execution)
        return execution

    def run_batch(self, jobs: list[Job], queue: Queue) -> None:
        executions = {job.id: self.start_job(job, queue) for job in jobs}
        # With a replica, it knows these jobs started before they run: after a failover no other worker
        # takes them from a queue that still lists them (an error here stops the batch before it runs).
        wait_replicated(self.connection, self.settings, "job_start")
        items = [WorkItem(job.id, job.meta.get("task") or job.args[0], job.args[1], job.meta.get("output_format") or "png")
                 for job in jobs]
        started = time.monotonic()
        reasons: dict[str, dict] = {}
        last_step = [time.monotonic()]
        log.info("batch started", extra={"jobs": [j.id for j in jobs], "bucket": jobs[0].meta.get("bucket")})
        self.job_store.metrics.observe("batch_size", {}, len(jobs))

        def on_step(step: int, total: int) -> None:
            self.watchdog.progress()
            elapsed = time.monotonic() - last_step[0]
            last_step[0] = time.monotonic()
            try:
                with self.connection.pipeline() as pipe:
                    self.job_store.record_progress([job.id for job in jobs], step, total, pipe=pipe)
                    self.job_store.metrics.observe("step_seconds", {}, elapsed, pipe=pipe)
                    pipe.execute()
            except RedisError:  # away or full: progress is best effort, the result is not (and never the model's error)
                pass

        def canceled() -> set[int]:
            try:
                flags = self.job_store.cancel_requested([job.id for job in jobs])
            except RedisError:
                flags = [False] * len(jobs)
            dropped = set()
            over_time = time.monotonic() - started > self.settings.job_timeout_s
            for i, (job, flag) in enumerate(zip(jobs, flags)):
                if flag:
                    dropped.add(i)
                elif over_time:
                    reasons[job.id] = {
                        "type": "timeout",
                        "message": f"the job ran past its time limit of {self.settings.job_timeout_s} s",
                    }
                    dropped.add(i)
            return dropped

        for job, item in zip(jobs, items):
            try:
                self.job_store.record_progress([job.id], 0, item.payload.get("num_inference_steps", 0))
            except RedisError:
                pass
        outcomes = self.executor.run(items, on_step=on_step, canceled=canceled)
        for job, outcome in zip(jobs, outcomes):
            if job.id in reasons:
                outcome.canceled, outcome.error = False, reasons[job.id]
            # the job's end and, with a replica, the replica holding it (a failover cannot bring it back)
            retry_redis(lambda: (self.finish_job(job, queue, executions[job.id], outcome),
                                 wait_replicated(self.connection, self.settings, "job_end")), f"finishing job {job.id}")
            self.beats.untrack(job.id)

    def finish_job(self, job: Job, queue: Queue, execution: Execution, outcome) -> None:
        """RQ's end of one job: success, failure (no retry for a job that failed on its own) or cancel."""
        self.execution = execution
        job.ended_at = now()
        extra = {"job_id": job.id, "task": job.meta.get("task")}
        if outcome.canceled or self.job_store.cancel_requested([job.id])[0]:
            with self.connection.pipeline() as pipe:
                self.cleanup_execution(job, pipeline=pipe)
                pipe.execute()
            if job.get_status() != JobStatus.CANCELED:
                job.cancel()
            log.info("job canceled", extra=extra)
        elif outcome.error is not None:
            job.meta["error"] = outcome.error
            job.save_meta()
            job.retries_left = 0  # it failed by itself: running it again gives the same failure
            self.handle_job_failure(job, queue, started_job_registry=queue.started_job_registry, exc_string=outcome.error["message"])
            log.warning("job failed: %s", outcome.error["message"], extra=extra)
        else:
            job._result = outcome.result
            job._status = JobStatus.FINISHED
            self.handle_job_success(job, queue, queue.started_job_registry)
            log.info("job succeeded", extra=extra)
        self.job_store.job_ended(job.id)
