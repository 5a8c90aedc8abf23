"""Batches: many items in one request, tracked under one id, with per-item and final webhooks."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request

from ..exceptions import ApiError
from ..schemas import BatchRequest, BatchView, ErrorBody, task_part
from ..security import Caller, require_caller

router = APIRouter(
    prefix="/v1/batches", tags=["batches"],
    responses={401: {"model": ErrorBody, "description": "Missing, wrong or revoked API key"},
               422: {"model": ErrorBody, "description": "Invalid request"},
               429: {"model": ErrorBody, "description": "Rate, quota or queue limit"},
               503: {"model": ErrorBody, "description": "The job store is unreachable"}},
)


@router.post("", response_model=BatchView, status_code=202, summary="Submit many tasks at once")
def submit_batch(request: Request, body: BatchRequest, caller: Caller = Depends(require_caller)) -> BatchView:
    settings = request.app.state.settings
    if len(body.items) > settings.max_batch_items:
        raise ApiError(422, "invalid_request", f"items: at most {settings.max_batch_items} items per batch; split it")
    items = [(item.task, task_part(item, item.task), item.output_format) for item in body.items]
    return request.app.state.jobs.submit_batch(items, body.webhook, caller.tenant, caller.key_id)


@router.get("/{batch_id}", response_model=BatchView, summary="Batch status with its jobs")
def get_batch(
    request: Request, batch_id: str = Path(pattern=r"^[A-Za-z0-9_-]{1,64}$"), caller: Caller = Depends(require_caller)
) -> BatchView:
    return request.app.state.jobs.batch_view(batch_id, tenant=caller.tenant)
