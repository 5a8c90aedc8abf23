"""The GPU worker: RQ's worker loop, jobs taken from the fair line, run as step-level batches.

RQ's loop (`Worker.work`) keeps registration, maintenance and shutdown; here, `dequeue_job_and_maintain_ttl`
takes the next batch from the fair line (core/queueing.py: tenants take turns; the head job and the jobs
of its token shape waiting then), blocking on a wake-up list while idle, and `execute_job` runs it
(worker/scheduler.py): jobs of the shape join between steps and leave when done. RQ's bookkeeping of each
job (started registry, heartbeats, success and failure, retries of a dead worker's jobs) is in
worker/rq_adapter.py. Per step, one Redis round trip: every row's progress, the cancel flags, and the claim
of joiners; metrics are added every few seconds, not per step.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from redis.exceptions import NoScriptError, RedisError

from core.connection import wait_replicated
from core.job_store import JobStore
from core.queueing import FairQueue, token_shape
from core.settings import Settings

from .execution import Executor, Outcome, WorkItem
from .idle import QuietMaintenance
from .model_host import worker_info
from .rq_adapter import (
    Execution, Heartbeat, Job, Queue, SimpleWorker, WorkerStatus, end_job, fetch_jobs, put_back, retry_redis,
    start_job, taken_not_started,
)
from .scheduler import Entry, RetryAlone, StepReport, StepScheduler
from .watchdog import for_batch_worker

log = logging.getLogger(__name__)

RESULTS_SWEEP_INTERVAL_S = 60
METRICS_FLUSH_S = 5.0  # step times and batch sizes are added to the metrics hash this often
STEP_TIME_EWMA = 0.2  # weight of the newest step in a shape's measured step time (for ETAs)


class BatchWorker(QuietMaintenance, SimpleWorker):
    def __init__(self, queues, connection, executor: Executor, settings: Settings, name: Optional[str] = None):
        self.settings = settings
        super().__init__(
            queues,
            name=name,
            connection=connection,
            worker_ttl=max(10, settings.maintenance_interval_s + 5),
            maintenance_interval=settings.maintenance_interval_s,
            default_result_ttl=settings.job_ttl_s,
            log_job_description=True,
        )
        self.executor = executor
        self.info = worker_info(getattr(executor, "model", None))  # precision (and the like) for /readyz and /metrics
        self.job_store = JobStore(connection, settings)
        self.keys = self.job_store.keys
        self.beats = Heartbeat(self, interval=max(1.0, settings.heartbeat_ttl_s / 4))
        self.watchdog = for_batch_worker(self, settings)  # a stuck main thread: jobs back to the queue, exit
        self._last_sweep = -float("inf")
        self._claimed: list[Job] = []
        self.step_scheduler = StepScheduler(  # not `scheduler`: RQ's worker has one (its job scheduler)
            executor.model.live_batch, settings.max_batch, on_step=self.on_step)

    def get_heartbeat_ttl(self, job: Job) -> int:
        return self.settings.heartbeat_ttl_s

    @property
    def dequeue_timeout(self) -> int:
        """Wake up often enough to run maintenance (finding jobs of dead workers) while idle."""
        return max(1, self.settings.maintenance_interval_s)

    @property
    def line_queue(self) -> FairQueue:
        return self.queues[0]

    def work(self, *args, **kwargs):
        self.line_queue.line.load_scripts()
        put_back(self, self.line_queue)
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
        """RQ's (abandoned jobs, stuck intermediate entries), plus expiring old output folders and adopting
        the jobs RQ re-queued on its own list."""
        super().run_maintenance_tasks()
        self.line_queue.intake()
        if time.monotonic() - self._last_sweep >= RESULTS_SWEEP_INTERVAL_S:
            self._last_sweep = time.monotonic()
            removed = self.executor.store.sweep(self.settings.results_ttl_s)
            if removed:
                log.info("removed expired outputs", extra={"folders": removed})

    def on_step(self) -> None:
        """Called after every denoising step of the running batch: the watchdog sees the main thread move."""
        self.watchdog.progress()

    # ---- taking jobs -----------------------------------------------------------------------------------
    def dequeue_job_and_maintain_ttl(self, timeout: Optional[int], max_idle_time: Optional[int] = None):
        """The next batch from the fair line: its first job for RQ's loop; the others wait in `_claimed`.
        While the line is empty, block on its wake-up list (an enqueue pushes a token)."""
        queue = self.line_queue
        self.set_state(WorkerStatus.IDLE)
        idle_since = time.monotonic()
        while True:
            self.heartbeat()
            if self.should_run_maintenance_tasks:
                self.run_maintenance_tasks()
            if self._stop_requested:
                return None
            queue.intake()
            ids, _ = queue.line.claim(self.settings.max_batch, queue.intermediate_queue_key)
            taken_not_started.update(ids)
            jobs = fetch_jobs(self, ids)
            if jobs:
                self._claimed = jobs[1:]
                return jobs[0], queue
            if max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time:
                return None
            self.connection.blpop([queue.line.wake_key], timeout or self.dequeue_timeout)

    def execute_job(self, job: Job, queue: Queue) -> None:
        jobs, self._claimed = [job] + self._claimed, []
        host = RQHost(self, queue)
        self.watchdog.batch_started()
        try:
            entries = host.start([*jobs])
            self.step_scheduler.run(host, entries)
        finally:
            self.watchdog.batch_ended()
            host.flush_metrics(force=True)
            self.set_state(WorkerStatus.IDLE)


class RQHost:
    """The scheduler's host in the worker: jobs start and end in RQ, progress and cancel flags in the job
    store, joiners from the fair line."""

    def __init__(self, worker: BatchWorker, queue: Queue):
        self.worker = worker
        self.queue = queue
        self.redis = worker.connection
        self.store = worker.job_store
        self.settings = worker.settings
        self.running: dict[str, tuple[Job, Execution, WorkItem]] = {}
        self.started: dict[str, float] = {}  # job id -> when it started here (its time limit counts from then)
        self.step_times: list[float] = []
        self.batch_sizes: list[float] = []
        self.shape_times: dict[str, float] = {}
        self.flushed = time.monotonic()

    # ---- jobs in ----------------------------------------------------------------------------------------
    def start(self, jobs: list[Job]) -> list[Entry]:
        """Start the jobs in RQ and plan them; a job that cannot be planned comes back with its error."""
        entries = []
        with_progress = []
        for job in jobs:
            execution = start_job(self.worker, job, self.worker.get_heartbeat_ttl(job))
            self.worker.beats.track(job, execution)
            meta = job.meta or {}
            item = WorkItem(job.id, meta.get("task") or job.args[0], job.args[1], meta.get("output_format") or "png")
            self.running[job.id] = (job, execution, item)
            self.started[job.id] = time.monotonic()
            shape = token_shape((job.meta or {}).get("bucket", ""))
            plan, error = self.worker.executor.plan_or_error(item)
            if error is not None:
                entries.append(Entry(job.id, shape=shape, error=error))
                continue
            entries.append(Entry(job.id, plan=plan, shape=shape))
            with_progress.append((job.id, plan.num_inference_steps))
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id, total in with_progress:
                    self.store.write_progress(pipe, job_id, 0, total, new=True)
                pipe.execute()
            for job_id, total in with_progress:
                self.store.running_webhooks([job_id], 0, total)  # `started`, for webhooks that asked for it
        except RedisError as exc:  # away or full: progress is best effort, the result is not
            log.warning("progress not recorded (%s)", exc)
        # With a replica, it knows these jobs started before they run: after a failover no other worker
        # takes them from a line that still lists them.
        if jobs:
            wait_replicated(self.redis, self.settings, "job_start")
        if jobs:
            log.info("jobs joined", extra={"jobs": [j.id for j in jobs], "bucket": (jobs[0].meta or {}).get("bucket")})
        return entries

    # ---- between steps ------------------------------------------------------------------------------------
    def after_step(self, rows: dict[str, tuple[int, int]], step_s: float, want: int, shape: Optional[str]) -> StepReport:
        keys = list(rows)
        self.step_times.append(step_s)
        self.batch_sizes.append(len(rows))
        if shape:
            old = self.shape_times.get(shape)
            self.shape_times[shape] = step_s if old is None else old + STEP_TIME_EWMA * (step_s - old)
        line = self.queue.line
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for key, (step, total) in rows.items():
                    self.store.write_progress(pipe, key, step, total, step_s=step_s)
                if keys:
                    pipe.mget([self.store.keys.cancel(k) for k in keys])
                if want:
                    line.claim(want, self.queue.intermediate_queue_key, shape=shape, pipe=pipe)
                self.flush_metrics(pipe=pipe)
                answers = pipe.execute()
        except NoScriptError:  # Redis restarted and forgot the scripts: load them; joiners come next step
            try:
                line.load_scripts()
            except RedisError:
                pass
            return StepReport(drop=self._timeouts(keys, {}))
        except RedisError as exc:  # away, full or switching: progress is best effort; the results are not
            log.warning("progress not recorded (%s)", exc)
            return StepReport(drop=self._timeouts(keys, {}))
        for key, (step, total) in rows.items():  # `progress` calls, throttled, for webhooks that asked for them
            self.store.running_webhooks([key], step, total)
        flags = answers[len(rows)] if keys else []
        report = StepReport(drop=self._timeouts(keys, dict(zip(keys, flags))))
        if want:
            ids, _ = line.claimed(answers[len(rows) + bool(keys)])
            if ids:
                taken_not_started.update(ids)
                report.joiners = self.start(fetch_jobs(self.worker, ids))
        return report

    def drops(self, keys: list[str]) -> dict[str, Optional[dict]]:
        try:
            flags = self.redis.mget([self.store.keys.cancel(k) for k in keys]) if keys else []
        except RedisError:
            flags = [None] * len(keys)
        return self._timeouts(keys, dict(zip(keys, flags)))

    def _timeouts(self, keys: list[str], flags: dict) -> dict[str, Optional[dict]]:
        """Canceled jobs (None) and jobs past JOB_TIMEOUT_S since they started (the error)."""
        limit = self.settings.job_timeout_s
        drop: dict[str, Optional[dict]] = {}
        for key in keys:
            if flags.get(key) is not None:
                drop[key] = None
            elif time.monotonic() - self.started.get(key, time.monotonic()) > limit:
                drop[key] = {"type": "timeout", "message": f"the job ran past its time limit of {limit} s"}
        return drop

    def stopping(self) -> bool:
        return bool(self.worker._stop_requested)

    # ---- jobs out ---------------------------------------------------------------------------------------
    def finished(self, entry: Entry, result, reason: Optional[dict]) -> None:
        job, execution, item = self.running.pop(entry.key)
        executor = self.worker.executor
        if isinstance(result, RetryAlone):
            (outcome,) = executor.run([item], canceled=lambda: {0} if self.drops([job.id]) else set())
            if self.drops([job.id]).get(job.id):  # it ran out of time on its own
                outcome = Outcome(error=self.drops([job.id])[job.id])
        elif result is None:
            outcome = Outcome(canceled=reason is None, error=reason)
        else:
            outcome = executor.outcome(item, result)
        if reason is not None and outcome.error is not None:
            outcome.canceled = False
        steps = entry.plan.num_inference_steps if entry.plan is not None else None
        retry_redis(lambda: self._end(job, execution, outcome, steps), f"finishing job {job.id}")
        self.worker.beats.untrack(job.id)
        self.started.pop(job.id, None)

    def _end(self, job: Job, execution: Execution, outcome: Outcome, steps: Optional[int]) -> None:
        extra = {"job_id": job.id, "task": (job.meta or {}).get("task")}
        canceled = outcome.canceled or self.store.cancel_requested([job.id])[0]
        if outcome.result is not None and not canceled and steps:
            self.store.record_progress([job.id], steps, steps)
        how = end_job(self.worker, job, self.queue, execution, canceled=canceled, error=outcome.error,
                      result=outcome.result)
        wait_replicated(self.redis, self.settings, "job_end")  # a failover keeps the end, not the start
        if how == "failed":
            log.warning("job failed: %s", outcome.error["message"], extra=extra)
        else:
            log.info("job %s", how, extra=extra)
        self.store.job_ended(job.id)

    # ---- metrics ----------------------------------------------------------------------------------------
    def flush_metrics(self, pipe=None, force: bool = False) -> None:
        """Step times, batch sizes and the measured step time per shape (for ETAs), every METRICS_FLUSH_S."""
        if not force and time.monotonic() - self.flushed < METRICS_FLUSH_S:
            return
        if not self.step_times:
            return
        own = pipe is None
        target = self.redis.pipeline(transaction=False) if own else pipe
        metrics = self.store.metrics
        metrics.observe_many("step_seconds", {}, self.step_times, target)
        metrics.observe_many("batch_size", {}, self.batch_sizes, target)
        if self.shape_times:
            target.hset(self.store.keys.step_seconds, mapping={k: round(v, 5) for k, v in self.shape_times.items()})
            target.expire(self.store.keys.step_seconds, self.settings.job_ttl_s)
        self.step_times, self.batch_sizes = [], []
        self.flushed = time.monotonic()
        if own:
            try:
                target.execute()
            except RedisError:
                pass
