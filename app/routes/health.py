"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from rq.registry import StartedJobRegistry

from ..state import Jobs, ServerSettings, Store

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The API process is up")
def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz", summary="Ready when Redis answers and a worker with a loaded model is alive",
    description="Says how many workers are ready; their names (host and process) only on a local demo (AUTH_DISABLED).",
)
def readyz(service: Jobs, store: Store, settings: ServerSettings):
    try:
        service.redis.ping()
        workers = service.ready_workers()
    except Exception:
        return JSONResponse({"status": "unavailable", "reason": "Redis does not answer"}, status_code=503)
    if not workers:
        return JSONResponse({"status": "unavailable", "reason": "no worker with a loaded model"}, status_code=503)
    full = results_disk_full(store, settings.results_min_free_mb)
    if full:
        return JSONResponse({"status": "unavailable", "reason": full}, status_code=503)
    info = service.worker_info(workers)
    answer = {"status": "ready", "worker_count": len(workers), "worker_modes": worker_modes(info)}
    if settings.auth_disabled:  # host names and PIDs are nobody else's business
        answer["workers"] = workers
        answer["worker_info"] = info
    return answer


def results_disk_full(store, min_free_mb: int) -> str | None:
    """Why results cannot be written, when the results folder (a local store) has less than
    `min_free_mb` free: jobs would fail on saving their outputs, so the service is not ready."""
    root = getattr(store, "root", None)
    if root is None or not min_free_mb:
        return None
    try:
        free = shutil.disk_usage(root if Path(root).exists() else Path(root).parent).free
    except OSError:
        return None
    if free < min_free_mb * 1024 * 1024:
        return f"the results disk has {free // (1024 * 1024)} MB free, under RESULTS_MIN_FREE_MB ({min_free_mb})"
    return None


def worker_modes(info: dict[str, dict[str, str]]) -> dict[str, int]:
    """How many workers run each mode (precision, attention backend, compile), without naming them: an
    operator sees a degraded worker from outside."""
    return dict(Counter(" ".join(f"{k}={v}" for k, v in sorted(fields.items()) if not k.endswith("reason"))
                        for fields in info.values()))


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def metrics(service: Jobs) -> PlainTextResponse:
    ready = service.ready_workers()
    gauges = [
        ("queue_depth", "Jobs waiting in the inference queue", {}, service.queue.count),
        ("jobs_running", "Jobs being run by workers", {},
         StartedJobRegistry(queue=service.queue).get_job_count(cleanup=False)),  # a read: workers clean up
        ("workers_ready", "Workers with a loaded model and a recent heartbeat", {}, len(ready)),
        ("webhooks_pending", "Webhook deliveries waiting to be sent", {}, service.webhook_queue.count),
    ]
    info = service.worker_info(ready).values()
    precisions = Counter(fields.get("precision", "unknown") for fields in info)
    gauges += [
        ("workers_ready_by_precision", "Ready workers by the precision their denoiser runs in (PRECISION)", {"precision": p}, n)
        for p, n in sorted(precisions.items())
    ]
    modes = Counter((f.get("attention", "unknown"), f.get("compile", "unknown"), f.get("fast_path", "unknown")) for f in info)
    gauges += [
        ("workers_ready_by_mode", "Ready workers by attention backend, compile mode and start-up check (degraded: "
         "not what was asked for)", {"attention": a, "compile": c, "fast_path": fp}, n)
        for (a, c, fp), n in sorted(modes.items())
    ]
    return PlainTextResponse(service.metrics.render(gauges), media_type="text/plain; version=0.0.4")
