"""What the sync and async clients share: settings, request bodies, retry decisions, event parsing,
and the job fields read from the API's job view."""

from __future__ import annotations

import json
import logging
import os
import random
import uuid
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import httpx

from . import types as t
from .errors import FieldError, InvalidRequest, parse_retry_after

log = logging.getLogger("onediffusion_client")

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "canceled")
MAX_PREFER_WAIT = 60  # the service's default MAX_WAIT_S


def base_url(value: Optional[str]) -> str:
    return (value or os.environ.get("ONEDIFFUSION_URL") or DEFAULT_URL).rstrip("/")


def headers(api_key: Optional[str]) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get("ONEDIFFUSION_API_KEY")
    base = {"User-Agent": "onediffusion-client/0.1", "Accept": "application/json"}
    return {**base, "Authorization": f"Bearer {key}"} if key else base


def new_idempotency_key() -> str:
    return "odc-" + uuid.uuid4().hex


def to_json(value: Any) -> Any:
    """Request values as JSON: the client's dataclasses by their `to_json`, containers recursively."""
    if hasattr(value, "to_json"):
        return to_json(value.to_json())
    if is_dataclass(value) and not isinstance(value, type):
        return to_json(asdict(value))
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def task_fields(fields: dict) -> dict:
    """The JSON body of a task: None values left out (the server's defaults apply), class names
    given as plain strings turned into `{"name": ...}`."""
    body = {k: v for k, v in fields.items() if v is not None}
    if "classes" in body:
        body["classes"] = [{"name": c} if isinstance(c, str) else c for c in body["classes"]]
    return to_json(body)


def batch_items(items: Iterable[Any]) -> list[dict]:
    """Batch items as dicts with a `task` key; `(task, {fields})` pairs are accepted too."""
    out = []
    for item in items:
        if isinstance(item, tuple):
            task, fields = item
            item = {"task": task, **fields}
        if not isinstance(item, dict) or "task" not in item:
            raise InvalidRequest(0, "invalid_request", "each batch item needs a task: a dict with 'task' or a (task, fields) pair",
                                 [FieldError("items", "name the task of each item")])
        out.append(task_fields(item))
    return out


def retry_delay(response: Optional[httpx.Response], attempt: int) -> float:
    """The wait before retry `attempt` (0-based): the API's Retry-After when it sent one, else
    exponential backoff with jitter."""
    if response is not None:
        asked = parse_retry_after(response.headers.get("retry-after"))
        if asked is not None:
            return asked
    return min(30.0, 0.5 * 2**attempt) * (0.5 + random.random() / 2)


def prefer_wait(timeout: Optional[float]) -> int:
    return int(max(1, min(MAX_PREFER_WAIT, timeout if timeout is not None else MAX_PREFER_WAIT)))


def cap_wait(seconds: int, timeout: httpx.Timeout) -> int:
    """A `Prefer: wait` the HTTP read timeout leaves room for (the answer comes after up to that long)."""
    if timeout.read is not None:
        seconds = min(seconds, int(timeout.read) - 5)
    return max(1, seconds)


class SSEParser:
    """Server-sent events from lines: `event:` and `data:` lines, an empty line ends an event."""

    def __init__(self):
        self.event: Optional[str] = None
        self.data: list[str] = []

    def feed(self, line: str) -> Optional[t.Event]:
        if line == "":
            if not self.data:
                self.event = None
                return None
            event = t.Event(self.event or "message", json.loads("\n".join(self.data)))
            self.event, self.data = None, []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None


class JobFields:
    """The job view's fields as attributes, with typed structured results."""

    id: str
    task: str
    status: str
    raw: dict

    def _update(self, body: dict) -> None:
        self.raw = body
        self.id = body["id"]
        self.task = body.get("task", "")
        self.status = body["status"]
        self.progress: Optional[t.Progress] = t.Progress.from_json(body.get("progress"))
        self.queue_position: Optional[int] = body.get("queue_position")  # jobs served before it (0: next); while queued
        self.eta_s: Optional[float] = body.get("eta_s")  # estimated seconds to its end; None until a step time is measured
        self.priority: int = body.get("priority") or 0  # its place among its tenant's own queued jobs (higher first)
        self.created_at: Optional[str] = body.get("created_at")
        self.started_at: Optional[str] = body.get("started_at")
        self.finished_at: Optional[str] = body.get("finished_at")
        self.timings: dict = body.get("timings") or {}
        self.outputs: list[t.Output] = [t.Output.from_json(o) for o in body.get("outputs") or []]
        self.data: dict = body.get("data") or {}
        self.warnings: list[str] = body.get("warnings") or []
        error = body.get("error")
        self.error: Optional[t.JobError] = t.JobError(error["type"], error["message"]) if error else None
        self.attempts: int = body.get("attempts", 0)
        self.batch_id: Optional[str] = body.get("batch_id")
        self.urls: dict = body.get("urls") or {}

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def detections(self) -> list[t.Detection]:
        """Boxes per class of a detection job."""
        return t.detections(self.data)

    @property
    def segments(self) -> list[t.Segment]:
        """Mask file and pixel count per class of a segmentation job."""
        return t.segments(self.data)

    @property
    def cameras(self) -> list[t.CameraPose]:
        """Camera poses of a camera-pose-estimation (or generate-with-cameras) job."""
        return t.cameras(self.data)

    @property
    def depth(self) -> Optional[t.DepthInfo]:
        return t.depth(self.data)

    def output(self, which: Any = None) -> t.Output:
        """An output by name, index or Output; the first one when None."""
        if isinstance(which, t.Output):
            return which
        if not self.outputs:
            raise LookupError(f"job {self.id} ({self.status}) has no outputs")
        if which is None:
            return self.outputs[0]
        if isinstance(which, int):
            return self.outputs[which]
        for output in self.outputs:
            if output.name == which:
                return output
        raise LookupError(f"job {self.id} has no output {which!r}; it has {[o.name for o in self.outputs]}")

    def _check_ended_well(self) -> None:
        from .errors import JobCanceled, JobFailed

        if self.status == "canceled":
            raise JobCanceled(self)
        if self.status == "failed":
            raise JobFailed(self)

    def __repr__(self) -> str:
        progress = f" {self.progress.step}/{self.progress.total}" if self.progress else ""
        return f"<{type(self).__name__} {self.id} {self.task} {self.status}{progress}>"


def same_origin(url: str, base: str) -> bool:
    a, b = httpx.URL(url), httpx.URL(base)
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def list_body(body: Any) -> list[dict]:
    """Items out of a `GET /v1/jobs` or `/v1/batches` answer: a list, or an object holding one."""
    if isinstance(body, list):
        return body
    for key in ("jobs", "items", "data"):
        if isinstance(body, dict) and isinstance(body.get(key), list):
            return body[key]
    raise ValueError("unexpected answer from a listing (GET /v1/jobs or /v1/batches)")


class Page(list):
    """One page of a listing: its items (a list), and `next_cursor` for the next page (None on the last)."""

    def __init__(self, items: Iterable[Any] = (), next_cursor: Optional[str] = None):
        super().__init__(items)
        self.next_cursor = next_cursor


def listing_params(limit: Optional[int], cursor: Optional[str], **filters: Any) -> dict:
    """Query parameters of GET /v1/jobs or /v1/batches; None values left out."""
    return {k: v for k, v in {"limit": limit, "cursor": cursor, **filters}.items() if v is not None}


def submit_wait(timeout: Optional[float], on_progress: Any) -> Optional[int]:
    """`Prefer: wait` for run(): none when progress is to be followed, since the API would hold its answer
    until the job ends (no progress seen for a job that ends within the wait); the event stream instead."""
    return None if on_progress is not None else prefer_wait(timeout)


def next_cursor(body: Any) -> Optional[str]:
    if isinstance(body, dict):
        for key in ("next_cursor", "cursor", "next"):
            if body.get(key):
                return str(body[key])
    return None


def is_batch(body: dict) -> bool:
    """Whether a task's answer is a batch (num_outputs > 1) rather than one job."""
    return "jobs" in body and "counts" in body


def output_path(folder: Union[str, Path], index: int, name: str) -> Path:
    """Where a batch's download puts job `index`'s output `name`: the jobs' outputs share names."""
    return Path(folder) / f"{index}-{Path(name).name}"
