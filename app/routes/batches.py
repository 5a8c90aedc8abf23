"""Batches: many items in one request, tracked under one id, with per-item and final webhooks."""

from __future__ import annotations

from typing import Literal, Optional

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from core.views import BatchView
from model.tasks import TaskInputError

from ..body import idempotency_key, read_json_object
from ..callers import Caller, require_caller
from ..errors import ApiError
from ..ids import ID_PATTERN, BatchId, DeliveryId
from ..schemas import BatchList, BatchRequest, DeliveryList, DeliveryView, ErrorBody, task_part
from ..state import Fetcher, Jobs, ServerSettings

router = APIRouter(
    prefix="/v1/batches", tags=["batches"],
    responses={401: {"model": ErrorBody, "description": "Missing, wrong or revoked API key"},
               422: {"model": ErrorBody, "description": "Invalid request"},
               503: {"model": ErrorBody, "description": "The job store is unreachable"}},
)
SUBMIT_ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in (
    (400, "The body is not valid JSON"), (409, "The Idempotency-Key was used for a different request"),
    (413, "The body is too large"), (415, "Not JSON"), (429, "Rate, quota or queue limit"),
)}


@router.post(
    "", response_model=BatchView, status_code=202, summary="Submit many tasks at once", responses=SUBMIT_ERRORS,
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}}}}},
)
async def submit_batch(request: Request, service: Jobs, settings: ServerSettings, fetcher: Fetcher,
                       caller: Caller = Depends(require_caller)) -> JSONResponse:
    """The key is checked before the body is read, and the item count before the items are validated.
    An `Idempotency-Key` header makes a retry return the first batch (header `Idempotent-Replayed: true`)."""
    idem = idempotency_key(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/json", ""):
        raise ApiError(415, "unsupported_media_type", "send the batch as application/json")
    maybe_replay = await run_in_threadpool(service.precheck, caller.tenant, caller.key_id, idem)
    data = await read_json_object(request)
    raw_items = data.get("items")
    if isinstance(raw_items, list) and len(raw_items) > settings.max_batch_items:
        raise ApiError(422, "invalid_request", f"items: at most {settings.max_batch_items} items per batch; split it",
                       fields=[{"field": "items", "message": f"at most {settings.max_batch_items} items per batch"}])
    body = await run_in_threadpool(BatchRequest.model_validate, data)
    priorities = [caller.job_priority(item.priority, f"items.{i}.priority") for i, item in enumerate(body.items)]
    body = await fetcher.fetch_all(  # images given by URL, checked first, off the request threads
        body, caller.tenant, lambda checked: _check_items(checked, settings.task_limits()))
    items = [(item.task, task_part(item, item.task), item.output_format) for item in body.items]
    view, replayed = await run_in_threadpool(
        service.submit_batch_once, items, body.webhook, caller.tenant, caller.key_id, idem, True, maybe_replay,
        priorities=priorities,
    )
    headers = {"Location": view.urls["self"], **({"Idempotent-Replayed": "true"} if replayed else {})}
    return JSONResponse(view.model_dump(mode="json"), status_code=202, headers=headers)


def _check_items(body: BatchRequest, limits) -> None:
    for index, item in enumerate(body.items):
        try:
            task_part(item, item.task).plan(limits)
        except TaskInputError as exc:
            raise TaskInputError(f"items.{index}.{exc.field}", exc.message) from None


@router.get("/{batch_id}", response_model=BatchView, summary="Batch status with its jobs")
def get_batch(
    jobs: Jobs, batch_id: str = Path(pattern=ID_PATTERN), caller: Caller = Depends(require_caller)
) -> BatchView:
    return jobs.batch_view(batch_id, tenant=caller.tenant)


@router.get("", response_model=BatchList, summary="Your batches, newest first")
def list_batches(
    jobs: Jobs, caller: Caller = Depends(require_caller),
    limit: int = Query(20, ge=1, le=100, description="Most items on the page"),
    cursor: Optional[str] = Query(None, max_length=200, description="`next_cursor` of the previous page"),
    status: Optional[Literal["running", "completed"]] = Query(None, description="Only batches in this status"),
) -> BatchList:
    data, next_cursor = jobs.list_batches(caller.tenant, limit, cursor, status)
    return BatchList(data=data, next_cursor=next_cursor)


@router.get("/{batch_id}/deliveries", response_model=DeliveryList, summary="The batch's webhook deliveries",
            description="Every webhook call queued for the batch (items and batch.completed), newest first.",
            responses={404: {"model": ErrorBody, "description": "No such batch (or not yours)"}})
def batch_deliveries(jobs: Jobs, batch_id: BatchId, caller: Caller = Depends(require_caller)) -> DeliveryList:
    return DeliveryList(data=jobs.list_deliveries("batch", batch_id, caller.tenant))


@router.post("/{batch_id}/deliveries/{delivery_id}/redeliver", response_model=DeliveryView, status_code=202,
             summary="Send a batch webhook delivery again",
             description="As for a job: the first body and id again; 409 while it is still being delivered.",
             responses={404: {"model": ErrorBody, "description": "No such batch or delivery"},
                        409: {"model": ErrorBody, "description": "Still being delivered, or no webhook"}})
def redeliver_batch(jobs: Jobs, batch_id: BatchId, delivery_id: DeliveryId,
                    caller: Caller = Depends(require_caller)) -> JSONResponse:
    return JSONResponse(jobs.redeliver("batch", batch_id, delivery_id, caller.tenant), status_code=202)


@router.post("/{batch_id}/cancel", response_model=BatchView, summary="Cancel a batch",
             description="Cancels every job of the batch that has not ended; ended jobs keep their results.",
             responses={404: {"model": ErrorBody, "description": "No such batch (or not yours)"}})
def cancel_batch(jobs: Jobs, batch_id: BatchId, caller: Caller = Depends(require_caller)) -> BatchView:
    return jobs.cancel_batch(batch_id, tenant=caller.tenant)
