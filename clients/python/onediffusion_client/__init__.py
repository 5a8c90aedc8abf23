"""Python client of the OneDiffusion service.

    from onediffusion_client import Client
    client = Client("http://127.0.0.1:8000", api_key="...")
    job = client.text_to_image("a lighthouse at dusk", width=512, height=512)
    job.image().save("lighthouse.png")
"""

from ._common import Page
from .aio import AsyncBatch, AsyncClient, AsyncJob
from .client import Batch, Client, Job
from .errors import (
    ApiError, Conflict, FieldError, InvalidRequest, JobCanceled, JobFailed, NotFound, NotSupported, OneDiffusionError,
    RateLimited, Unauthorized, Unavailable, WaitTimeout,
)
from .tasks import TASKS
from .types import (
    Box, Camera, CameraPose, ClassSpec, DepthInfo, Detection, Event, Frame, Intrinsics, JobError, Output, Progress,
    Segment, Webhook,
)
from .webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "ApiError", "AsyncBatch", "AsyncClient", "AsyncJob", "Batch", "Box", "Camera", "CameraPose", "ClassSpec", "Client",
    "Conflict", "DepthInfo", "Detection", "Event", "FieldError", "Frame", "Intrinsics", "InvalidRequest", "Job",
    "JobCanceled", "JobError", "JobFailed", "NotFound", "NotSupported", "OneDiffusionError", "Output", "Page", "Progress",
    "RateLimited", "Segment", "TASKS", "Unauthorized", "Unavailable", "WaitTimeout", "Webhook",
    "WebhookVerificationError", "verify_webhook",
]
