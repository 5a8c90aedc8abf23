"""The worker's probe port: `/livez` and `/readyz` over plain HTTP, for Kubernetes (or any supervisor).

A GPU worker serves no HTTP otherwise, and its Redis heartbeat comes from a thread, so it stays fresh
while the main thread is stuck; these answers come from what the worker itself knows:

    /readyz  200 once the model is loaded and warmed and the worker takes jobs; 503 while it loads (the
             startup probe waits for this), and from the moment the watchdog gives up on it.
    /livez   200 while the process is sound; 503 once the watchdog found the main thread stuck (it then
             hands the jobs back and exits; the probe is the backstop should that exit not come).

Served by a thread of the worker process (the standard library's HTTP server: two fixed answers do not
need more), on HOST:WORKER_PROBE_PORT.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

log = logging.getLogger(__name__)


class WorkerHealth:
    """What the probes report, set by the worker as it starts, works and gives up."""

    def __init__(self):
        self.lock = threading.Lock()
        self.started = time.time()
        self.model_ready = False
        self.taking_jobs = False
        self.failure: Optional[str] = None
        self.details: Callable[[], dict] = dict  # more fields for the answers (the watchdog's view)

    def loaded(self) -> None:
        with self.lock:
            self.model_ready = True

    def working(self, value: bool = True) -> None:
        with self.lock:
            self.taking_jobs = value

    def failed(self, reason: str) -> None:
        with self.lock:
            self.failure = reason

    def live(self) -> tuple[bool, dict]:
        with self.lock:
            failure = self.failure
        answer = {"status": "stalled" if failure else "alive", **self.details()}
        if failure:
            answer["reason"] = failure
        return failure is None, answer

    def ready(self) -> tuple[bool, dict]:
        with self.lock:
            failure, model_ready, taking_jobs = self.failure, self.model_ready, self.taking_jobs
        if failure:
            return False, {"status": "unavailable", "reason": failure}
        if not model_ready:
            return False, {"status": "loading", "reason": "the model is being fetched, loaded or warmed",
                           "seconds": round(time.time() - self.started, 1)}
        if not taking_jobs:
            return False, {"status": "unavailable", "reason": "the worker loop is not running (waiting for Redis?)"}
        return True, {"status": "ready", **self.details()}


HEALTH = WorkerHealth()  # one GPU worker per process


def serve_probes(host: str, port: int, health: WorkerHealth = HEALTH) -> ThreadingHTTPServer:
    """Start answering /livez and /readyz on host:port in a daemon thread; returns the server."""
    routes = {"/livez": health.live, "/readyz": health.ready}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            check = routes.get(self.path.split("?", 1)[0])
            if check is None:
                ok, body = False, {"status": "not found", "paths": sorted(routes)}
                code = 404
            else:
                ok, body = check()
                code = 200 if ok else 503
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # probes every few seconds: not worth a log line each
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    log.info("worker probes on http://%s:%d/livez and /readyz", host, server.server_address[1])
    return server
