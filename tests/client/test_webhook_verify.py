"""verify_webhook against the Standard Webhooks test vector and the service's first signature format."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from onediffusion_client import WebhookVerificationError, verify_webhook

# The example of the Standard Webhooks specification (standard-webhooks/standard-webhooks, spec/standard-webhooks.md).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def spec_headers(signature: str = SPEC_SIGNATURE, timestamp: int = SPEC_TIMESTAMP) -> dict:
    return {"Webhook-Id": SPEC_ID, "Webhook-Timestamp": str(timestamp), "Webhook-Signature": signature}


def test_standard_webhooks_vector():
    assert verify_webhook(spec_headers(), SPEC_BODY, SPEC_SECRET, now=SPEC_TIMESTAMP + 10) == {"test": 2432232314}
    # several signatures (key rotation): one match is enough
    rotated = spec_headers("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= " + SPEC_SIGNATURE)
    assert verify_webhook(rotated, SPEC_BODY, SPEC_SECRET, now=SPEC_TIMESTAMP)


@pytest.mark.parametrize("headers,body,secret,now,why", [
    (spec_headers(), SPEC_BODY + b" ", SPEC_SECRET, SPEC_TIMESTAMP, "does not match"),
    (spec_headers(), SPEC_BODY, "whsec_" + base64.b64encode(b"another key").decode(), SPEC_TIMESTAMP, "does not match"),
    (spec_headers(), SPEC_BODY, SPEC_SECRET, SPEC_TIMESTAMP + 3600, "from now"),
    ({"Webhook-Id": SPEC_ID, "Webhook-Signature": SPEC_SIGNATURE}, SPEC_BODY, SPEC_SECRET, SPEC_TIMESTAMP, "timestamp"),
    ({}, SPEC_BODY, SPEC_SECRET, SPEC_TIMESTAMP, "no webhook signature"),
])
def test_standard_webhooks_rejections(headers, body, secret, now, why):
    with pytest.raises(WebhookVerificationError, match=why):
        verify_webhook(headers, body, secret, now=now)


def test_plain_secret_standard_format():
    """A secret without the whsec_ prefix is used as its UTF-8 bytes."""
    secret, body, ts = "plain-secret-123", json.dumps({"event": "job.succeeded"}).encode(), 1700000000
    signature = base64.b64encode(hmac.new(secret.encode(), f"msg_1.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(ts), "webhook-signature": f"v1,{signature}"}
    assert verify_webhook(headers, body, secret, now=ts)["event"] == "job.succeeded"


def test_first_format():
    secret, body, ts = "s3cret-value", b'{"event":"job.failed"}', 1700000000
    signature = "v1=" + hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    headers = {"OneDiffusion-Timestamp": str(ts), "OneDiffusion-Signature": signature}
    assert verify_webhook(headers, body.decode(), secret, now=ts + 5) == {"event": "job.failed"}
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, body, "wrong-secret", now=ts)
