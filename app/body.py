"""Request bodies: a size limit for every request, and task requests as JSON or multipart uploads."""

from __future__ import annotations

import base64
import json
import typing
from typing import Any

from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response
from .exceptions import ApiError


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        message = f"the request body is larger than {self.limit} bytes; send smaller or fewer images"
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await error_response(413, "payload_too_large", message)(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise ApiError(413, "payload_too_large", message)
            return msg

        await self.app(scope, limited, send)


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is list:
        return True
    return any(_is_list(a) for a in typing.get_args(annotation)) if origin is not None else False


async def _form_to_dict(request, model: type[BaseModel]) -> dict:
    """Multipart form -> the model's JSON shape: files become base64, JSON-looking text is parsed, repeated
    keys of list fields become lists."""
    form = await request.form(max_files=64, max_fields=256, max_part_size=request.app.state.settings.max_body_bytes)
    data: dict[str, Any] = {}
    for key in form.keys():
        values = []
        for value in form.getlist(key):
            if isinstance(value, UploadFile):
                values.append(base64.b64encode(await value.read()).decode())
            elif value[:1] in "[{":
                try:
                    values.append(json.loads(value))
                except json.JSONDecodeError:
                    values.append(value)
            else:
                values.append(value)
        field = model.model_fields.get(key)
        if field is not None and _is_list(field.annotation):
            flat = []
            for v in values:
                flat.extend(v if isinstance(v, list) else [v])
            data[key] = flat
        else:
            data[key] = values[0] if len(values) == 1 else values
    return data


async def parse_request(request, model: type[BaseModel]) -> BaseModel:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        data = await _form_to_dict(request, model)
    elif content_type in ("application/json", ""):
        raw = await request.body()
        try:
            data = json.loads(raw) if raw else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    else:
        raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    return model.model_validate(data)
