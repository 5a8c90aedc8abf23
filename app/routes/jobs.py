"""Jobs: status, cancel, and a live event stream."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from ..exceptions import JobNotFound
from ..schemas import TERMINAL, ErrorBody, JobView
from ..security import Caller, require_caller

router = APIRouter(
    prefix="/v1/jobs", tags=["jobs"],
    responses={401: {"model": ErrorBody, "description": "Missing, wrong or revoked API key"},
               404: {"model": ErrorBody, "description": "No such job (or not yours)"},
               503: {"model": ErrorBody, "description": "The job store is unreachable"}},
)
JobId = Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The id returned when the job was submitted")


@router.get("/{job_id}", response_model=JobView, summary="Job status, progress, outputs and error")
def get_job(request: Request, job_id: str = JobId, caller: Caller = Depends(require_caller)) -> JobView:
    return request.app.state.jobs.view(job_id, tenant=caller.tenant)


@router.post("/{job_id}/cancel", response_model=JobView, summary="Cancel a job",
             description="A queued job is dropped; a running job stops at its next step. 409 if it already ended.")
def cancel_job(request: Request, job_id: str = JobId, caller: Caller = Depends(require_caller)) -> JobView:
    return request.app.state.jobs.cancel(job_id, tenant=caller.tenant)


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@router.get(
    "/{job_id}/events",
    summary="Server-sent events: queued, started, progress, finished",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "event: queued | started | progress | finished, data: JSON"}},
)
async def job_events(request: Request, job_id: str = JobId, caller: Caller = Depends(require_caller)):
    service = request.app.state.jobs
    first = await run_in_threadpool(service.view, job_id, None, caller.tenant)  # 404 before the stream starts

    async def stream():
        view, last_status, last_step, idle = first, None, None, 0.0
        while True:
            if view.status != last_status:
                if view.status == "queued":
                    yield _sse("queued", {"id": view.id, "queue_position": view.queue_position})
                elif view.status == "running" or (last_status in (None, "queued") and view.status in TERMINAL):
                    yield _sse("started", {"id": view.id, "started_at": view.started_at})
                last_status = view.status
            step = view.progress.step if view.progress else None
            if step is not None and step != last_step:
                yield _sse("progress", view.progress.model_dump())
                last_step = step
            if view.status in TERMINAL:
                yield _sse("finished", view.model_dump(mode="json"))
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.25)
            idle += 0.25
            if idle >= 15:
                idle = 0.0
                yield ": keep-alive\n\n"
            try:
                view = await run_in_threadpool(service.view, job_id, None, caller.tenant)
            except JobNotFound:
                return

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
