"""Webhook signatures: HMAC-SHA256 over `"{timestamp}.{body}"`, sent as `OneDiffusion-Signature: v1=<hex>`.

A receiver recomputes the HMAC with its secret over the timestamp header, a dot and the raw body, compares
in constant time, and rejects timestamps older than a few minutes (replays)."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Optional

SIGNATURE_HEADER = "OneDiffusion-Signature"
TIMESTAMP_HEADER = "OneDiffusion-Timestamp"
EVENT_HEADER = "OneDiffusion-Event"
DELIVERY_HEADER = "OneDiffusion-Delivery"


def sign(secret: str, timestamp: str, body: bytes | str) -> str:
    payload = body.encode() if isinstance(body, str) else body
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + payload, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify(secret: str, timestamp: str, body: bytes | str, signature: str, tolerance_s: Optional[float] = 300) -> bool:
    if tolerance_s is not None:
        try:
            if abs(time.time() - int(timestamp)) > tolerance_s:
                return False
        except ValueError:
            return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)
