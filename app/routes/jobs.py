"""Jobs: status, cancel, and a live event stream."""

from __future__ import annotations

import json
import time

import anyio

from typing import Optional

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from core.views import TERMINAL, JobStatus, JobView

from ..callers import Caller, require_caller
from ..ids import DeliveryId, JobId
from ..schemas import DeliveryList, DeliveryView, ErrorBody, JobList
from ..state import Jobs, Slots, Store, Watcher
from ..streams import SLOT_REFRESH_S

router = APIRouter(
    prefix="/v1/jobs", tags=["jobs"],
    responses={401: {"model": ErrorBody, "description": "Missing, wrong or revoked API key"},
               404: {"model": ErrorBody, "description": "No such job (or not yours)"},
               503: {"model": ErrorBody, "description": "The job store is unreachable"}},
)
KEEP_ALIVE_S = 15


Cursor = Query(None, max_length=200, description="`next_cursor` of the previous page")
Limit = Query(20, ge=1, le=100, description="Most items on the page")


@router.get("", response_model=JobList, summary="Your jobs, newest first",
            responses={422: {"model": ErrorBody, "description": "Bad filter, limit or cursor"}})
def list_jobs(
    jobs: Jobs, caller: Caller = Depends(require_caller), limit: int = Limit, cursor: Optional[str] = Cursor,
    status: Optional[JobStatus] = Query(None, description="Only jobs in this status"),
    task: Optional[str] = Query(None, pattern=r"^[a-z0-9-]{1,40}$", description="Only jobs of this task"),
) -> JobList:
    data, next_cursor = jobs.list_jobs(caller.tenant, limit, cursor, status, task)
    return JobList(data=data, next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobView, summary="Job status, progress, outputs and error")
def get_job(jobs: Jobs, job_id: JobId, caller: Caller = Depends(require_caller)) -> JobView:
    return jobs.view(job_id, tenant=caller.tenant)


@router.post("/{job_id}/cancel", response_model=JobView, summary="Cancel a job",
             responses={409: {"model": ErrorBody, "description": "The job already ended"}},
             description="A queued job is dropped; a running job stops at its next step. 409 if it already ended.")
def cancel_job(jobs: Jobs, job_id: JobId, caller: Caller = Depends(require_caller)) -> JobView:
    return jobs.cancel(job_id, tenant=caller.tenant)


@router.delete(
    "/{job_id}", status_code=204, response_class=Response, summary="Delete an ended job and its outputs",
    description="Removes the job's record and its output files. 409 while it is queued or running (cancel it first).",
    responses={409: {"model": ErrorBody, "description": "The job has not ended"}},
)
def delete_job(jobs: Jobs, store: Store, job_id: JobId, caller: Caller = Depends(require_caller)) -> Response:
    jobs.delete(job_id, tenant=caller.tenant)
    store.delete(job_id)
    return Response(status_code=204)


@router.get("/{job_id}/deliveries", response_model=DeliveryList, summary="The job's webhook deliveries",
            description="Every webhook call queued for the job, newest first: event, status, attempts and the "
                        "receiver's last answer.")
def job_deliveries(jobs: Jobs, job_id: JobId, caller: Caller = Depends(require_caller)) -> DeliveryList:
    return DeliveryList(data=jobs.list_deliveries("job", job_id, caller.tenant))


@router.post("/{job_id}/deliveries/{delivery_id}/redeliver", response_model=DeliveryView, status_code=202,
             summary="Send a webhook delivery again",
             description="Queues the delivery again with its first body and id (receivers de-duplicate on the id; "
                         "its signed URLs may have expired: fetch the job for fresh ones). 409 while it is still "
                         "being delivered.",
             responses={409: {"model": ErrorBody, "description": "Still being delivered, or no webhook"}})
def redeliver_job(jobs: Jobs, job_id: JobId, delivery_id: DeliveryId,
                  caller: Caller = Depends(require_caller)) -> JSONResponse:
    view = jobs.redeliver("job", job_id, delivery_id, caller.tenant)
    return JSONResponse(view, status_code=202)


def _sse(event: str, data: dict, event_id: Optional[str] = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def event_rank(event_id: Optional[str]) -> tuple[int, int]:
    """Order of a job's event ids (`queued`, `started`, `progress-<step>`, `finished`); an unknown or missing
    `Last-Event-ID` ranks before all, so the stream starts from the beginning."""
    if not event_id:
        return (-1, 0)
    name, _, step = event_id.strip().partition("-")
    ranks = {"queued": 0, "started": 1, "progress": 2, "finished": 3}
    if name not in ranks or (name == "progress") != step.isdigit() or len(step) > 9:
        return (-1, 0)
    return (ranks[name], int(step) if step else 0)


@router.get(
    "/{job_id}/events",
    summary="Server-sent events: queued, started, progress, finished",
    response_class=StreamingResponse,
    description="Each event has an `id` (`queued`, `started`, `progress-<step>`, `finished`); a client that "
    "reconnects with `Last-Event-ID` gets only the events after that one (EventSource does this by itself).",
    responses={200: {"content": {"text/event-stream": {}}, "description": "event: queued | started | progress | finished, data: JSON"},
               429: {"model": ErrorBody, "description": "Too many event streams open for this key or tenant"}},
)
async def job_events(request: Request, service: Jobs, slots: Slots, watcher: Watcher, job_id: JobId,
                     caller: Caller = Depends(require_caller)):
    first = await run_in_threadpool(service.view, job_id, None, caller.tenant)  # 404 before the stream starts
    slot = await run_in_threadpool(slots.take, caller.key_id, caller.tenant)  # 429 past the bounds

    resume = event_rank(request.headers.get("last-event-id"))  # a reconnecting EventSource skips what it had

    def fresh(event_id: str) -> bool:
        return event_rank(event_id) > resume

    async def stream():
        view, last_status, last_step = first, None, None
        renewed = time.monotonic()
        try:
            async with watcher.watch(job_id, first) as watch:
                version = watch.version
                while True:
                    if view.status != last_status:
                        if view.status == "queued":
                            if fresh("queued"):
                                yield _sse("queued", {"id": view.id, "queue_position": view.queue_position, "eta_s": view.eta_s}, "queued")
                        elif view.status == "running" or (last_status in (None, "queued") and view.status in TERMINAL):
                            if fresh("started"):
                                yield _sse("started", {"id": view.id, "started_at": view.started_at}, "started")
                        last_status = view.status
                    step = view.progress.step if view.progress else None
                    if step is not None and step != last_step:
                        if fresh(f"progress-{step}"):
                            yield _sse("progress", {**view.progress.model_dump(), "eta_s": view.eta_s}, f"progress-{step}")
                        last_step = step
                    if view.status in TERMINAL:
                        if fresh("finished"):
                            yield _sse("finished", view.model_dump(mode="json"), "finished")
                        return
                    if await request.is_disconnected():
                        return
                    if not await watch.wait(version, KEEP_ALIVE_S):
                        yield ": keep-alive\n\n"
                    if time.monotonic() - renewed >= SLOT_REFRESH_S:
                        renewed = time.monotonic()
                        await run_in_threadpool(slots.renew, slot, caller.key_id, caller.tenant)
                    version = watch.version
                    if watch.view is None:  # the job expired
                        return
                    view = watch.view.model_copy()
        finally:
            with anyio.CancelScope(shield=True):  # runs when the client went away (the stream was cancelled) too
                await run_in_threadpool(slots.give_back, slot, caller.key_id, caller.tenant)

    events = stream()
    # after a disconnect Starlette runs the background task: close the generator if it is still open
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                             background=BackgroundTask(events.aclose))
