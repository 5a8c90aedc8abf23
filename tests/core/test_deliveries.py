"""The webhook delivery log (core/deliveries.py) in a real Redis: what a delivery's record holds, what its
owner sees of it, and that records written by earlier releases read the same."""

from __future__ import annotations

import re
import uuid

import pytest
from redis import Redis

from core.deliveries import DeliveryLog, view

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def log(redis_url) -> DeliveryLog:
    return DeliveryLog(Redis.from_url(redis_url), "oddeliv" + uuid.uuid4().hex[:8], 600)


def test_a_delivery_is_claimed_once_and_its_attempts_are_shown(log):
    delivery_id, job_id = uuid.uuid4().hex, uuid.uuid4().hex
    assert log.claim(delivery_id) and not log.claim(delivery_id)
    log.queued("job", job_id, delivery_id, "job.succeeded")
    log.attempted(delivery_id, "retrying", None, "connection refused")
    (shown,) = log.list("job", job_id)
    assert shown["id"] == delivery_id and shown["status"] == "retrying" and shown["attempts"] == 1
    assert shown["last_error"] == "connection refused" and shown["last_status_code"] is None
    log.attempted(delivery_id, "delivered", 200)
    (shown,) = log.list("job", job_id)
    assert shown == {**shown, "status": "delivered", "attempts": 2, "last_status_code": 200, "last_error": None}
    assert ISO_MS.match(shown["created_at"]) and ISO_MS.match(shown["last_attempt_at"])
    assert shown["created_at"] <= shown["last_attempt_at"]
    assert log.get("job", job_id, delivery_id)["id"] == delivery_id
    assert log.get("job", uuid.uuid4().hex, delivery_id) is None  # another job's: not found
    assert log.get("batch", job_id, delivery_id) is None


def test_a_delivery_record_is_a_small_listpack(log):
    delivery_id, job_id = uuid.uuid4().hex, uuid.uuid4().hex
    log.claim(delivery_id)
    log.queued("job", job_id, delivery_id, "job.succeeded")
    log.attempted(delivery_id, "delivered", 200)
    key = log._record_key(delivery_id)
    record = log.redis.hgetall(key)
    assert b"id" not in record and b"last_error" not in record  # the id is in the key; no empty fields
    assert log.redis.object("encoding", key) == b"listpack"
    assert log.redis.memory_usage(key, samples=0) <= 336


def test_records_of_earlier_releases_read_the_same(log):
    """Earlier releases kept the id in a field, times as float seconds and empty status code and error."""
    delivery_id, job_id = uuid.uuid4().hex, uuid.uuid4().hex
    log.redis.hset(log._record_key(delivery_id), mapping={
        "id": delivery_id, "owner": "job", "owner_id": job_id, "event": "job.succeeded", "status": "delivered",
        "created_at": 1733049600.25, "attempts": 1, "last_attempt_at": 1733049601.5, "last_status_code": "",
        "last_error": ""})
    log.redis.zadd(log._owner_key("job", job_id), {delivery_id: 1733049600.25})
    (shown,) = log.list("job", job_id)
    assert shown == {"id": delivery_id, "event": "job.succeeded", "status": "delivered", "attempts": 1,
                     "last_status_code": None, "last_error": None, "created_at": "2024-12-01T10:40:00.250Z",
                     "last_attempt_at": "2024-12-01T10:40:01.500Z"}
    assert view({"id": "x", "created_at": "1733049600250"})["created_at"] == "2024-12-01T10:40:00.250Z"
