"""The in-process service tier: the gateway under FastAPI's TestClient and a GPU worker on a thread of the
test's own process, on a real Redis and the real pipeline (demo checkpoint), with no webhook deliverer.

For service tests where a real process adds nothing (what the API answers, what a job produces, how jobs
are ordered): no uvicorn to start, no model to load per stack (one per pytest worker, `worker_model`).
Kills, restarts, timeouts of real connections, webhooks over HTTP and browsers keep the full stacks of
tests/service/harness.py. Both ask through `StackCalls` (`submit`, `job`, `wait_job`, `cli`, `redis`), and
have `client`, `tmp`, `prefix`, `env`, `start_worker` and `logs`."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from rq.timeouts import TimerDeathPenalty

from core.connection import connect
from core.settings import Settings, get_settings
from core.storage import open_store
from tests.service.harness import StackCalls, stack_env, wait_until

URL = "http://api.test"  # the TestClient's base URL; output URLs carry it and the client follows them


def worker_settings(tmp: Path, redis_url: str, checkpoint: Path) -> Settings:
    """The settings a test worker's model is loaded with (precision, attention and fast path as a stack's)."""
    return Settings.from_env(stack_env(tmp, redis_url, checkpoint, URL, "odload"))


class _Records(logging.Handler):
    """Every log line of the process while a stack runs, for `logs()` as a full stack's log files give it."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name} [{record.threadName}] {record.getMessage()}")


class InProcessService(StackCalls):
    poll_s = 0.05  # no HTTP between test and API: asking is cheap
    def __init__(self, tmp: Path, redis_url: str, checkpoint: Path, model, workers: int = 1, **settings):
        from app.main import create_app
        from worker.execution import Executor
        from worker.main import gpu_worker_builder

        self.tmp = tmp
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.url = URL
        self.prefix = "odtest" + uuid.uuid4().hex[:8]
        self.env = stack_env(tmp, redis_url, checkpoint, URL, self.prefix, **settings)
        self.settings = Settings.from_env(self.env)
        # code that reads the settings of its process (RQ callbacks, jobs) sees this stack's while it runs; a
        # full stack started meanwhile would take this environment as its base, so a test uses one kind or the other
        self._environ = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env)
        get_settings.cache_clear()
        self.client = TestClient(create_app(self.settings), base_url=URL)
        self.client.__enter__()  # the app's lifespan
        self._records = _Records()
        logging.getLogger().addHandler(self._records)  # after create_app: it sets the process's logging up
        self.workers = []
        self.threads: list[threading.Thread] = []
        self._build = gpu_worker_builder(self.settings, Executor(model, open_store(self.settings), self.settings))
        for _ in range(workers):
            self.start_worker(wait_ready=False)
        if workers:
            self.wait_ready(workers)

    def start_worker(self, wait_ready: bool = True) -> str:
        """One more GPU worker, on a thread of its own."""
        worker = self._build(connect(self.settings), f"gpu-inprocess-{uuid.uuid4().hex[:8]}")
        worker._install_signal_handlers = lambda: None  # not the main thread; stop() ends the loop
        worker.death_penalty_class = TimerDeathPenalty  # SIGALRM is the main thread's
        worker.watchdog.exit = lambda code: None  # a stall must not end the test run
        thread = threading.Thread(target=worker.work, kwargs={"logging_level": "WARNING"},
                                  name=f"test-worker-{len(self.threads)}", daemon=True)
        thread.start()
        self.workers.append(worker)
        self.threads.append(thread)
        if wait_ready:
            self.wait_ready(len(self.workers))
        return worker.name

    def wait_ready(self, count: int, timeout: float = 60) -> None:
        wait_until(lambda: self.ready_workers() >= count, timeout, interval=0.1, what=f"{count} in-process worker(s)")

    def ready_workers(self) -> int:
        response = self.client.get("/readyz")
        return response.json().get("worker_count", 0) if response.status_code == 200 else 0

    def logs(self, full: bool = False) -> str:
        """What the gateway and the workers logged while this stack ran (the last 4000 characters unless `full`)."""
        text = "\n".join(self._records.lines)
        return text if full else text[-4000:]

    def stop(self) -> None:
        for worker in self.workers:
            worker._stop_requested = True  # seen between batches, within a dequeue wait (1 s)
        for thread in self.threads:
            thread.join(30)
        self.client.__exit__(None, None, None)
        logging.getLogger().removeHandler(self._records)
        os.environ.clear()
        os.environ.update(self._environ)
        get_settings.cache_clear()
