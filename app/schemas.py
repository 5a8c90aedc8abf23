"""Models at the API's edges: jobs, batches, webhooks and errors, as clients see them."""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from core.queueing import MAX_PRIORITY
from core.views import BatchView, JobView
from model.tasks import TASKS, TaskRequest

OutputFormat = Literal["png", "webp", "jpeg"]


WebhookEvent = Literal["started", "progress", "completed"]


class WebhookSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(
        pattern=r"^https?://", max_length=2000, description="Receives a signed POST when the job (or batch item) ends",
        examples=["https://example.com/hooks/onediffusion"],
    )
    secret: Optional[str] = Field(
        None, min_length=8, max_length=256,
        description="Signs each call two ways. Standard Webhooks: headers webhook-id, webhook-timestamp and "
        "webhook-signature = v1,base64(HMAC-SHA256(key, f'{webhook-id}.{webhook-timestamp}.{body}')), the key being "
        "the secret's UTF-8 bytes (or a whsec_ secret's decoded base64), so the standardwebhooks package verifies it; "
        "and OneDiffusion-Signature = v1=hex(HMAC-SHA256(secret, f'{timestamp}.{body}')) with OneDiffusion-Timestamp",
    )
    events: list[WebhookEvent] = Field(
        default_factory=lambda: ["completed"], min_length=1, max_length=3,
        description="Which events are sent (like Replicate's webhook_events_filter): `started` (a worker starts "
        "the job: job.started / batch.item.started), `progress` (steps, at most one call every "
        "WEBHOOK_PROGRESS_INTERVAL_S per job: job.progress / batch.item.progress) and `completed` (the job ends: "
        "job.succeeded, job.failed, job.canceled; for a batch each item's end and batch.completed). Default: completed",
    )

    @field_validator("events")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("name each event once")
        return value

    @field_validator("url")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            host, _ = parts.hostname, parts.port
        except ValueError as exc:  # 'http://[::1/', 'http://[127.0.0.1]/', a port out of range
            raise ValueError(f"not a valid URL ({exc})") from None
        if not host:
            raise ValueError("the URL needs a host, e.g. https://example.com/hook")
        return value


PRIORITY_DESCRIPTION = (
    f"Orders this tenant's own queued jobs: 0 to {MAX_PRIORITY}, higher first (then arrival). It never lets a job "
    "pass another tenant's turn: tenants take turns by their weights (TENANT_WEIGHTS). Omitted: the API key's "
    "priority (0 for a key made without one, or without keys). A key made with `--priority N` allows at most N "
    f"(more is a 422 naming the key's maximum); other keys up to {MAX_PRIORITY}"
)


def _priority_field():
    return Field(None, ge=0, le=MAX_PRIORITY, description=PRIORITY_DESCRIPTION, examples=[5])


def _priority_not_bool(value):
    """JSON true/false are not priorities (pydantic would read true as 1)."""
    if isinstance(value, bool):
        raise ValueError(f"must be an integer from 0 to {MAX_PRIORITY}, not true or false")
    return value


class ServiceOptions(BaseModel):
    """Options of the service (not the model) that every task request may carry."""

    webhook: Optional[WebhookSpec] = None
    output_format: OutputFormat = Field("png", description="Format of the output URLs (files can be fetched in any)")
    num_outputs: int = Field(
        1, ge=1, le=4, description="How many images to make (1 to 4). Above 1 the answer is a batch of that many jobs "
        "(202, Location: the batch), alike but for the seed: seed, seed+1, ... (one random seed when omitted); "
        "jobs of one shape run as one sampler batch",
    )
    priority: Optional[int] = _priority_field()

    _priority_not_bool = field_validator("priority", mode="before")(_priority_not_bool)


def task_request_model(task_cls: type[TaskRequest]) -> type[BaseModel]:
    """The body of `POST /v1/<task>`: the task's fields plus the service options."""
    return create_model(
        f"{task_cls.__name__}Request",
        __base__=(task_cls, ServiceOptions),
        __doc__=task_cls.__doc__,
    )


REQUEST_MODELS: dict[str, type[BaseModel]] = {name: task_request_model(cls) for name, cls in TASKS.items()}


def task_part(body: BaseModel, task: str) -> TaskRequest:
    """The task's own request out of an already validated body that also carries service options
    (an endpoint body or a batch item)."""
    cls = TASKS[task]
    return cls.model_construct(**{name: getattr(body, name) for name in cls.model_fields})


def _batch_item_model(name: str, cls: type[TaskRequest]) -> type[BaseModel]:
    return create_model(
        f"{cls.__name__}Item",
        __base__=cls,
        __doc__=cls.__doc__,
        task=(Literal[name], Field(description="Which task this item runs")),
        output_format=(OutputFormat, "png"),
        priority=(Optional[int], _priority_field()),
        __validators__={"_priority_not_bool": field_validator("priority", mode="before")(_priority_not_bool)},
    )


BATCH_ITEM_MODELS = {name: _batch_item_model(name, cls) for name, cls in TASKS.items()}
BatchItem = Annotated[Union[tuple(BATCH_ITEM_MODELS.values())], Field(discriminator="task")]


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[BatchItem] = Field(
        min_length=1, max_length=1000, description="Tasks to run; each item names its task (at most MAX_BATCH_ITEMS, 64 by default)"
    )
    webhook: Optional[WebhookSpec] = Field(None, description="One call per item and one when all items have ended")


class ErrorField(BaseModel):
    field: str = Field(description="Dotted path of the field to change, e.g. `width` or `items.0.prompt`")
    message: str


class ErrorDetail(BaseModel):
    type: str = Field(description="invalid_request, unauthorized, not_found, conflict, rate_limited, ...")
    message: str = Field(description="What went wrong and what to change")
    fields: Optional[list[ErrorField]] = Field(None, description="Per-field problems of an invalid request")


class ErrorBody(BaseModel):
    """Every error the API answers has this shape (path and query problems included)."""

    error: ErrorDetail = Field(examples=[{"type": "invalid_request", "message": "width: Input should be a multiple of 16",
                                          "fields": [{"field": "width", "message": "Input should be a multiple of 16"}]}])


class DeliveryView(BaseModel):
    """One webhook delivery: the event sent, where it stands, and the receiver's last answer."""
    id: str = Field(description="The delivery's id: the OneDiffusion-Delivery and webhook-id headers it was sent with")
    event: str
    status: Literal["pending", "retrying", "delivered", "failed", "refused", "skipped"]
    attempts: int = Field(description="Calls made so far (redeliveries included)")
    last_status_code: Optional[int] = Field(None, description="The receiver's HTTP status on the last attempt")
    last_error: Optional[str] = None
    created_at: Optional[str] = None
    last_attempt_at: Optional[str] = None


class DeliveryList(BaseModel):
    """The webhook deliveries of a job or batch, newest first."""
    data: list[DeliveryView]


class JobList(BaseModel):
    """One page of the caller's jobs, newest first."""
    data: list[JobView]
    next_cursor: Optional[str] = Field(None, description="Pass as `cursor` for the next page; null on the last page")


class BatchList(BaseModel):
    """One page of the caller's batches, newest first."""
    data: list[BatchView]
    next_cursor: Optional[str] = Field(None, description="Pass as `cursor` for the next page; null on the last page")
