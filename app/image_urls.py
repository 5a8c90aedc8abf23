"""Input images given by URL: fetched by the gateway before validation of the pixels.

Cheap first: the URLs are counted, and the request is checked as far as it can be without the images
(counts of views and frames, lengths, cost), before anything is fetched. Fetches run on the event loop,
not on request threads, at most IMAGE_URL_CONCURRENCY at once in this process and IMAGE_URL_PER_TENANT
for one tenant, all the images of one request within one deadline (IMAGE_URL_TIMEOUT_S), so a tenant
pointing many requests at a slow server waits for its own slots and holds nobody else's.

Every fetch goes through the SSRF guard with its own allowlist (IMAGE_URL_ALLOWLIST, apart from the
webhooks'); link-local and metadata addresses are never fetched, allowlisted or not, and loopback only at
an address the allowlist names exactly (a development image server); the connection goes
to the address that was checked; no redirects; a byte limit per image. A failed fetch is answered with
one message whatever went wrong, so answers do not tell open ports, status codes or contents apart.
The fetched bytes then take the base64 path, so the job, its input echo and its outputs are as if sent inline."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
from pydantic import BaseModel

from core.settings import Settings
from core.webhook_guard import UnsafeWebhook, parse_allowlist, resolve_checked
from model.tasks import TaskInputError

from .errors import ApiError

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # its request lines would log the URLs, which may carry tokens
IMAGE_KEYS = ("image", "mask", "images")  # request fields that hold images (lists of them for `images`)
MAX_URLS = 16  # most images by URL in one request
# Stands in for a fetched image while the request is checked before fetching: valid as a field value,
# refused by the image decoder, which is the first step that needs the image itself.
PENDING = "data:image/png;base64,UEVORElORw=="
FAILED = "the image could not be fetched from this URL (it must answer 200 with the image itself, without redirects)"


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


def _dotted(field: str) -> str:
    """'frames[3].image' -> 'frames.3.image': the task's field names in the request paths' form."""
    return re.sub(r"\[(\d+)\]", r".\1", field)


def check_before_fetching(model: type[BaseModel], data: dict, urls: list[str], check: Callable[[BaseModel], None]) -> None:
    """Run the request's own checks with a placeholder for each image URL: a refusal that does not come
    from a placeholder (too many views, a prompt too long, a cost over the limit, a bad inline image)
    is answered before anything is fetched; reaching a placeholder means the rest needs the images."""
    try:
        check(model.model_validate(data))
    except TaskInputError as exc:
        if _dotted(exc.field) not in urls:
            raise


class ImageFetcher:
    """The process's image fetches: slots in all and per tenant, and a thread limiter of its own for the
    DNS look-ups (blocking calls), so fetches never wait on or take the request threads."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.all = asyncio.Semaphore(settings.image_url_concurrency)
        self.tenants: dict[str, list] = {}  # tenant -> [semaphore, users]
        self.dns = anyio.CapacityLimiter(max(4, settings.image_url_concurrency // 4))

    @asynccontextmanager
    async def slot(self, tenant: str) -> AsyncIterator[None]:
        entry = self.tenants.setdefault(tenant, [asyncio.Semaphore(self.settings.image_url_per_tenant), 0])
        entry[1] += 1
        try:
            async with entry[0], self.all:
                yield
        finally:
            entry[1] -= 1
            if not entry[1]:
                self.tenants.pop(tenant, None)

    async def fetch_all(self, body: BaseModel, tenant: str, check: Callable[[BaseModel], None]) -> BaseModel:
        """The request with each image URL replaced by the fetched image (base64); unchanged without URLs."""
        data = body.model_dump(mode="json", exclude_unset=True, by_alias=True)
        found: list[tuple[str, Any, Any]] = []
        _walk(data, "", found)
        if not found:
            return body
        if len(found) > MAX_URLS:
            raise _refuse(found[MAX_URLS][0], f"at most {MAX_URLS} images by URL per request; send the others inline")
        urls = [container[key] for _, container, key in found]
        for _, container, key in found:
            container[key] = PENDING
        await anyio.to_thread.run_sync(check_before_fetching, type(body), data, [f for f, _, _ in found], check)
        deadline = self.settings.image_url_timeout_s
        fetches = [self._fetch(url, field, tenant) for url, (field, _, _) in zip(urls, found)]
        try:
            async with asyncio.timeout(deadline):
                images = await asyncio.gather(*fetches)
        except TimeoutError:
            raise _refuse(found[0][0] if len(found) == 1 else "images",
                          f"fetching the images took longer than {deadline:g} s; send them inline or from a faster host") from None
        for image, (_, container, key) in zip(images, found):
            container[key] = base64.b64encode(image).decode()
        return type(body).model_validate(data)

    async def _fetch(self, url: str, field: str, tenant: str) -> bytes:
        settings = self.settings
        try:
            host, address = await anyio.to_thread.run_sync(
                lambda: resolve_checked(url, parse_allowlist(settings.image_url_allowlist), "image URL",
                                        "IMAGE_URL_ALLOWLIST", local_never=True),
                limiter=self.dns,
            )
        except UnsafeWebhook as exc:
            reason = str(exc)
            if "resolves to" in reason or "does not resolve" in reason:  # what a name resolves to is not told
                reason = ("image URLs may only name public addresses that resolve (an operator can allow private "
                          "ones with IMAGE_URL_ALLOWLIST; link-local never)")
            raise _refuse(field, reason) from None
        async with self.slot(tenant):
            try:
                return await _get(url, host, address, settings)
            except _Failed as exc:
                log.info("image URL fetch failed: %s", exc.reason, extra={"field": field})
            except httpx.HTTPError as exc:
                log.info("image URL fetch failed: %s", type(exc).__name__, extra={"field": field})
        raise _refuse(field, FAILED)


class _Failed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


async def _get(url: str, host: str, address: str, settings: Settings) -> bytes:
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
                raise _Failed(f"HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise _Failed(f"larger than {limit} bytes")
            chunks, read = [], 0
            async for chunk in response.aiter_bytes():
                read += len(chunk)
                if read > limit:
                    raise _Failed(f"larger than {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            await response.aclose()
