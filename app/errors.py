"""Errors: one shape for every failure, `{"error": {"type", "message", "fields"?}}`, never a traceback. The
exceptions the gateway's service layer raises (`ApiError`, `CannotCancel`), and the handlers that turn
them, core.job_store.JobNotFound, invalid requests, Redis and storage failures into that answer."""

from __future__ import annotations

import logging
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.job_store import JobNotFound
from core.storage import StorageUnavailable
from core.redis_errors import classify
from model.decode_budget import DecodeBusy
from model.tasks import TASKS, TaskInputError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than success: the status, the error's type and message, headers, and the fields at fault."""

    def __init__(self, status: int, type_: str, message: str, headers: Optional[dict] = None, fields: Optional[list] = None):
        super().__init__(message)
        self.status, self.type, self.message, self.headers, self.fields = status, type_, message, headers, fields


class CannotCancel(RuntimeError):
    """A cancel of a job that has already ended (409)."""


def error_response(status: int, type_: str, message: str, headers: Optional[dict] = None, fields: Optional[list] = None):
    body = {"type": type_, "message": message}
    if fields:
        body["fields"] = fields
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def validation_fields(errors: list[dict]) -> list[dict]:
    fields = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
        # drop pydantic's union-branch names from batch item locations (e.g. "TextToImageItem", or the task the
        # item's `task` picked): `items.0.prompt`
        loc = [p for p in loc if not (p[:1].isupper() and p.endswith("Item"))]
        if len(loc) > 2 and loc[0] == "items" and loc[2] in TASKS:
            del loc[2]
        field = ".".join(loc) or "body"
        message = err.get("msg", "invalid")
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        fields.append({"field": field, "message": message})
    return fields


def summary(fields: list[dict]) -> str:
    return "; ".join(f"{f['field']}: {f['message']}" for f in fields)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.type, exc.message, exc.headers, exc.fields)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError):
        fields = validation_fields(exc.errors())
        return error_response(422, "invalid_request", summary(fields), fields=fields)

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError):
        fields = validation_fields(exc.errors())
        return error_response(422, "invalid_request", summary(fields), fields=fields)

    @app.exception_handler(TaskInputError)
    async def _task_input(request: Request, exc: TaskInputError):
        fields = [{"field": exc.field, "message": exc.message}]
        return error_response(422, "invalid_request", str(exc), fields=fields)

    @app.exception_handler(DecodeBusy)
    async def _decode_busy(request: Request, exc: DecodeBusy):
        return error_response(503, "busy", str(exc), {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(JobNotFound)
    async def _not_found(request: Request, exc: JobNotFound):
        return error_response(404, "not_found", "no such job or batch (ids expire with their results)")

    @app.exception_handler(CannotCancel)
    async def _cannot_cancel(request: Request, exc: CannotCancel):
        return error_response(409, "conflict", f"cannot cancel: {exc}")

    @app.exception_handler(RedisError)
    async def _redis_failed(request: Request, exc: RedisError):
        # 503 whatever Redis said (nothing a client sent makes Redis fail), with what happened in words;
        # the exception's text (it can name keys) goes to the log only.
        failure = classify(exc)
        log.error("redis %s on %s %s: %s: %s", failure.kind, request.method, request.url.path, type(exc).__name__, exc)
        type_ = "store_full" if failure.kind == "full" else "unavailable"
        return error_response(503, type_, failure.message, {"Retry-After": str(failure.retry_after_s)})

    @app.exception_handler(StorageUnavailable)
    async def _storage_down(request: Request, exc: StorageUnavailable):
        log.error("storage unavailable: %s", exc)
        return error_response(503, "unavailable", f"{exc}; retry shortly", {"Retry-After": "10"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kinds = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}
        return error_response(exc.status_code, kinds.get(exc.status_code, "http_error"), str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error; it has been logged")
