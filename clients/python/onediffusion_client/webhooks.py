"""Verify the service's webhook calls in a receiver: `verify_webhook(headers, body, secret)`.

Two signature formats are understood:
- Standard Webhooks (https://www.standardwebhooks.com): `webhook-id`, `webhook-timestamp` and
  `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` (several space-separated
  signatures allowed); a `whsec_`-prefixed secret is base64 and its decoded bytes are the key.
- The service's first format: `OneDiffusion-Timestamp` and
  `OneDiffusion-Signature: v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import Any, Mapping, Optional, Union

from .errors import OneDiffusionError


class WebhookVerificationError(OneDiffusionError):
    """The call is not signed with this secret, or is too old (a replay)."""


def _keys(secret: Union[str, bytes]) -> list[bytes]:
    """The HMAC keys a secret may stand for: the base64-decoded part of a `whsec_<base64>` secret
    (Standard Webhooks), the secret's UTF-8 bytes as given (the service's first format), and its
    base64 decoding when it is valid base64."""
    if isinstance(secret, bytes):
        return [secret]
    keys = []
    body = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    try:
        keys.append(base64.b64decode(body, validate=True))
    except (binascii.Error, ValueError):
        pass
    keys.append(secret.encode())
    return keys


def _check_time(timestamp: Optional[str], tolerance_s: Optional[float], now: Optional[float]) -> None:
    try:
        sent = int(timestamp or "")
    except ValueError:
        raise WebhookVerificationError("missing or malformed webhook timestamp") from None
    if tolerance_s is not None and abs((now if now is not None else time.time()) - sent) > tolerance_s:
        raise WebhookVerificationError(f"webhook timestamp {sent} is more than {tolerance_s} s from now (a replay?)")


def verify_webhook(headers: Mapping[str, str], body: Union[bytes, str], secret: Union[str, bytes],
                   tolerance_s: Optional[float] = 300, now: Optional[float] = None) -> Any:
    """Check a webhook call's signature and age; returns the parsed JSON body, or raises
    WebhookVerificationError. Pass the raw body exactly as received."""
    lower = {k.lower(): v for k, v in headers.items()}
    raw = body.encode() if isinstance(body, str) else bytes(body)
    keys = _keys(secret)
    if "webhook-signature" in lower:
        msg_id, timestamp = lower.get("webhook-id", ""), lower.get("webhook-timestamp")
        _check_time(timestamp, tolerance_s, now)
        content = f"{msg_id}.{timestamp}.".encode() + raw
        expected = [base64.b64encode(hmac.new(k, content, hashlib.sha256).digest()).decode() for k in keys]
        given = [part.split(",", 1)[1] for part in lower["webhook-signature"].split() if part.startswith("v1,")]
    elif "onediffusion-signature" in lower:
        timestamp = lower.get("onediffusion-timestamp")
        _check_time(timestamp, tolerance_s, now)
        content = f"{timestamp}.".encode() + raw
        expected = ["v1=" + hmac.new(k, content, hashlib.sha256).hexdigest() for k in keys]
        given = [lower["onediffusion-signature"].strip()]
    else:
        raise WebhookVerificationError("the call carries no webhook signature header (was a secret set?)")
    if not any(hmac.compare_digest(e, g) for e in expected for g in given):
        raise WebhookVerificationError("webhook signature does not match (wrong secret or altered body)")
    return json.loads(raw)
