"""Exceptions carrying what the API said: its error `type`, `message` and per-field details."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import httpx


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class OneDiffusionError(Exception):
    """Base of every error this client raises."""


class ApiError(OneDiffusionError):
    """The API answered an error: `{"error": {"type", "message", "fields"?}}` with an HTTP status."""

    def __init__(self, status: int, type: str, message: str, fields: Optional[list[FieldError]] = None,
                 headers: Optional[dict[str, str]] = None):
        super().__init__(f"{status} {type}: {message}")
        self.status = status
        self.type = type
        self.message = message
        self.fields = fields or []
        self.headers = headers or {}


class InvalidRequest(ApiError):
    """400 / 413 / 415 / 422: the request must change; `fields` says which field and how."""


class Unauthorized(ApiError):
    """401: a missing, wrong or revoked API key."""


class NotFound(ApiError):
    """404: no such job, batch or file (or not yours)."""


class Conflict(ApiError):
    """409: e.g. cancelling a job that has already ended."""


class RateLimited(ApiError):
    """429: a rate, quota or queue limit; `retry_after` is the wait the API asked for, in seconds."""

    @property
    def retry_after(self) -> Optional[float]:
        return parse_retry_after(self.headers.get("retry-after"))


class Unavailable(ApiError):
    """503: the service (its job store) is unreachable for now."""


class NotSupported(OneDiffusionError):
    """The server does not have this feature (e.g. an older server without `GET /v1/jobs`)."""


class JobFailed(OneDiffusionError):
    """A job ended `failed` (or `canceled`, see JobCanceled); `type` and `message` are the job's error."""

    def __init__(self, job: Any):
        error = job.error
        self.job = job
        self.type = error.type if error else job.status
        self.message = error.message if error else f"job {job.id} ended {job.status}"
        super().__init__(f"job {job.id} {job.status}: {self.type}: {self.message}")


class JobCanceled(JobFailed):
    """The job was canceled."""


class WaitTimeout(OneDiffusionError, TimeoutError):
    """A job did not end within the time given to `wait()`; it goes on running on the server."""


_BY_STATUS = {400: InvalidRequest, 401: Unauthorized, 404: NotFound, 409: Conflict, 413: InvalidRequest,
              415: InvalidRequest, 422: InvalidRequest, 429: RateLimited, 503: Unavailable}


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    import time

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def error_from_response(response: httpx.Response) -> ApiError:
    """The exception for an error response, read from the API's error body when it has one."""
    type_, message, fields = "http_error", response.reason_phrase or f"HTTP {response.status_code}", []
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        type_ = str(error.get("type", type_))
        message = str(error.get("message", message))
        fields = [FieldError(str(f.get("field", "")), str(f.get("message", ""))) for f in error.get("fields") or []
                  if isinstance(f, dict)]
    elif response.text:
        message = response.text[:500]
    cls = _BY_STATUS.get(response.status_code, ApiError)
    return cls(response.status_code, type_, message, fields, {k.lower(): v for k, v in response.headers.items()})
