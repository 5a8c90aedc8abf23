"""Every RQ internal the GPU worker relies on, in one place, so that an RQ upgrade is checked here.

RQ keeps the job states and registries true for us: a job that starts gets an Execution in the started
registry (heartbeats keep it alive; a dead worker's jobs expire and `Retry` puts them back), and ends
through `handle_job_success` / `handle_job_failure`. RQ's own loop (`Worker.work`) runs registration,
maintenance and shutdown; the worker replaces only how a job is taken (the fair line instead of BLPOP)
and how it runs (step-level batches instead of one job at a time).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Optional

from redis.exceptions import RedisError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.utils import now
from rq.worker import SimpleWorker, WorkerStatus

from core.job_store import drop_lapsed_executions
from core.redis_errors import is_transient

if TYPE_CHECKING:
    from .batch_worker import BatchWorker

log = logging.getLogger(__name__)

__all__ = [
    "Execution", "Job", "JobStatus", "Queue", "SimpleWorker", "WorkerStatus", "Heartbeat", "fetch_jobs",
    "put_back", "retry_redis", "start_job", "end_job",
]

# A job taken but never started (still 'queued'): off RQ's intermediate queue, back on RQ's list, which the
# workers adopt into the fair line ahead of the tenant's other jobs.
_RETURN = """
if redis.call('HGET', KEYS[3], 'status') ~= 'queued' then return 0 end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""
# Jobs this process took from the line but has not started yet. Normally empty between steps; after a Redis
# outage broke a start, the restarted worker puts them back at once (RQ's own sweep of the intermediate
# queue would wait a minute).
taken_not_started: set[str] = set()


def retry_redis(action, what: str, stop: Optional[threading.Event] = None, max_wait: float = 30.0):
    """Run `action` until Redis takes it (back from an outage or a failover, or with room again when it
    was full): results are already stored, so waiting loses nothing."""
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


def fetch_jobs(worker: SimpleWorker, job_ids: list[str]) -> list[Job]:
    """The RQ records of claimed jobs. One that expired meanwhile is left out, and so is one that already
    ended: a Redis failover can promote a replica that had not yet heard the job leave the line; its
    entry is dropped (not run twice) and its result stands."""
    jobs = Job.fetch_many(job_ids, connection=worker.connection, serializer=worker.serializer)
    taken = []
    for job in jobs:
        if job is None:
            continue
        if job.get_status(refresh=False) in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED):
            log.warning("dropped a queue entry of a job that already ended", extra={"job_id": job.id})
            for queue in worker.queues:
                worker.connection.lrem(queue.intermediate_queue_key, 1, job.id)
            taken_not_started.discard(job.id)
            continue
        taken.append(job)
    return taken


def put_back(worker: SimpleWorker, queue: Queue) -> None:
    script = worker.connection.register_script(_RETURN)
    for job_id in list(taken_not_started):
        if script(keys=[queue.intermediate_queue_key, queue.key, Job.key_for(job_id)], args=[job_id]):
            log.warning("put back a job taken before the Redis outage", extra={"job_id": job_id})
        taken_not_started.discard(job_id)


def start_job(worker: SimpleWorker, job: Job, ttl: int) -> Execution:
    """RQ's bookkeeping for a job that starts: an Execution in the started registry, status started, off
    the intermediate queue; and the attempt counted in its meta.

    The job is already off the line: each step waits for Redis (back, or with room again when it is full)
    rather than fail, which would end the worker loop and strand the batch it joins. Each step is one
    transaction, so a step that Redis refused is simply sent again."""
    def create() -> Execution:
        with worker.connection.pipeline() as pipe:
            created = Execution.create(job, ttl, pipeline=pipe, worker_name=worker.name)
            worker.set_state(WorkerStatus.BUSY, pipeline=pipe)
            pipe.execute()
        return created

    execution = retry_redis(create, f"starting job {job.id}")
    worker.execution = execution
    retry_redis(lambda: worker.prepare_job_execution(job, remove_from_intermediate_queue=True), f"starting job {job.id}")
    taken_not_started.discard(job.id)
    job.meta["attempts"] = int(job.meta.get("attempts", 0)) + 1
    retry_redis(job.save_meta, f"starting job {job.id}")
    return execution


def end_job(worker: SimpleWorker, job: Job, queue: Queue, execution: Execution, *, canceled: bool,
            error: Optional[dict], result: Optional[dict]) -> str:
    """RQ's end of one job: canceled, failed (no retry: a job that failed by itself fails again) or
    succeeded. Returns which."""
    worker.execution = execution
    job.ended_at = now()
    if canceled:
        with worker.connection.pipeline() as pipe:
            worker.cleanup_execution(job, pipeline=pipe)
            pipe.execute()
        if job.get_status() != JobStatus.CANCELED:
            drop_lapsed_executions(job)
            job.cancel()
        return "canceled"
    if error is not None:
        job.meta["error"] = error
        job.save_meta()
        job.retries_left = 0
        worker.handle_job_failure(job, queue, started_job_registry=queue.started_job_registry, exc_string=error["message"])
        return "failed"
    job._result = result
    job._status = JobStatus.FINISHED
    worker.handle_job_success(job, queue, queue.started_job_registry)
    return "succeeded"


class Heartbeat(threading.Thread):
    """Keeps the worker's readiness entry and the running jobs' RQ heartbeats fresh while the main thread
    is busy in a long step or a model compile."""

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
