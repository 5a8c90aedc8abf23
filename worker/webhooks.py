"""Webhook delivery: an RQ job on its own queue, run by the deliverer process (not the GPU loop).

A failed call (network error, timeout, non-2xx) raises, and RQ's `Retry` schedules the next attempt
with exponential backoff; the job's result in Redis is untouched either way. Redirects are not followed."""

from __future__ import annotations

import json
import logging
import time
from urllib.parse import urlsplit, urlunsplit

import httpx
from rq import get_current_job

from app.jobs import JobService
from app.settings import get_settings
from app.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, standard_headers
from app.webhook_guard import UnsafeWebhook, parse_allowlist, resolve_checked

log = logging.getLogger(__name__)


class DeliveryFailed(RuntimeError):
    pass


def deliver(owner: str, owner_id: str, delivery_id: str, body: str) -> dict:
    """POST `body` to the webhook of job or batch `owner_id`, signed with its secret."""
    settings = get_settings()
    service = JobService(get_current_job().connection, settings)
    hook = service.webhook_of(owner, owner_id)
    if not hook:
        return {"skipped": "no webhook"}
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "onediffusion-webhooks/0.1",
        EVENT_HEADER: json.loads(body).get("event", ""),
        DELIVERY_HEADER: delivery_id,
        TIMESTAMP_HEADER: timestamp,
        **standard_headers(hook.get("secret"), delivery_id, timestamp, body),
    }
    if hook.get("secret"):
        headers[SIGNATURE_HEADER] = sign(hook["secret"], timestamp, body)
    extra = {"delivery_id": delivery_id, "owner": owner, "owner_id": owner_id}
    try:
        host, address = resolve_checked(hook["url"], parse_allowlist(settings.webhook_allowlist))
    except UnsafeWebhook as exc:  # permanent: retrying cannot make the address safe
        log.warning("webhook refused: %s", exc, extra=extra)
        return {"refused": str(exc)}
    try:
        status = _post_pinned(hook["url"], host, address, body.encode(), headers, settings)
    except httpx.HTTPError as exc:
        log.warning("webhook call failed: %s", type(exc).__name__, extra=extra)
        raise DeliveryFailed(f"{type(exc).__name__} calling the webhook") from None
    if not 200 <= status < 300:
        log.warning("webhook answered %s", status, extra=extra)
        raise DeliveryFailed(f"the webhook answered {status}")
    log.info("webhook delivered", extra={**extra, "status": status})
    return {"status": status}


def _post_pinned(url: str, host: str, address: str, body: bytes, headers: dict, settings) -> int:
    """POST to the address that was checked (not a fresh DNS answer), with the URL's Host and TLS name;
    no redirects, a bounded timeout, and at most `webhook_max_response_bytes` of the answer read."""
    parts = urlsplit(url)
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    headers = {**headers, "Host": parts.netloc}
    with httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False) as client:
        request = client.build_request("POST", pinned, content=body, headers=headers)
        if parts.scheme == "https":
            request.extensions["sni_hostname"] = host
        response = client.send(request, stream=True)
        try:
            read = 0
            for chunk in response.iter_bytes():
                read += len(chunk)
                if read >= settings.webhook_max_response_bytes:
                    break
        finally:
            response.close()
        return response.status_code
