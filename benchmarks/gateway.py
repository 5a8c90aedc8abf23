"""Submissions through our gateway against a bare FastAPI + RQ app, side by side on one Redis.

The bare app validates the same request model and calls `rq.Queue.enqueue`: the least any HTTP gateway
over RQ does. Ours adds API keys (on), the rate, tenant quota and queue bound (all counted, none reached),
the body checks, the plan and the job view. Both run in uvicorn the same way; `hey` (or, without it, a
small asyncio + httpx driver) posts the same text-to-image request at each concurrency for a fixed time.

Per row: submissions/s, p50/p99 latency, API CPU per submission, Redis commands per submission (INFO
commandstats, commands run inside scripts included) and round trips per submission (counted in the API
process: one per command or pipeline sent). Then each app in two processes against one (sharing one
port), at the highest concurrency: the bare app's gain is what the machine leaves room for.

    python -m benchmarks.gateway                    # c = 1, 8, 64; 5 s each (2-3 min)
    python -m benchmarks.gateway --seconds 10 --concurrency 1 8 64 256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import httpx
from redis import Redis

ROOT = Path(__file__).resolve().parents[1]
BODY = {"prompt": "a lighthouse at dusk", "width": 512, "height": 512, "num_inference_steps": 30, "seed": 7}
PATH = "/v1/text-to-image"
COUNTER_PATH = "/_bench/redis-round-trips"


# ---- the servers (run as `python -m benchmarks.gateway --serve ours|bare`) ----------------------------------
def _count_round_trips() -> list[int]:
    """Count every request redis-py sends (a command, or a pipeline as one) in this process."""
    from redis.connection import AbstractConnection

    sent = [0]
    original = AbstractConnection.send_packed_command
    lock = threading.Lock()

    def counted(self, command, check_health=True):
        with lock:
            sent[0] += 1
        return original(self, command, check_health)

    AbstractConnection.send_packed_command = counted
    return sent


def bare_app():
    """FastAPI + RQ and nothing else: validate the request model, enqueue, answer the id."""
    from fastapi import FastAPI
    from rq import Queue

    from app.schemas import REQUEST_MODELS
    from core.connection import connect
    from core.settings import get_settings

    model = REQUEST_MODELS["text-to-image"]
    settings = get_settings()
    queue = Queue(settings.queue_prefix, connection=connect(settings))
    app = FastAPI()

    def submit(body):
        job = queue.enqueue("worker.entry.run_job", "text-to-image", body.model_dump(mode="json"))
        return {"id": job.id, "status": "queued"}

    submit.__annotations__ = {"body": model}  # the model itself, not its name (annotations are strings here)

    app.add_api_route(PATH, submit, methods=["POST"], status_code=202)
    return app


def serve(kind: str, port: int) -> None:
    import uvicorn
    from fastapi.responses import PlainTextResponse

    sent = _count_round_trips()
    if kind == "ours":
        from app.main import create_app

        app = create_app()
    else:
        app = bare_app()
    app.add_api_route(COUNTER_PATH, lambda: PlainTextResponse(str(sent[0])), methods=["GET"], include_in_schema=False)
    # several processes may serve one port (SO_REUSEPORT: the kernel spreads the connections)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(app, fd=sock.fileno(), log_level="warning", access_log=False, log_config=None,
                            timeout_keep_alive=75, backlog=2048)
    uvicorn.Server(config).run()


# ---- the bench -------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not come up in {timeout:.0f} s")


@dataclass
class Server:
    kind: str
    port: int
    processes: list

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_s(self) -> float:
        total = 0.0
        for process in self.processes:
            fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def round_trips(self) -> Optional[int]:
        """The API's count (one process only: several processes behind one port answer at random)."""
        if len(self.processes) != 1:
            return None
        return int(httpx.get(self.url + COUNTER_PATH, timeout=10).text)

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGINT)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def start_server(kind: str, env: dict, processes: int, logs: Path) -> Server:
    port = free_port()
    started = []
    for index in range(processes):
        log = open(logs / f"{kind}-{port}-{index}.log", "ab")
        started.append(subprocess.Popen([sys.executable, "-m", "benchmarks.gateway", "--serve", kind, "--port", str(port)],
                                        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    server = Server(kind, port, started)
    wait_for(lambda: httpx.get(server.url + COUNTER_PATH, timeout=2).status_code == 200, 60, f"the {kind} app")
    return server


@dataclass
class Load:
    ok: int
    other: dict
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.ok / self.seconds


def drive_hey(url: str, headers: dict, concurrency: int, seconds: float) -> Load:
    command = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-T", "application/json",
               "-d", json.dumps(BODY), "-o", "csv"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    started = time.perf_counter()
    out = subprocess.run(command + [url + PATH], capture_output=True, text=True, check=True).stdout
    elapsed = time.perf_counter() - started
    rows = [line.split(",") for line in out.splitlines()[1:] if line]
    latencies = sorted(float(row[0]) for row in rows)
    codes: dict[int, int] = {}
    for row in rows:
        codes[int(row[6])] = codes.get(int(row[6]), 0) + 1
    span = max((float(row[7]) + float(row[0]) for row in rows), default=elapsed)  # first send to last answer
    ok = codes.pop(202, 0)
    return Load(ok, codes, span, _percentile(latencies, 0.5), _percentile(latencies, 0.99))


def _percentile(sorted_s: list[float], q: float) -> float:
    return sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))] * 1000 if sorted_s else float("nan")


def drive_asyncio(url: str, headers: dict, concurrency: int, seconds: float) -> Load:
    """The same load without hey: `concurrency` clients posting back to back for `seconds`."""
    async def run() -> Load:
        latencies: list[float] = []
        codes: dict[int, int] = {}
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:
            start = time.perf_counter()
            deadline = start + seconds

            async def client_loop():
                while time.perf_counter() < deadline:
                    sent = time.perf_counter()
                    response = await client.post(PATH, json=BODY)
                    latencies.append(time.perf_counter() - sent)
                    codes[response.status_code] = codes.get(response.status_code, 0) + 1

            await asyncio.gather(*(client_loop() for _ in range(concurrency)))
            elapsed = time.perf_counter() - start
        latencies.sort()
        ok = codes.pop(202, 0)
        return Load(ok, codes, elapsed, _percentile(latencies, 0.5), _percentile(latencies, 0.99))

    return asyncio.run(run())


@dataclass
class Row:
    app: str
    concurrency: int
    processes: int
    load: Load
    cpu_ms: float
    commands: float
    round_trips: Optional[float]


def command_count(redis: Redis) -> int:
    stats = redis.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info",))


def measure(server: Server, redis: Redis, headers: dict, concurrency: int, seconds: float, drive, processes: int = 1) -> Row:
    drive(server.url, headers, concurrency, min(1.0, seconds))  # warm: connections, pools, scripts
    cpu0, commands0, trips0 = server.cpu_s(), command_count(redis), server.round_trips()
    load = drive(server.url, headers, concurrency, seconds)
    cpu1, commands1, trips1 = server.cpu_s(), command_count(redis), server.round_trips()
    n = max(load.ok + sum(load.other.values()), 1)
    trips = None if trips0 is None else (trips1 - trips0) / n
    return Row(server.kind, concurrency, processes, load, (cpu1 - cpu0) * 1000 / n, (commands1 - commands0) / n, trips)


def main(argv=None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", choices=("ours", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run (default 5)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--driver", choices=("hey", "asyncio"), default="hey" if shutil.which("hey") else "asyncio")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return []

    from core.local_redis import find_redis_server

    from app.api_keys import KeyStore
    from core.connection import keys_for

    drive = drive_hey if args.driver == "hey" else drive_asyncio
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    redis_port = free_port()
    redis_server = subprocess.Popen([find_redis_server(), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    redis = Redis(port=redis_port)
    wait_for(redis.ping, 10, "redis-server")
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "RESULTS_DIR": str(tmp / "results"), "AUTH_DISABLED": "false",
        # every limit is counted on every request, none is reached
        "RATE_LIMIT_PER_MINUTE": "1000000000", "MAX_ACTIVE_JOBS_PER_TENANT": "1000000000", "MAX_QUEUE_DEPTH": "1000000000",
        "LOG_LEVEL": "INFO",  # as deployed: an access line per request, a line per queued job
    }
    settings_prefix = {"ours": "bench-ours", "bare": "bench-bare"}
    key, _ = KeyStore(redis, keys_for(settings_prefix["ours"])).create("bench")
    headers = {"ours": {"Authorization": f"Bearer {key}"}, "bare": {}}
    rows: list[Row] = []
    servers: list[Server] = []
    try:
        ours = start_server("ours", {**env, "QUEUE_PREFIX": settings_prefix["ours"]}, 1, tmp)
        bare = start_server("bare", {**env, "QUEUE_PREFIX": settings_prefix["bare"]}, 1, tmp)
        servers += [ours, bare]
        print(f"driver: {args.driver}; {args.seconds:g} s per run; our API with keys on, every limit counted; "
              f"{os.cpu_count()} CPU cores", flush=True)
        for concurrency in args.concurrency:
            for server in (bare, ours):
                rows.append(measure(server, redis, headers[server.kind], concurrency, args.seconds, drive))
                print_row(rows[-1])
        ours.stop(), bare.stop()
        servers.clear()
        top = max(args.concurrency)
        for kind in ("ours", "bare"):  # the bare app's own gain says what this machine allows
            for processes in (1, 2):
                server = start_server(kind, {**env, "QUEUE_PREFIX": settings_prefix[kind]}, processes, tmp)
                servers.append(server)
                rows.append(measure(server, redis, headers[kind], top, args.seconds, drive, processes))
                print_row(rows[-1])
                server.stop()
                servers.remove(server)
    finally:
        for server in servers:
            server.stop()
        redis_server.terminate()
        redis_server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print_summary(rows, args.concurrency)
    if args.json:
        args.json.write_text(json.dumps([{**row.__dict__, "load": row.load.__dict__} for row in rows], indent=1))
    return rows


def print_row(row: Row) -> None:
    trips = "-" if row.round_trips is None else f"{row.round_trips:.1f}"
    other = f" other answers {row.load.other}" if row.load.other else ""
    print(f"{row.app:5} x{row.processes} c={row.concurrency:<4} {row.load.rate:8.1f} /s  p50 {row.load.p50_ms:7.1f} ms  "
          f"p99 {row.load.p99_ms:7.1f} ms  cpu {row.cpu_ms:5.2f} ms  redis {row.commands:5.1f} commands {trips} round trips"
          f"{other}", flush=True)


def print_summary(rows: list[Row], levels: list[int]) -> None:
    print("\n| concurrency | bare /s | ours /s | ratio | bare p99 ms | ours p99 ms | p99 ratio | CPU ms bare / ours "
          "| commands bare / ours | round trips bare / ours |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for level in levels:
        bare = next(r for r in rows if r.app == "bare" and r.concurrency == level)
        ours = next(r for r in rows if r.app == "ours" and r.concurrency == level and r.processes == 1)
        print(f"| {level} | {bare.load.rate:.0f} | {ours.load.rate:.0f} | {ours.load.rate / bare.load.rate:.2f}x "
              f"| {bare.load.p99_ms:.1f} | {ours.load.p99_ms:.1f} | {ours.load.p99_ms / bare.load.p99_ms:.2f}x "
              f"| {bare.cpu_ms:.2f} / {ours.cpu_ms:.2f} | {bare.commands:.1f} / {ours.commands:.1f} "
              f"| {bare.round_trips:.1f} / {ours.round_trips:.1f} |")
    print()
    for kind in ("ours", "bare"):
        one, two = (next(r for r in rows[-4:] if r.app == kind and r.processes == n) for n in (1, 2))
        print(f"{kind} app, c={one.concurrency}: 1 process {one.load.rate:.0f} /s, 2 processes {two.load.rate:.0f} /s "
              f"({two.load.rate / one.load.rate:.2f}x)")


if __name__ == "__main__":
    main()
