"""What waiting for a replica costs a submission (REDIS_WAIT_REPLICAS): p50/p99 of POST /v1/text-to-image
against a Redis master with one replica, with the wait (1) and without it (0), side by side.

    python -m benchmarks.redis_wait                  # 200 submissions per setting, one client
    python -m benchmarks.redis_wait --jobs 500 --clients 8

Starts its own master (append-only, fsync always) and replica, and one API process per setting (no
worker: the jobs stay queued). Also times the barrier alone (PUBLISH + WAIT on one connection) in this
process. Run from the repository root."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.service.harness import Service
from tests.service.replicated_redis import ReplicatedRedis

PAYLOAD = {"prompt": "wait cost", "width": 64, "height": 64, "num_inference_steps": 1}


def percentiles(values: list[float]) -> dict:
    q = statistics.quantiles(values, n=100)
    return {"p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2), "mean_ms": round(statistics.mean(values) * 1000, 2)}


def submissions(service: Service, jobs: int, clients: int) -> list[float]:
    def one(_):
        started = time.perf_counter()
        response = service.submit("text-to-image", PAYLOAD)
        assert response.status_code == 202, response.text
        return time.perf_counter() - started

    for _ in range(10):  # warm the connections
        one(None)
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(jobs)))


def barrier_alone(redis_set: ReplicatedRedis, count: int) -> list[float]:
    from core.connection import connect, wait_replicated
    from core.settings import Settings

    settings = Settings.from_env({"REDIS_URL": f"redis://127.0.0.1:{redis_set.ports['a']}/0", "REDIS_WAIT_REPLICAS": "1"})
    redis = connect(settings)
    times = []
    for i in range(count):
        redis.set("bench:key", i)
        started = time.perf_counter()
        assert wait_replicated(redis, settings) == 1
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200, help="submissions per setting and round")
    parser.add_argument("--clients", type=int, default=1, help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=2, help="alternate the settings this many times (drift evens out)")
    args = parser.parse_args()
    from model.demo_checkpoint import make_demo_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = make_demo_checkpoint(root / "checkpoint")  # the API never loads it; the harness wants one
        redis_set = ReplicatedRedis(root / "redis", sentinels=0)
        redis_set.start()
        url = f"redis://127.0.0.1:{redis_set.ports['a']}/0"
        common = dict(workers=0, deliverer=False, max_queue_depth=0, max_active_jobs_per_tenant=0)
        services = {wait: Service(root / f"api-wait{wait}", url, checkpoint, redis_wait_replicas=wait, **common)
                    for wait in (0, 1)}
        try:
            results: dict[int, list[float]] = {0: [], 1: []}
            for _ in range(args.rounds):
                for wait, service in services.items():
                    results[wait] += submissions(service, args.jobs, args.clients)
            barrier = barrier_alone(redis_set, args.jobs)
        finally:
            for service in services.values():
                service.stop()
            redis_set.stop()
    print(f"{args.jobs * args.rounds} submissions per setting, {args.clients} client(s); master (appendfsync always) + 1 replica")
    without, with_wait = percentiles(results[0]), percentiles(results[1])
    print(f"  REDIS_WAIT_REPLICAS=0: {without}")
    print(f"  REDIS_WAIT_REPLICAS=1: {with_wait}")
    print(f"  cost of the wait: p50 +{with_wait['p50_ms'] - without['p50_ms']:.2f} ms, "
          f"p99 +{with_wait['p99_ms'] - without['p99_ms']:.2f} ms (x{with_wait['p50_ms'] / without['p50_ms']:.2f} at p50)")
    print(f"  the barrier alone (PUBLISH + WAIT 1, in-process): {percentiles(barrier)}")


if __name__ == "__main__":
    main()
