"""`POST /v1/<task>`: one endpoint per task, JSON or multipart, answered 202 with the job."""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Optional, Union

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from core.views import TERMINAL, BatchView, JobView
from model.tasks import TASKS

from ..body import idempotency_key, parse_request
from ..image_urls import fetch_image_urls
from ..schemas import REQUEST_MODELS, ErrorBody, task_part
from ..security import Caller, require_caller

router = APIRouter(prefix="/v1", tags=["tasks"])
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.IGNORECASE)


def prefer_wait(request: Request, limit: int) -> Optional[int]:
    match = _PREFER_WAIT.search(request.headers.get("prefer", ""))
    return min(int(match.group(1)), limit) if match else None


async def wait_for(service, job_id: str, seconds: int, tenant: str) -> JobView:
    """Poll until the job ends or `seconds` pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    view = await run_in_threadpool(service.view, job_id, None, tenant)
    while view.status not in TERMINAL and loop.time() < deadline:
        await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
        view = await run_in_threadpool(service.view, job_id, None, tenant)
    return view


REPLAY_HEADER = "Idempotent-Replayed"


def job_response(view: JobView, wait: Optional[int], replayed: bool = False) -> JSONResponse:
    headers = {"Location": view.urls["self"]}
    if replayed:
        headers[REPLAY_HEADER] = "true"
    if wait is not None:
        headers["Preference-Applied"] = f"wait={wait}"
    status = 200 if view.status in TERMINAL else 202
    return JSONResponse(view.model_dump(mode="json"), status_code=status, headers=headers)


def _queue(service, settings, task: str, body, caller: Caller, idem: Optional[str],
           maybe_replay: bool) -> tuple[Union[JobView, BatchView], bool]:
    """Fetch the images given by URL (through the guard), then queue the job; `num_outputs` > 1 queues a
    batch of that many jobs differing only by seed (seed, seed+1, ...). One trip to the thread pool."""
    body = fetch_image_urls(body, settings)
    part = task_part(body, task)
    if body.num_outputs <= 1:
        return service.submit_once(task, part, caller.tenant, caller.key_id, body.webhook, body.output_format,
                                   idem, True, maybe_replay)
    first = body.seed if body.seed is not None else secrets.randbelow(2**31)
    items = [(task, part.model_copy(update={"seed": (first + i) % 2**63}), body.output_format)
             for i in range(body.num_outputs)]
    return service.submit_batch_once(items, body.webhook, caller.tenant, caller.key_id, idem, True, maybe_replay)


def _endpoint(task: str):
    model = REQUEST_MODELS[task]

    async def submit(request: Request, caller: Caller = Depends(require_caller)) -> JSONResponse:
        service = request.app.state.jobs
        settings = request.app.state.settings
        # cheapest first: the key (a dependency), headers, rate and quota, then the body, then its images
        idem = idempotency_key(request)
        wait = prefer_wait(request, settings.max_wait_s)
        maybe_replay = await run_in_threadpool(service.precheck, caller.tenant, caller.key_id, idem)
        body = await parse_request(request, model)
        view, replayed = await run_in_threadpool(_queue, service, settings, task, body, caller, idem, maybe_replay)
        if isinstance(view, BatchView):
            headers = {"Location": view.urls["self"], **({REPLAY_HEADER: "true"} if replayed else {})}
            return JSONResponse(view.model_dump(mode="json"), status_code=202, headers=headers)
        if wait:
            view = await wait_for(service, view.id, wait, caller.tenant)
        return job_response(view, wait, replayed)

    submit.__name__ = "submit_" + task.replace("-", "_")
    return submit, model


def _docs(model) -> str:
    text = (model.__doc__ or "").strip()
    return (
        f"{text}\n\nSend JSON (images as base64 or data URIs) or multipart/form-data (images as files, "
        "lists and objects as JSON text). Answers 202 with the job; with `Prefer: wait=N` (N up to the "
        "server's limit, 60 s by default) it answers 200 with the finished job when it ends in time."
    )


SUBMIT_RESPONSES = {
    200: {"model": JobView, "description": "Finished within Prefer: wait"},
    **{code: {"model": ErrorBody, "description": text} for code, text in (
        (400, "The body is not valid JSON"), (401, "Missing, wrong or revoked API key"),
        (409, "The Idempotency-Key was used for a different request"),
        (413, "The body is too large"), (415, "Not JSON or multipart"), (422, "Invalid request: the message says what to change"),
        (429, "Rate, quota or queue limit: retry after Retry-After seconds"), (503, "The job store is unreachable"),
    )},
}

for _task in TASKS:
    _handler, _model = _endpoint(_task)
    ref = {"$ref": f"#/components/schemas/{_model.__name__}"}
    router.add_api_route(
        f"/{_task}",
        _handler,
        methods=["POST"],
        status_code=202,
        summary=f"Run {_task}",
        description=_docs(_model),
        response_model=Union[JobView, BatchView],  # a batch when num_outputs > 1
        responses=SUBMIT_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                # the multipart content gets its own schema (`<Task>Form`, app/form_schema.py) in the document
                "content": {"application/json": {"schema": ref}, "multipart/form-data": {}},
            }
        },
    )
