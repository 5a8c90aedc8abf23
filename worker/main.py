"""Worker processes: the GPU worker (one per GPU) and the webhook deliverer.

Each runs an RQ worker under a supervisor loop: if Redis goes away the RQ loop ends, and the supervisor
starts it again once Redis answers, keeping the loaded model. SIGTERM / SIGINT stop it after the
batch in hand (a warm shutdown)."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import socket
import threading
import time

from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from rq.timeouts import TimerDeathPenalty
from rq.worker import SimpleWorker

from core.connection import connect, queues
from core.job_store import drop_lapsed_executions
from core.logs import setup_logging
from core.redis_policy import EvictingRedis, check_eviction
from core.settings import Settings, get_settings
from core.storage import open_store, wait_until_writable

from .maintenance import PromptMaintenance

from .idle import QuietMaintenance, wake_scheduler

log = logging.getLogger(__name__)


def _make_when_redis_answers(make_worker):
    """Build the worker (which talks to Redis already) once Redis answers, however long that takes; stop
    the process on a Redis that evicts keys (it would drop jobs and results)."""
    delay = 0.5
    while True:
        try:
            worker = make_worker()
            worker.connection.ping()
            refuse_an_evicting_redis(worker.connection)
            return worker
        except RedisError as exc:
            log.warning("waiting for Redis: %s", exc)
            time.sleep(delay)
            delay = min(delay * 2, 10)


def refuse_an_evicting_redis(redis) -> None:
    """Stop the process (SystemExit, saying what to set) on a Redis that evicts keys."""
    try:
        check_eviction(redis)
    except EvictingRedis as exc:
        log.error("refusing to work: %s", exc)
        raise SystemExit(f"error: {exc}") from None


def supervise(make_worker, **work_kwargs) -> None:
    """Run `make_worker().work()` until a stop is asked; restart it after a Redis outage."""
    stopping = {"flag": False}
    while not stopping["flag"]:
        worker = _make_when_redis_answers(make_worker)
        original = worker.request_stop

        def request_stop(signum, frame, original=original):
            stopping["flag"] = True
            original(signum, frame)

        worker.request_stop = request_stop
        try:
            worker.work(**work_kwargs)
        except RedisError as exc:
            log.warning("worker loop ended on a Redis error: %s", exc)
        except Exception:
            log.exception("worker loop ended on an error")
        if worker._stop_requested:
            stopping["flag"] = True
        if not stopping["flag"]:
            log.warning("restarting the worker loop")
            time.sleep(1)


def numbered(settings: Settings, role: str, build):
    """A worker factory for `supervise`: a new Redis connection and a fresh name on every (re)start
    (`role-host-pid-1`, `-2`, ...), since RQ refuses a name whose registration has not expired yet."""
    base = f"{role}-{socket.gethostname()}-{os.getpid()}"
    count = 0

    def make_worker():
        nonlocal count
        count += 1
        return build(connect(settings), f"{base}-{count}")

    return make_worker


def run_gpu_worker(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    setup_logging("worker")
    redis = connect(settings)
    redis.set_retry(Retry(NoBackoff(), 0))  # one look: a Redis that does not answer is waited for later
    try:  # refused before the model code is imported and the model loaded (minutes), not after
        refuse_an_evicting_redis(redis)
    except RedisError:
        pass  # not answering yet: waited for once the model is loaded, and checked then
    finally:
        redis.close()

    from .execution import Executor
    from .model_host import load_model
    from .probes import HEALTH, serve_probes

    from model.decode_budget import map_large_blocks

    if settings.worker_probe_port:  # answering (not ready) while the model is fetched, loaded and warmed
        serve_probes(settings.host, settings.worker_probe_port)
    map_large_blocks()  # decoded input images go back to the system when freed
    executor = Executor(load_model(settings), open_store(settings), settings)
    wait_until_writable(executor.store, log)
    HEALTH.loaded()
    supervise(numbered(settings, "gpu", gpu_worker_builder(settings, executor)),
              logging_level=os.environ.get("RQ_LOG_LEVEL", "WARNING"))


def gpu_worker_builder(settings: Settings, executor):
    """`build(redis, name)`: the GPU worker on the inference queue, for `numbered` (and for the tests that
    run a worker on a thread of their own process)."""
    from .batch_worker import BatchWorker

    class GpuWorker(PromptMaintenance, BatchWorker):
        maintenance_lock_s = settings.heartbeat_ttl_s

    def build(redis, name):
        inference, _ = queues(redis, settings)
        return GpuWorker([inference], redis, executor, settings, name=name)

    return build


DELIVERER_WAIT_S = 30  # an idle deliverer's workers wait this long in one blocking command


class DeliveryWorker(QuietMaintenance, PromptMaintenance, SimpleWorker):
    """The deliverer's main RQ worker: waits for deliveries in one blocking command, runs the scheduler of
    retries (which sleeps until its next job is due, and ends with this process) and wakes it after each
    delivery, since a delivery that failed schedules its retry and one to a busy host is put back for a
    second. A delivery in progress is not heartbeaten (SimpleWorker runs it itself, with no work horse to
    watch), so its entry in the started registry lasts one attempt's deadline and a little more: the
    delivery of a killed deliverer is retried that long after it started, not 90 s later."""

    @property
    def dequeue_timeout(self) -> int:
        """DELIVERER_WAIT_S, or less while something is due sooner: a started delivery's deadline (a killed
        deliverer's delivery, retried as soon as it lapses) or, without a scheduler, its next claim of the
        scheduler's lock. Read once per wait, in one command."""
        wait = DELIVERER_WAIT_S if self.scheduler_running() else max(1, self.maintenance_interval)
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                for queue in self.queues:
                    pipe.zrange(queue.started_job_registry.key, 0, 0, withscores=True)
                deadlines = [entries[0][1] for entries in pipe.execute() if entries]
        except RedisError:
            return wait  # the wait itself meets the outage and is retried as RQ retries it
        if deadlines:
            wait = min(wait, max(1, math.ceil(min(deadlines) - time.time()) + 1))
        return wait

    @property
    def connection_timeout(self) -> int:
        return DELIVERER_WAIT_S + 10  # the socket outlasts the longest wait

    def get_heartbeat_ttl(self, job) -> int:
        settings = get_settings()
        return int(max(settings.heartbeat_ttl_s, settings.webhook_timeout_s + 5))

    def execute_job(self, job, queue):
        try:
            return super().execute_job(job, queue)
        finally:
            wake_scheduler(self.connection, queue)

    def handle_job_success(self, job, queue, started_job_registry):
        drop_lapsed_executions(job)  # a delivery is deleted when done; see drop_lapsed_executions
        super().handle_job_success(job, queue, started_job_registry)

    def handle_job_failure(self, job, queue, started_job_registry=None, exc_string=""):
        drop_lapsed_executions(job)
        super().handle_job_failure(job, queue, started_job_registry=started_job_registry, exc_string=exc_string)

    def run_maintenance_tasks(self) -> None:
        """Maintenance retries the deliveries of killed deliverers (scheduled with backoff): the scheduler,
        asleep until what was due before, is woken to see them."""
        super().run_maintenance_tasks()
        for queue in self.queues:
            wake_scheduler(self.connection, queue)


class ThreadWorker(DeliveryWorker):
    """A deliverer worker that can run in a thread other than the main one: no signal handlers (the main
    worker of the process takes SIGTERM), a timer, not SIGALRM, for job timeouts, and no maintenance
    (the main worker does it)."""

    death_penalty_class = TimerDeathPenalty
    # Eight of these wait in one idle deliverer: each waits and beats once a minute (its record, which lives
    # worker_ttl + 60 s after a beat, outlives the next beat by a minute).
    heartbeat_every_s = 2 * DELIVERER_WAIT_S - 5

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.worker_ttl = max(self.worker_ttl, 2 * DELIVERER_WAIT_S)

    @property
    def dequeue_timeout(self) -> int:
        return 2 * DELIVERER_WAIT_S  # nothing to come back for: the main worker recovers and schedules

    @property
    def connection_timeout(self) -> int:
        return 2 * DELIVERER_WAIT_S + 10

    def _install_signal_handlers(self) -> None:
        pass

    @property
    def should_run_maintenance_tasks(self) -> bool:
        return False


def _run_in_thread(make_worker, **work_kwargs) -> None:
    """A helper worker's loop: start it again after a Redis outage; dies with the process."""
    while True:
        try:
            _make_when_redis_answers(make_worker).work(**work_kwargs)
        except Exception:
            log.exception("webhook worker thread ended on an error")
        time.sleep(1)


def _helper_workers(settings: Settings, build, count: int, level: str, parent: int) -> None:
    """The deliverer's second process: `count` RQ workers in threads, until the first process ends.
    (A separate process, because the first one forks RQ's scheduler, and forking a process that runs
    threads can leave the child with locks no thread will release.)"""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for index in range(1, count + 1):
        make = numbered(settings, f"webhooks{index}", build)
        threading.Thread(target=_run_in_thread, args=(make,), kwargs={"logging_level": level}, daemon=True,
                         name=f"webhooks-{index}").start()
    while os.getppid() == parent:  # the first process went away (even SIGKILL): so do we
        time.sleep(1)
    os._exit(0)


def run_webhook_deliverer(settings: Settings | None = None) -> None:
    """WEBHOOK_CONCURRENCY RQ workers, so one slow receiver does not hold every delivery: this process's
    worker (signals, the scheduler of retries) and the others in threads of a second process."""
    settings = settings or get_settings()
    setup_logging("webhooks")
    level = os.environ.get("RQ_LOG_LEVEL", "WARNING")

    def builder(cls):
        def build(redis, name):
            _, webhooks = queues(redis, settings)
            worker = cls(
                [webhooks], connection=redis, name=name,
                worker_ttl=max(10, settings.maintenance_interval_s + 5), maintenance_interval=settings.maintenance_interval_s,
            )
            worker.maintenance_lock_s = settings.heartbeat_ttl_s
            return worker

        return build

    helpers = None
    if settings.webhook_concurrency > 1:
        helpers = multiprocessing.get_context("fork").Process(
            target=_helper_workers, name="webhooks-helpers", daemon=True,
            args=(settings, builder(ThreadWorker), settings.webhook_concurrency - 1, level, os.getpid()),
        )
        helpers.start()
    try:
        supervise(numbered(settings, "webhooks", builder(DeliveryWorker)), with_scheduler=True, logging_level=level)
    finally:
        if helpers is not None and helpers.is_alive():
            helpers.terminate()
            helpers.join(10)
