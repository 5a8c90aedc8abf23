"""Fault scenarios against a real stack, each returning figures: what was accepted, how it ended, how long.

Used bounded by `tests/chaos/test_chaos.py` (in CI) and at any size by `python -m tests.chaos.run`.
"""

from __future__ import annotations

import random
import signal
import statistics
import threading
import time
from typing import Optional

import httpx

from tests.service.harness import TERMINAL, RedisServer, Service, WebhookReceiver, signature_valid, wait_until

SECRET = "chaos-webhook-secret"


def signed(call: dict, tolerance_s: float = 300) -> bool:
    """The call carries this secret's OneDiffusion-Signature of its body, with a timestamp of the last
    `tolerance_s` seconds (what a receiver of the service's first format checks)."""
    return signature_valid(SECRET, call["headers"]["onediffusion-timestamp"], call["body"],
                           call["headers"]["onediffusion-signature"], tolerance_s)


def job_payload(rng: random.Random, steps: tuple[int, int] = (6, 16)) -> dict:
    size = rng.choice([64, 96, 128])
    return {"prompt": f"chaos {rng.random():.6f}", "width": size, "height": size,
            "num_inference_steps": rng.randint(*steps), "seed": rng.randrange(2**31)}


def submit_with_retry(service: Service, payload: dict, deadline: float) -> Optional[str]:
    """Submit until accepted (202) or the deadline; None when never accepted (e.g. Redis was down)."""
    while time.monotonic() < deadline:
        try:
            response = service.submit("text-to-image", payload)
        except httpx.HTTPError:
            response = None
        if response is not None and response.status_code == 202:
            return response.json()["id"]
        time.sleep(0.2)
    return None


def settle(service: Service, ids: list[str], timeout: float) -> dict[str, dict]:
    """Poll every job until it ends or the timeout passes; jobs still open then count as stuck."""
    final: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(final) < len(ids):
        for job_id in ids:
            if job_id in final:
                continue
            try:
                job = service.job(job_id)
            except (httpx.HTTPError, ValueError):
                continue
            if job.get("status") in TERMINAL:
                final[job_id] = job
        time.sleep(0.3)
    return final


def summarise(name: str, ids: list[str], final: dict[str, dict], started: float, **extra) -> dict:
    statuses = [j["status"] for j in final.values()]
    latencies = []
    for job in final.values():
        if job.get("finished_at") and job.get("created_at"):
            from datetime import datetime

            t0 = datetime.fromisoformat(job["created_at"].replace("Z", "+00:00"))
            t1 = datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00"))
            latencies.append((t1 - t0).total_seconds())
    failed_reasons = sorted({j["error"]["type"] for j in final.values() if j["status"] == "failed"})
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else latencies * 99
    return {
        "scenario": name,
        "accepted": len(ids),
        "succeeded": statuses.count("succeeded"),
        "failed_with_reason": statuses.count("failed"),
        "failure_types": failed_reasons,
        "stuck_or_lost": len(ids) - len(final),
        "retries": sum(max(0, j.get("attempts", 1) - 1) for j in final.values()),
        "latency_p50_s": round(quantiles[49], 2) if quantiles else None,
        "latency_p99_s": round(quantiles[98], 2) if quantiles else None,
        "wall_s": round(time.monotonic() - started, 1),
        **extra,
    }


def worker_kills(service: Service, jobs: int, kills: int, seed: int = 0, workers: int = 2) -> dict:
    """`jobs` jobs while workers are SIGKILLed at random moments (and replaced)."""
    rng = random.Random(seed)
    started = time.monotonic()
    for _ in range(workers - service.worker_count):
        service.start_worker(wait_ready=False)
    service.wait_ready(workers)
    ids = [service.submit("text-to-image", job_payload(rng, (30, 60))).json()["id"] for _ in range(jobs)]
    done_kills = 0
    while done_kills < kills:
        time.sleep(rng.uniform(1.0, 3.0))
        alive = [n for n, p in service.processes.items() if n.startswith("worker") and p.poll() is None]
        running = [j for j in ids if service.job(j)["status"] == "running"]
        if not running and all(service.job(j)["status"] in TERMINAL for j in ids):
            break
        if alive:
            service.kill(rng.choice(alive), signal.SIGKILL)
            done_kills += 1
            service.start_worker(wait_ready=False)
    final = settle(service, ids, timeout=60 + 20 * jobs)
    return summarise("worker SIGKILLs", ids, final, started, kills=done_kills)


def redis_restarts(service: Service, redis: RedisServer, jobs: int, restarts: int, seed: int = 0) -> dict:
    """Jobs submitted continuously while Redis (append-only, fsync always) is restarted; every job the
    API accepted (202) must end."""
    rng = random.Random(seed)
    started = time.monotonic()
    ids: list[str] = []
    refused = 0
    stop = threading.Event()

    def load():
        nonlocal refused
        for _ in range(jobs):
            if stop.is_set():
                return
            job_id = submit_with_retry(service, job_payload(rng, (4, 10)), time.monotonic() + 60)
            if job_id:
                ids.append(job_id)
            else:
                refused += 1
            time.sleep(rng.uniform(0.05, 0.4))

    thread = threading.Thread(target=load)
    thread.start()
    for _ in range(restarts):
        time.sleep(rng.uniform(1.5, 3.0))
        redis.stop()
        time.sleep(rng.uniform(0.5, 1.5))
        redis.start()
    thread.join(timeout=300)
    stop.set()
    final = settle(service, list(ids), timeout=60 + 15 * jobs)
    return summarise("Redis restarts under load", ids, final, started, restarts=restarts, never_accepted=refused)


def webhook_outage(service: Service, receiver: WebhookReceiver, jobs: int, down_s: float, seed: int = 0) -> dict:
    """Jobs with webhooks while the receiver is down for `down_s`; every delivery must arrive, signed."""
    rng = random.Random(seed)
    started = time.monotonic()
    receiver.down()
    hook = {"url": receiver.url, "secret": SECRET}
    ids = [service.submit("text-to-image", {**job_payload(rng, (2, 4)), "webhook": hook}).json()["id"] for _ in range(jobs)]
    final = settle(service, ids, timeout=60 + 10 * jobs)
    time.sleep(max(0.0, down_s - (time.monotonic() - started)))
    back_at = time.monotonic()
    receiver.up()
    try:
        wait_until(lambda: {c["json"]["job"]["id"] for c in receiver.calls} >= set(ids), 120, 0.2, "all deliveries")
    except TimeoutError:
        pass
    delivered = {c["json"]["job"]["id"] for c in receiver.calls}
    valid = all(signed(c) for c in receiver.calls)
    figures = summarise("webhook receiver down", ids, final, started, receiver_down_s=round(back_at - started, 1))
    figures.update(deliveries_expected=len(ids), deliveries_received=len(delivered & set(ids)),
                   duplicate_calls=len(receiver.calls) - len(delivered), signatures_valid=valid,
                   last_delivery_after_return_s=round(time.monotonic() - back_at, 1))
    return figures


def api_restart(service: Service, jobs: int, seed: int = 0) -> dict:
    """The API process is killed while jobs run and started again; clients polling by id see them finish."""
    rng = random.Random(seed)
    started = time.monotonic()
    ids = [service.submit("text-to-image", job_payload(rng, (8, 14))).json()["id"] for _ in range(jobs)]
    time.sleep(1.0)
    service.kill("api", signal.SIGKILL)
    time.sleep(1.0)
    service.start_api()
    final = settle(service, ids, timeout=60 + 10 * jobs)
    return summarise("API restart", ids, final, started)
