"""Input images given by URL: fetched by the gateway before validation of the pixels, through the same SSRF
guard as webhooks (public addresses only unless WEBHOOK_ALLOWLIST lets a private one through; the checked
address is the one connected to), with one deadline and a byte limit per image, no redirects followed.
The fetched bytes then take the base64 path, so the job, its input echo and its outputs are as if sent inline."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel

from core.settings import Settings
from core.webhook_guard import UnsafeWebhook, parse_allowlist, resolve_checked

from .exceptions import ApiError

logging.getLogger("httpx").setLevel(logging.WARNING)  # its request lines would log the URLs, which may carry tokens
IMAGE_KEYS = ("image", "mask", "images")  # request fields that hold images (lists of them for `images`)
MAX_URLS = 16  # most images by URL in one request


def is_url(value: Any) -> bool:
    return isinstance(value, str) and value[:8].lower().startswith(("http://", "https://"))


def _refuse(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", f"{field}: {message}", fields=[{"field": field, "message": message}])


def _walk(value: Any, path: str, found: list[tuple[str, dict | list, Any]]) -> None:
    """Collect (field path, container, key) of every image URL in a request's plain data."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key in IMAGE_KEYS and is_url(item):
                found.append((where, value, key))
            elif key in IMAGE_KEYS and isinstance(item, list):
                found.extend((f"{where}.{i}", item, i) for i, one in enumerate(item) if is_url(one))
            else:
                _walk(item, where, found)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, f"{path}.{i}", found)


def fetch_image_urls(body: BaseModel, settings: Settings) -> BaseModel:
    """The request with each image URL replaced by the fetched image (base64); unchanged without URLs."""
    data = body.model_dump(mode="json", exclude_unset=True, by_alias=True)
    found: list[tuple[str, Any, Any]] = []
    _walk(data, "", found)
    if not found:
        return body
    if len(found) > MAX_URLS:
        raise _refuse(found[MAX_URLS][0], f"at most {MAX_URLS} images by URL per request; send the others inline")
    for field, container, key in found:
        container[key] = base64.b64encode(fetch_image(container[key], field, settings)).decode()
    return type(body).model_validate(data)


def fetch_image(url: str, field: str, settings: Settings) -> bytes:
    try:
        host, address = resolve_checked(url, parse_allowlist(settings.webhook_allowlist))
    except UnsafeWebhook as exc:
        reason = str(exc).replace("webhooks may only call", "image URLs may only name").replace("webhook", "image")
        raise _refuse(field, reason) from None
    try:
        return asyncio.run(asyncio.wait_for(_get(url, host, address, field, settings), settings.image_url_timeout_s))
    except (asyncio.TimeoutError, TimeoutError):
        raise _refuse(field, f"fetching the image took longer than {settings.image_url_timeout_s:g} s; "
                             "send it inline or from a faster host") from None
    except httpx.HTTPError as exc:
        raise _refuse(field, f"the image could not be fetched ({type(exc).__name__}: {exc})") from None


async def _get(url: str, host: str, address: str, field: str, settings: Settings) -> bytes:
    parts = urlsplit(url)
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    limit = settings.image_url_max_bytes
    async with httpx.AsyncClient(timeout=settings.image_url_timeout_s, follow_redirects=False) as client:
        request = client.build_request("GET", pinned, headers={"Host": parts.netloc, "Accept": "image/*"})
        if parts.scheme == "https":
            request.extensions["sni_hostname"] = host
        response = await client.send(request, stream=True)
        try:
            if response.status_code != 200:
                hint = " (redirects are not followed: give the final URL)" if response.is_redirect else ""
                raise _refuse(field, f"the image URL answered HTTP {response.status_code}{hint}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise _refuse(field, f"the image at the URL is larger than {limit} bytes")
            chunks, read = [], 0
            async for chunk in response.aiter_bytes():
                read += len(chunk)
                if read > limit:
                    raise _refuse(field, f"the image at the URL is larger than {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            await response.aclose()
