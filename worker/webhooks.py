"""Webhook delivery: an RQ job on its own queue, run by the deliverer process (not the GPU loop).

A failed call (network error, timeout, non-2xx) raises, and RQ's `Retry` schedules the next attempt
with exponential backoff; the job's result in Redis is untouched either way. Redirects are not followed."""

from __future__ import annotations

import json
import logging
import time

import httpx
from rq import get_current_job

from app.jobs import JobService
from app.settings import get_settings
from app.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

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
    }
    if hook.get("secret"):
        headers[SIGNATURE_HEADER] = sign(hook["secret"], timestamp, body)
    extra = {"delivery_id": delivery_id, "owner": owner, "owner_id": owner_id}
    try:
        with httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False) as client:
            response = client.post(hook["url"], content=body.encode(), headers=headers)
    except httpx.HTTPError as exc:
        log.warning("webhook call failed: %s", type(exc).__name__, extra=extra)
        raise DeliveryFailed(f"{type(exc).__name__} calling the webhook") from None
    if not 200 <= response.status_code < 300:
        log.warning("webhook answered %s", response.status_code, extra=extra)
        raise DeliveryFailed(f"the webhook answered {response.status_code}")
    log.info("webhook delivered", extra={**extra, "status": response.status_code})
    return {"status": response.status_code}
