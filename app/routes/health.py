"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from rq.registry import StartedJobRegistry

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The API process is up")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Ready when Redis answers and a worker with a loaded model is alive")
def readyz(request: Request):
    service = request.app.state.jobs
    try:
        service.redis.ping()
        workers = service.ready_workers()
    except Exception:
        return JSONResponse({"status": "unavailable", "reason": "Redis does not answer"}, status_code=503)
    if not workers:
        return JSONResponse({"status": "unavailable", "reason": "no worker with a loaded model"}, status_code=503)
    return {"status": "ready", "workers": workers, "worker_info": service.worker_info(workers)}


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def metrics(request: Request) -> PlainTextResponse:
    service = request.app.state.jobs
    ready = service.ready_workers()
    gauges = [
        ("queue_depth", "Jobs waiting in the inference queue", {}, service.queue.count),
        ("jobs_running", "Jobs being run by workers", {}, StartedJobRegistry(queue=service.queue).count),
        ("workers_ready", "Workers with a loaded model and a recent heartbeat", {}, len(ready)),
        ("webhooks_pending", "Webhook deliveries waiting to be sent", {}, service.webhook_queue.count),
    ]
    precisions = Counter(info.get("precision", "unknown") for info in service.worker_info(ready).values())
    gauges += [
        ("workers_ready_by_precision", "Ready workers by the precision their denoiser runs in (PRECISION)", {"precision": p}, n)
        for p, n in sorted(precisions.items())
    ]
    return PlainTextResponse(service.metrics.render(gauges), media_type="text/plain; version=0.0.4")
