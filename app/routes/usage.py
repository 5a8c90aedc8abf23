"""`GET /v1/usage`: what the caller's tenant used, summed by task, day or API key."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Literal, Optional

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from core.usage import USAGE_DAYS

from ..callers import Caller, require_caller
from ..errors import ApiError
from ..schemas import ErrorBody
from ..state import Jobs

router = APIRouter(prefix="/v1", tags=["usage"])


class UsageRow(BaseModel):
    group: str = Field(description="The task, the day (YYYY-MM-DD, UTC) or the API key id")
    jobs: int = Field(description="Jobs that ended")
    succeeded: int
    failed: int
    canceled: int
    images: int = Field(description="Output files of the jobs")
    run_s: float = Field(description="Seconds the jobs ran on workers (a batch's time counts for each of its jobs)")
    token_steps: int = Field(description="Denoiser work of the succeeded jobs: tokens (16x16 px) x frames x steps")


class UsageReport(BaseModel):
    start: date = Field(alias="from", serialization_alias="from")
    end: date = Field(alias="to", serialization_alias="to")
    group_by: Literal["task", "day", "key"]
    data: list[UsageRow]
    total: UsageRow


@router.get("/usage", response_model=UsageReport, response_model_by_alias=True, summary="Your tenant's usage",
            description=f"Jobs that ended between `from` and `to` (UTC days, inclusive; default the last 30 days), "
                        f"summed by `group_by` (task, day or key). Kept for {USAGE_DAYS} days.",
            responses={401: {"model": ErrorBody, "description": "Missing, wrong or revoked API key"},
                       422: {"model": ErrorBody, "description": "Bad dates or group_by"}})
async def usage(
    jobs: Jobs, caller: Caller = Depends(require_caller),
    start: Optional[date] = Query(None, alias="from", description="First day (YYYY-MM-DD, UTC); default 29 days before `to`"),
    end: Optional[date] = Query(None, alias="to", description="Last day (YYYY-MM-DD, UTC); default today"),
    group_by: Literal["task", "day", "key"] = Query("day", description="Sum by task, day or API key"),
):
    end = end or datetime.now(timezone.utc).date()
    start = start or end - timedelta(days=29)
    if start > end:
        raise ApiError(422, "invalid_request", "from: must not be after `to`", fields=[{"field": "from", "message": "must not be after `to`"}])
    if (end - start).days >= USAGE_DAYS:
        message = f"at most {USAGE_DAYS} days at once"
        raise ApiError(422, "invalid_request", f"from: {message}", fields=[{"field": "from", "message": message}])
    rows = await run_in_threadpool(jobs.usage, caller.tenant, start, end, group_by)
    total = {m: sum(r[m] for r in rows) for m in ("jobs", "succeeded", "failed", "canceled", "images", "token_steps")}
    total["run_s"] = round(sum(r["run_s"] for r in rows), 3)
    report = UsageReport.model_validate({"from": start, "to": end, "group_by": group_by, "data": rows,
                                         "total": {"group": "total", **total}})
    return report.model_dump(mode="json", by_alias=True)
