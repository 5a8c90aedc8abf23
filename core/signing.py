"""Webhook signatures, two ways on every call:

- Standard Webhooks (https://www.standardwebhooks.com): `webhook-id` (the delivery id, the same on every
  retry), `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
  The key is the secret's UTF-8 bytes, or for a `whsec_<base64>` secret the decoded bytes, so receivers
  verify with the `standardwebhooks` package: `Webhook(secret.encode())` (or `Webhook("whsec_...")`).
- The service's first format, kept for existing receivers: HMAC-SHA256 over `"{timestamp}.{body}"`, sent as
  `OneDiffusion-Signature: v1=<hex>` with `OneDiffusion-Timestamp`.

A receiver compares in constant time and rejects timestamps older than a few minutes (replays)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook as StandardWebhook

SIGNATURE_HEADER = "OneDiffusion-Signature"
TIMESTAMP_HEADER = "OneDiffusion-Timestamp"
EVENT_HEADER = "OneDiffusion-Event"
DELIVERY_HEADER = "OneDiffusion-Delivery"


STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
STANDARD_SECRET_PREFIX = "whsec_"


def standard_key(secret: str) -> bytes:
    """The HMAC key of a secret per Standard Webhooks: a `whsec_` secret's base64 part decoded, else its bytes."""
    if secret.startswith(STANDARD_SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(STANDARD_SECRET_PREFIX):] + "==")
        except (binascii.Error, ValueError):
            pass
    return secret.encode()


def standard_signature(secret: str, msg_id: str, timestamp: str, body: bytes | str) -> str:
    """`v1,<base64>`: HMAC-SHA256 over "{msg_id}.{timestamp}.{body}", made by the `standardwebhooks` package
    (the reference implementation receivers verify with), keyed as `standard_key` says."""
    text = body.decode() if isinstance(body, bytes) else body
    moment = datetime.fromtimestamp(int(timestamp), tz=timezone.utc)
    return StandardWebhook(standard_key(secret)).sign(msg_id, moment, text)


def standard_headers(secret: str | None, msg_id: str, timestamp: str, body: bytes | str) -> dict[str, str]:
    """The Standard Webhooks headers of one call (the signature only when the webhook has a secret)."""
    headers = {STANDARD_ID_HEADER: msg_id, STANDARD_TIMESTAMP_HEADER: timestamp}
    if secret:
        headers[STANDARD_SIGNATURE_HEADER] = standard_signature(secret, msg_id, timestamp, body)
    return headers


def sign(secret: str, timestamp: str, body: bytes | str) -> str:
    payload = body.encode() if isinstance(body, str) else body
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + payload, hashlib.sha256).hexdigest()
    return f"v1={digest}"

