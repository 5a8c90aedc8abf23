"""Service load benchmark: a mixed set of jobs through the API to one worker, batching off and on.

    python -m benchmarks.service                         # the demo checkpoint on this machine's device
    ONEDIFFUSION_MODEL=/models/onediffusion python -m benchmarks.service --jobs 64 --size 1024

Starts its own Redis, API, worker and deliverer (the test harness's), submits all jobs at once, and
prints images per minute and p50/p99 latency (submission to result) for MAX_BATCH=1 and MAX_BATCH=N.
Run from the repository root."""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from tests.service.harness import RedisServer, Service


def mixed_jobs(count: int, size: int, steps: int, seed: int) -> list[tuple[str, dict]]:
    """Text-to-image and a two-frame task at one or two sizes, so some jobs can share a batch."""
    from tests.conftest import b64_image

    rng = random.Random(seed)
    image = b64_image(size, size)
    jobs = []
    for i in range(count):
        s = rng.choice([size, size // 2]) // 16 * 16
        if rng.random() < 0.6:
            jobs.append(("text-to-image", {"prompt": f"job {i}", "width": s, "height": s, "num_inference_steps": steps, "seed": i}))
        else:
            jobs.append(("depth-estimation", {"image": image, "width": s, "height": s, "num_inference_steps": steps, "seed": i}))
    return jobs


def seconds(job: dict) -> float:
    parse = lambda v: datetime.fromisoformat(v.replace("Z", "+00:00"))  # noqa: E731
    return (parse(job["finished_at"]) - parse(job["created_at"])).total_seconds()


def run(service: Service, jobs: list[tuple[str, dict]]) -> dict:
    started = time.monotonic()
    ids = [service.submit(task, payload).json()["id"] for task, payload in jobs]
    finished = [service.wait_job(job_id, timeout=3600) for job_id in ids]
    wall = time.monotonic() - started
    latencies = sorted(seconds(j) for j in finished)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    sizes = [j["timings"].get("batch_size", 1) for j in finished if j["status"] == "succeeded"]
    return {
        "jobs": len(ids),
        "succeeded": sum(j["status"] == "succeeded" for j in finished),
        "images_per_minute": round(60 * len(ids) / wall, 1),
        "latency_p50_s": round(q[49], 2),
        "latency_p99_s": round(q[98], 2),
        "mean_batch_size": round(sum(sizes) / max(1, len(sizes)), 2),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--window-ms", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from model.demo_checkpoint import make_demo_checkpoint

    jobs = mixed_jobs(args.jobs, args.size, args.steps, args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        root = Path(tmp)
        checkpoint = make_demo_checkpoint(root / "checkpoint")
        redis = RedisServer(root / "redis")
        redis.start()
        try:
            for max_batch in (1, args.max_batch):
                model = {"onediffusion_model": os.environ["ONEDIFFUSION_MODEL"]} if os.environ.get("ONEDIFFUSION_MODEL") else {}
                service = Service(root / f"batch{max_batch}", redis.url, checkpoint, max_batch=max_batch,
                                  batch_window_ms=args.window_ms, max_active_jobs_per_tenant=0, max_queue_depth=0, **model)
                try:
                    figures = {"max_batch": max_batch, **run(service, jobs)}
                finally:
                    service.stop()
                print(json.dumps(figures), flush=True)
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
