"""The job and batch as clients see them: the API's answers and the webhook bodies (which workers build)
share these models, so the two cannot differ."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

from .queueing import MAX_PRIORITY

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL = ("succeeded", "failed", "canceled")


class Progress(BaseModel):
    step: int
    total: int
    fraction: float


class OutputView(BaseModel):
    name: str
    url: str = Field(description="Needs the API key")
    signed_url: str = Field(
        description="Works without a key until it expires (for webhook receivers); with object storage, a presigned URL of the bucket"
    )
    kind: str = Field(description="image | depth16 | preview | mask")
    media_type: str
    width: int
    height: int


class ErrorView(BaseModel):
    type: str
    message: str


class JobView(BaseModel):
    id: str
    task: str
    status: JobStatus
    progress: Optional[Progress] = None
    queue_position: Optional[int] = Field(
        None, description="Jobs that run before this one in the fair order between tenants (0 = next); only while queued"
    )
    eta_s: Optional[float] = Field(
        None, description="Estimated seconds until the job ends, from measured step times (queued: assuming the jobs "
        "ahead are like it); null until a step time of its shape has been measured"
    )
    priority: int = Field(
        0, description=f"Its place among its tenant's own queued jobs: 0 to {MAX_PRIORITY}, higher first (the "
        "request's `priority`, else its API key's); it never passes another tenant's turn"
    )
    created_at: Optional[str] = None
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    timings: dict[str, Any] = Field(default_factory=dict)
    outputs: list[OutputView] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict, description="Structured results: boxes, masks, camera poses")
    warnings: list[str] = Field(default_factory=list)
    error: Optional[ErrorView] = None
    attempts: int = 0
    batch_id: Optional[str] = None
    urls: dict[str, str] = Field(default_factory=dict)
    input: dict[str, Any] = Field(
        default_factory=dict,
        description="The input as validated, with the seed it ran with; images as size and SHA-256, not bytes "
        "(send these fields again with the same images to get the same outputs)",
    )


class BatchView(BaseModel):
    id: str
    status: Literal["running", "completed"]
    created_at: str
    counts: dict[str, int]
    jobs: list[JobView]
    urls: dict[str, str] = Field(default_factory=dict)
