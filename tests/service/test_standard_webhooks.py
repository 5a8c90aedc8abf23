"""Webhook calls verify with the `standardwebhooks` package (webhook-id, webhook-timestamp, webhook-signature)."""

from __future__ import annotations

import base64

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from core.signing import standard_signature
from tests.cases import CASES
from tests.service.harness import wait_until

PLAIN = "test-secret-123"
WHSEC = "whsec_" + base64.b64encode(b"a thirty-two byte key for hooks!").decode()


def test_spec_example_signature():
    # the example of the Standard Webhooks specification
    signature = standard_signature("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
                                   "1614265330", b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_receiver_verifies_with_standardwebhooks(make_service, receiver):
    receiver.up()
    service = make_service()
    ids = {}
    for secret in (PLAIN, WHSEC):
        payload = {**CASES["text-to-image"][0], "webhook": {"url": receiver.url, "secret": secret}}
        ids[secret] = service.submit("text-to-image", payload).json()["id"]
    wait_until(lambda: len(receiver.calls) >= 2, 120, what="two webhook calls")
    by_job = {call["json"]["job"]["id"]: call for call in receiver.calls}
    for secret, job_id in ids.items():
        call = by_job[job_id]
        verifier = Webhook(secret.encode()) if not secret.startswith("whsec_") else Webhook(secret)
        body = verifier.verify(call["body"], call["headers"])
        assert body["event"] == "job.succeeded" and body["job"]["id"] == job_id
        assert call["headers"]["webhook-id"] == call["headers"]["onediffusion-delivery"]
        with pytest.raises(WebhookVerificationError):
            Webhook(b"not the secret").verify(call["body"], call["headers"])
        with pytest.raises(WebhookVerificationError):
            verifier.verify(call["body"] + b" ", call["headers"])
