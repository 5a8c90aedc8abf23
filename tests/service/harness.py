"""Real processes for service tests: Redis, the API (uvicorn), workers, the webhook deliverer, and a
local webhook receiver that can be taken down and brought back."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

import httpx

from tests.service.forked import CLI, Launcher  # noqa: F401  (CLI: for the tests that start processes themselves)

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = ("succeeded", "failed", "canceled")


_launcher: Optional[Launcher] = None


def launcher() -> Launcher:
    """This session's launcher of service processes (tests/service/forked.py); closed at the session's end."""
    global _launcher
    if _launcher is None:
        _launcher = Launcher()
    return _launcher


def close_launcher() -> None:
    if _launcher is not None:
        _launcher.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_address() -> str:
    """A second loopback address, where the tests' servers of input images listen: the API fetches images
    from loopback only at an address IMAGE_URL_ALLOWLIST names exactly (the harness names this one), and
    for the webhook limits it is another destination than 127.0.0.1."""
    return "127.0.0.2"


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class RedisServer:
    """A redis-server of our own (append-only, fsync always) that can be restarted on the same data."""

    def __init__(self, data_dir: Path):
        from core.local_redis import find_redis_server

        self.binary = find_redis_server()
        self.port = free_port()
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        from core.local_redis import answers

        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: answers(self.url), 10, what="redis-server")

    def stop(self) -> None:
        """SIGTERM, repeated every half second for up to 10 s: a replica that has just synced refuses a
        shutdown while it writes its first append-only file ("Writing initial AOF, can't exit") and does
        not try again by itself."""
        if self.process and self.process.poll() is None:
            deadline = time.monotonic() + 10
            while True:
                self.process.terminate()
                try:
                    self.process.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                    return
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= deadline:
                        raise


def stack_env(tmp: Path, redis_url: str, checkpoint: Path, url: str, prefix: str, **settings) -> dict[str, str]:
    """A test stack's environment: this one's, with the stack's Redis, folders and short test timings,
    then `settings` (names in lower case, as the settings' fields)."""
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DEMO_CHECKPOINT_DIR": str(checkpoint),
        "RESULTS_DIR": str(tmp / "results"),
        "PUBLIC_URL": url,
        "QUEUE_PREFIX": prefix,
        "HEARTBEAT_TTL_S": "4",
        "MAINTENANCE_INTERVAL_S": "1",
        "WEBHOOK_BACKOFF_S": "0.5",
        "WEBHOOK_TIMEOUT_S": "2",
        "ONEDIFFUSION_ATTENTION": "math",
        "AUTH_DISABLED": "true",  # tests of keys and tenants turn it off explicitly
        "WEBHOOK_ALLOWLIST": "127.0.0.1",  # the local receiver
        "IMAGE_URL_ALLOWLIST": local_address(),  # the tests' image servers
        "RATE_LIMIT_PER_MINUTE": "0",
        "PYTHONUNBUFFERED": "1",
        **{k.upper(): str(v) for k, v in settings.items()},
    }
    port = url.rsplit(":", 1)[-1]
    if port.isdigit():  # a stack served over HTTP (the in-process one has none)
        env.setdefault("PORT", port)
    if "onediffusion_model" not in settings:
        env.pop("ONEDIFFUSION_MODEL", None)  # the demo checkpoint unless a test names a model
    return env


class StackCalls:
    """What a test asks of a stack through its `client` and `env`, the same for a full stack (`Service`)
    and an in-process one (tests/service/inprocess.py)."""

    client: httpx.Client
    env: dict[str, str]
    poll_s = 0.2  # how often wait_job asks

    def submit(self, task: str, payload: dict, headers: Optional[dict] = None) -> httpx.Response:
        return self.client.post(f"/v1/{task}", json=payload, headers=headers or {})

    def cli(self, *args: str) -> str:
        """Run an `onediffusion` command (a process of its own) with this stack's settings; its stdout."""
        result = launcher().run(list(args), self.env, Path.cwd())
        if result.returncode != 0:
            raise RuntimeError(result.stderr or result.stdout)
        return result.stdout

    def job(self, job_id: str) -> dict:
        return self.client.get(f"/v1/jobs/{job_id}").json()

    def wait_job(self, job_id: str, timeout: float = 120, until=TERMINAL) -> dict:
        return wait_until(lambda: (lambda j: j if j["status"] in until else None)(self.job(job_id)), timeout,
                          self.poll_s, f"job {job_id}")

    def redis(self):
        from redis import Redis

        return Redis.from_url(self.env["REDIS_URL"])


class Service(StackCalls):
    """The API, `workers` GPU workers and the webhook deliverer, as subprocesses with their own settings."""

    def __init__(self, tmp: Path, redis_url: str, checkpoint: Path, workers: int = 1, deliverer: bool = True, **settings):
        self.tmp = tmp
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prefix = "odtest" + uuid.uuid4().hex[:8]
        self.env = stack_env(tmp, redis_url, checkpoint, self.url, self.prefix, **settings)
        self.processes: dict[str, subprocess.Popen] = {}
        self.worker_count = 0
        self.client = httpx.Client(base_url=self.url, timeout=30)
        # every process starts at once (the workers load their model while the API starts), then the API
        # and the workers are waited for
        self.start("api", "serve")
        for _ in range(workers):
            self.start_worker(wait_ready=False)
        if deliverer:
            self.start("webhooks", "webhooks")
        wait_until(self._api_up, 30, what="the API")
        if workers:
            self.wait_ready(self.worker_count)

    def start(self, name: str, command: str, **env) -> subprocess.Popen:
        environment = {**self.env, **{k.upper(): str(v) for k, v in env.items()}}
        process = launcher().popen([command], environment, self.tmp, self.tmp / f"{name}.log")
        self.processes[name] = process
        return process

    def start_api(self) -> None:
        self.start("api", "serve")
        wait_until(self._api_up, 30, what="the API")

    def _api_up(self) -> bool:
        try:
            return self.client.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(self, wait_ready: bool = True, **env) -> str:
        """One more worker (`env`: settings of its own); waits until it is ready unless told not to."""
        self.worker_count += 1
        name = f"worker{self.worker_count}"
        self.start(name, "worker", **env)
        if wait_ready:
            self.wait_ready(self.worker_count)
        return name

    def ready_workers(self) -> int:
        try:
            response = self.client.get("/readyz")
        except httpx.HTTPError:
            return 0
        if response.status_code != 200:
            return 0
        body = response.json()
        return body.get("worker_count", len(body.get("workers", [])))

    def wait_ready(self, count: int = 1, timeout: float = 90) -> None:
        wait_until(lambda: self.ready_workers() >= count, timeout, interval=0.3, what=f"{count} ready worker(s)")

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        process = self.processes[name]
        process.send_signal(sig)
        process.wait(30)

    def stop(self) -> None:
        stop_processes(self.processes.values(), 20)
        self.client.close()

    def logs(self, full: bool = False) -> str:
        """The processes' logs (the last 4000 characters of each unless `full`)."""
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[None if full else -4000:]}" for p in sorted(self.tmp.glob("*.log"))
        )


def stop_processes(processes, grace_s: float) -> None:
    """SIGTERM to every process still running, then SIGKILL to any that is not gone `grace_s` later (one
    deadline for all of them, not one each)."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class WebhookReceiver:
    """An HTTP server that records POSTs; `down()` closes its port, `up()` opens it again."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.port = free_port()
        self.calls: list[dict] = []
        self.lock = threading.Lock()
        self.server: Optional[ThreadingHTTPServer] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.calls.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                                           "json": json.loads(body)})
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer((self.host, self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def events(self) -> list[str]:
        with self.lock:
            return [c["json"]["event"] for c in self.calls]


class StalledReceiver:
    """A webhook receiver that accepts each POST and then trickles a header line a second for a minute
    (a per-read timeout never fires); `connections` counts the attempts it saw."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.port = free_port()
        self.connections = 0
        self.open: list[socket.socket] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, self.port))
        self.sock.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/stall"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.open.append(conn)
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    @staticmethod
    def _trickle(conn) -> None:
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for _ in range(60):
                conn.sendall(b"X-Slow: 1\r\n")
                time.sleep(1)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        """Stop listening and cut the calls in progress (so a deliverer stopping after the test does not
        wait out their deadline)."""
        self.sock.close()
        for conn in self.open:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# ---- a running service's keys and queue, as the tests read them --------------------------------------------
def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def new_key(service, tenant: str) -> tuple[str, str]:
    """(key, key id) made with the CLI."""
    out = service.cli("keys", "create", "--tenant", tenant, "--name", f"{tenant} test")
    key_id = out.split()[2]
    return out.strip().splitlines()[-1], key_id


def create_key(service, tenant: str) -> str:
    """A key made with the CLI (no name): the key alone."""
    return service.cli("keys", "create", "--tenant", tenant).strip().splitlines()[-1]


def queue_size(service) -> int:
    from rq import Queue

    return Queue(service.prefix, connection=service.redis()).count


def job_keys(service) -> int:
    return len(service.redis().keys("rq:job:*"))


def signature_valid(secret: str, timestamp: str, body, signature: str, tolerance_s: float = 300) -> bool:
    """What a receiver of the service's first signature format checks: this secret's OneDiffusion-Signature
    of the body, with a timestamp of the last `tolerance_s` seconds."""
    import hmac

    from core.signing import sign

    fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) <= tolerance_s
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)
