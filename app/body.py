"""Request bodies: a size limit for every request, and task requests as JSON or multipart uploads."""

from __future__ import annotations

import base64
import json
import re
import typing
from typing import Any

from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, error_response

# Most JSON values (numbers, strings, lists, objects) one body may hold: a full batch of 64 multiview
# items with camera matrices is about 30 000. Counted on the raw bytes before parsing, so a body of a
# million tiny items costs a scan, not a gigabyte of Python objects.
MAX_JSON_VALUES = 100_000
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


def _structural(text: bytes) -> int:
    return text.count(b",") + text.count(b"[") + text.count(b"{")


def json_values_bound(raw: bytes) -> int:
    """An upper bound on the number of values in a JSON text: separators and openers outside strings.
    Counted at C speed on the whole text first; only a text just over the bound is scanned string by
    string (no copy of the text either way), and one far over it is not worth the scan."""
    total = _structural(raw) + 1
    if total <= MAX_JSON_VALUES or total > 10 * MAX_JSON_VALUES:
        return total
    inside = sum(_structural(match.group()) for match in _JSON_STRING.finditer(raw))
    return total - inside


def load_json(raw: bytes, field: str = "the body") -> Any:
    """Parse JSON text with bounded cost: 413 past MAX_JSON_VALUES values, 400 for nesting too deep."""
    if json_values_bound(raw) > MAX_JSON_VALUES:
        raise ApiError(413, "payload_too_large", f"{field} holds more than {MAX_JSON_VALUES} JSON values; send fewer items")
    try:
        return json.loads(raw)
    except RecursionError:
        raise ApiError(400, "invalid_json", f"{field} is nested too deeply to be a request") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"{field} is not valid JSON: {exc}") from None
    except ValueError:  # an integer of more digits than Python converts (4300): no request needs one
        raise ApiError(400, "invalid_json", f"{field} holds a number with too many digits") from None


def idempotency_key(request) -> typing.Optional[str]:
    """The Idempotency-Key header, checked: 1 to 200 visible ASCII characters."""
    value = request.headers.get("idempotency-key")
    if value is not None and not IDEMPOTENCY_KEY.match(value):
        raise ApiError(422, "invalid_request", "Idempotency-Key: use 1 to 200 visible ASCII characters (e.g. a UUID)",
                       fields=[{"field": "Idempotency-Key", "message": "use 1 to 200 visible ASCII characters"}])
    return value


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes with 413, by Content-Length or while streaming,
    and a request framed both by Content-Length and Transfer-Encoding with 400 (and the connection closed)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and b"transfer-encoding" in headers:
            # two framings of one body: a proxy in front may read it the other way (request smuggling)
            return await error_response(400, "invalid_request", "send Content-Length or Transfer-Encoding, not both",
                                        {"Connection": "close"})(scope, receive, send)
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


def _is_text(annotation: Any) -> bool:
    """A `str` field, or an optional one."""
    return annotation is str or (typing.get_origin(annotation) is typing.Union and str in typing.get_args(annotation))


EMPTY_TEXT = '""'  # in a form, the JSON text of an empty string: an explicitly empty text field


def _placeholder(key: str, value: str, model: type[BaseModel]) -> bool:
    """True for a form value that stands for "no value": the text `null` (what some form builders send for
    an optional field left empty) or an empty field (what Swagger UI's "Try it out" sends for a field left
    empty). Such a value leaves an optional field out, so its default applies (an empty negative_prompt
    keeps the default list; `""` turns it off); `null` for a required field is refused, never taken as the
    text "null", and an empty required text reaches validation (which says it is too short)."""
    field = model.model_fields.get(key)
    if field is None or value not in ("null", ""):
        return False
    if value == "" and _is_text(field.annotation) and field.is_required():
        return False
    if field.is_required():
        message = "a value is required here; `null` stands for no value in a form"
        raise ApiError(422, "invalid_request", f"{key}: {message}", fields=[{"field": key, "message": message}])
    return True


_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,200})"|([^\s;,]{1,200}))', re.IGNORECASE)


def _check_complete_multipart(content_type: str, body: bytes) -> None:
    """400 for a multipart body without its closing delimiter (`--BOUNDARY--`): a body cut short would
    otherwise be taken as the form of the parts that did arrive."""
    match = _BOUNDARY.search(content_type)
    if not match:
        raise ApiError(400, "invalid_multipart", "multipart/form-data needs a boundary parameter in Content-Type")
    close = b"--" + (match.group(1) or match.group(2)).encode("latin-1") + b"--"
    if not (body.startswith(close) or b"\r\n" + close in body[-(len(close) + 4096):]):
        raise ApiError(400, "invalid_multipart", "the multipart body ends without its closing boundary "
                                                 "(--BOUNDARY--); it was cut short: send it whole")


async def _form_to_dict(request, model: type[BaseModel], max_part_size: int) -> dict:
    """Multipart form -> the model's JSON shape: files become base64, JSON-looking text is parsed, repeated
    keys of list fields become lists, and placeholders of optional fields (`null`, empty) are left out.
    A part sent as `application/json` (the document's `encoding` for lists and objects, which Swagger UI
    and generated clients follow by sending it as a file part) is that JSON text."""
    _check_complete_multipart(request.headers.get("content-type", ""), await read_body(request))
    try:  # parses the body read above
        form = await request.form(max_files=64, max_fields=256, max_part_size=max_part_size)
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", GONE) from None
    data: dict[str, Any] = {}
    for key in form.keys():
        values = []
        for value in form.getlist(key):
            if isinstance(value, UploadFile) and (value.content_type or "").split(";")[0].strip().lower() == "application/json":
                value = (await value.read()).decode("utf-8", errors="replace").strip()
            if isinstance(value, str) and _placeholder(key, value, model):
                continue
            if value == EMPTY_TEXT:
                value = ""
            if isinstance(value, UploadFile):
                values.append(base64.b64encode(await value.read()).decode())
            elif value[:1] in "[{":
                try:
                    values.append(load_json(value.encode(), f"the form field {key!r}"))
                except ApiError as exc:
                    if exc.type != "invalid_json" or "nested" in exc.message:
                        raise
                    values.append(value)
            else:
                values.append(value)
        if not values:
            continue
        field = model.model_fields.get(key)
        if field is not None and _is_list(field.annotation):
            flat = []
            for v in values:
                flat.extend(v if isinstance(v, list) else [v])
            data[key] = flat
        else:
            data[key] = values[0] if len(values) == 1 else values
    return data


GONE = "the client closed the connection before its body was all sent"


async def read_body(request) -> bytes:
    """The whole body; a client that goes away mid-upload ends the request quietly (a 4xx nobody reads,
    no traceback): it is the client's doing, not a server error."""
    try:
        return await request.body()
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", GONE) from None


async def read_json_object(request) -> dict:
    """The JSON body as a dict, parsed off the event loop with bounded cost."""
    raw = await read_body(request)
    data = await run_in_threadpool(load_json, raw) if raw else {}
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    return data


async def parse_request(request, model: type[BaseModel], max_part_size: int) -> BaseModel:
    """The body as `model`: JSON, or multipart/form-data (a part at most `max_part_size` bytes)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        data = await _form_to_dict(request, model, max_part_size)
    elif content_type in ("application/json", ""):
        data = await read_json_object(request)
    else:
        raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    return await run_in_threadpool(model.model_validate, data)
