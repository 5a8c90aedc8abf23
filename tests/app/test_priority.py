"""A job's priority: the request's `priority` (0 to MAX_PRIORITY) or its API key's, at most the key's own
when it has one; it reaches the job's meta, the job view and the fair line, where it orders the tenant's own
jobs and never another tenant's turn. The gateway in process (FastAPI's TestClient) on a real Redis."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.api_keys import KeyStore, resolve_priority
from app.callers import Caller
from app.schemas import REQUEST_MODELS, BatchRequest
from core.queueing import MAX_PRIORITY
from model.tasks import TaskInputError
from tests.app.gateway import SMALL, gateway, key


@pytest.fixture
def api(redis_url, tmp_path):
    with gateway(redis_url, tmp_path) as client:
        yield client


def order(client: TestClient) -> list[str]:
    """The queued jobs in the order the fair line serves them (its positions)."""
    jobs = client.app.state.jobs
    return sorted(jobs.queue.line.job_ids(), key=jobs.queue.get_job_position)


# ---- the field -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [-1, MAX_PRIORITY + 1, True, 1.5, "high"])
def test_a_bad_priority_is_refused_by_the_schema(value):
    with pytest.raises(ValidationError):
        REQUEST_MODELS["text-to-image"].model_validate({**SMALL, "priority": value})
    with pytest.raises(ValidationError):
        BatchRequest.model_validate({"items": [{"task": "text-to-image", **SMALL, "priority": value}]})


def test_every_task_request_and_batch_item_takes_a_priority():
    for task, model in REQUEST_MODELS.items():
        field = model.model_fields["priority"]
        assert field.default is None and "never" in field.description and "another tenant" in field.description, task
    schema = BatchRequest.model_json_schema()
    items = [d for name, d in schema["$defs"].items() if name.endswith("Item")]
    assert items and all(d["properties"]["priority"]["anyOf"][0]["maximum"] == MAX_PRIORITY for d in items)
    assert REQUEST_MODELS["text-to-image"].model_validate({**SMALL, "priority": "3"}).priority == 3  # a form field


def test_bad_priorities_are_422_naming_the_field(api):
    headers = key(api, "acme")
    for value in (-1, MAX_PRIORITY + 1, True, "high"):
        answer = api.post("/v1/text-to-image", json={**SMALL, "priority": value}, headers=headers)
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["type"] == "invalid_request" and [f["field"] for f in error["fields"]] == ["priority"], error
    answer = api.post("/v1/batches", json={"items": [{"task": "text-to-image", **SMALL},
                                                     {"task": "text-to-image", **SMALL, "priority": 10}]}, headers=headers)
    assert answer.status_code == 422 and answer.json()["error"]["fields"][0]["field"] == "items.1.priority", answer.text
    assert order(api) == []


# ---- the key's default and ceiling ---------------------------------------------------------------------
def test_resolve_priority():
    assert resolve_priority(None, None) == 0 and resolve_priority(MAX_PRIORITY, None) == MAX_PRIORITY
    assert resolve_priority(None, 4) == 4 and resolve_priority(2, 4) == 2 and resolve_priority(4, 4) == 4
    with pytest.raises(ValueError, match="its maximum priority is 4"):
        resolve_priority(5, 4)
    with pytest.raises(ValueError, match="its maximum priority is 0"):
        resolve_priority(1, 0)
    with pytest.raises(TaskInputError) as caught:
        Caller("acme", "k1", 2).job_priority(3, "items.0.priority")
    assert caught.value.field == "items.0.priority" and "maximum priority is 2" in caught.value.message


def test_key_store_keeps_a_priority(redis_url):
    from redis import Redis

    from core.connection import keys_for

    store = KeyStore(Redis.from_url(redis_url), keys_for("odprio" + uuid.uuid4().hex[:8]))
    full, record = store.create("acme", "bulk", 3)
    assert record.priority == 3 and store.authenticate(full).priority == 3
    plain, _ = store.create("acme")
    assert store.authenticate(plain).priority is None
    assert sorted(str(r.priority) for r in store.list()) == ["3", "None"]
    for bad in (-1, MAX_PRIORITY + 1, True, "3"):
        with pytest.raises(ValueError, match="an integer from 0 to"):
            store.create("acme", "", bad)


def test_a_key_priority_is_the_default_and_the_ceiling(api):
    capped = key(api, "acme", 3)
    job = api.post("/v1/text-to-image", json=SMALL, headers=capped).json()
    assert job["priority"] == 3 and api.get(f"/v1/jobs/{job['id']}", headers=capped).json()["priority"] == 3
    assert api.post("/v1/text-to-image", json={**SMALL, "priority": 1}, headers=capped).json()["priority"] == 1
    refused = api.post("/v1/text-to-image", json={**SMALL, "priority": 4}, headers=capped)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["fields"] == [{"field": "priority", "message": "4 is more than this API key allows: its maximum priority is 3"}]
    refused = api.post("/v1/batches", json={"items": [{"task": "text-to-image", **SMALL, "priority": 2},
                                                      {"task": "text-to-image", **SMALL, "priority": 7}]}, headers=capped)
    assert refused.status_code == 422 and refused.json()["error"]["fields"][0]["field"] == "items.1.priority"
    assert len(order(api)) == 2  # nothing of the refused batch was queued

    plain = key(api, "acme")  # no priority: 0 by default, any priority on request
    assert api.post("/v1/text-to-image", json=SMALL, headers=plain).json()["priority"] == 0
    assert api.post("/v1/text-to-image", json={**SMALL, "priority": MAX_PRIORITY}, headers=plain).json()["priority"] == MAX_PRIORITY


def test_without_keys_requests_may_use_any_priority(redis_url, tmp_path):
    with gateway(redis_url, tmp_path, auth_disabled="true") as client:
        assert client.post("/v1/text-to-image", json=SMALL).json()["priority"] == 0
        job = client.post("/v1/text-to-image", json={**SMALL, "priority": MAX_PRIORITY}).json()
        assert job["priority"] == MAX_PRIORITY and order(client)[0] == job["id"]


# ---- the line -------------------------------------------------------------------------------------------
def test_priority_orders_the_tenants_own_jobs_and_no_other_tenants(api):
    a, b = key(api, "tenant-a"), key(api, "tenant-b")
    others = [api.post("/v1/text-to-image", json={**SMALL, "seed": i}, headers=a).json()["id"] for i in range(3)]
    backlog = [api.post("/v1/text-to-image", json={**SMALL, "seed": i}, headers=b).json()["id"] for i in range(3)]
    before = order(api)
    urgent = api.post("/v1/text-to-image", json={**SMALL, "priority": 5}, headers=b).json()
    assert urgent["priority"] == 5 and urgent["queue_position"] == 1  # after tenant a's turn, before b's backlog
    after = order(api)
    assert after == [others[0], urgent["id"], others[1], backlog[0], others[2], backlog[1], backlog[2]]
    assert [after.index(i) for i in others] == [before.index(i) for i in others]  # a's jobs keep their places
    meta = api.app.state.jobs.fetch(urgent["id"]).meta
    assert meta["priority"] == 5


def test_batch_items_and_num_outputs_carry_their_priorities(api):
    headers = key(api, "acme")
    batch = api.post("/v1/batches", json={"items": [{"task": "text-to-image", **SMALL},
                                                    {"task": "text-to-image", **SMALL, "priority": 2}]}, headers=headers).json()
    assert [j["priority"] for j in batch["jobs"]] == [0, 2]
    assert order(api)[0] == batch["jobs"][1]["id"]
    several = api.post("/v1/text-to-image", json={**SMALL, "num_outputs": 2, "priority": 4}, headers=headers).json()
    assert [j["priority"] for j in several["jobs"]] == [4, 4] and order(api)[:2] == [j["id"] for j in several["jobs"]]


def test_an_idempotency_key_reused_with_another_priority_is_a_conflict(api):
    headers = {**key(api, "acme"), "Idempotency-Key": "prio-1"}
    first = api.post("/v1/text-to-image", json={**SMALL, "seed": 1}, headers=headers)
    assert first.status_code == 202
    again = api.post("/v1/text-to-image", json={**SMALL, "seed": 1, "priority": 0}, headers=headers)
    assert again.status_code == 202 and again.headers.get("Idempotent-Replayed") == "true"  # 0: the same request
    other = api.post("/v1/text-to-image", json={**SMALL, "seed": 1, "priority": 2}, headers=headers)
    assert other.status_code == 409, other.text


def test_the_answered_queue_position_is_the_one_the_line_reads(redis_url, tmp_path):
    """The admission script answers the new job's place (no read of its own after it): the fair line's
    position function over the same state, so it is what `get_job_position` reads just after, whatever
    the tenants, their weights, the priorities and the jobs already served."""
    import random

    rng = random.Random(7)
    with gateway(redis_url, tmp_path, tenant_weights="t-a=2,t-b=0.5") as client:
        jobs = client.app.state.jobs
        keys = [key(client, tenant) for tenant in ("t-a", "t-b", "t-c", "t-d")]
        seen = []
        for step in range(60):
            action = rng.random()
            if action < 0.15:  # a worker takes the fair head: virtual times move on
                jobs.queue.line.claim(1, jobs.queue.intermediate_queue_key)
                continue
            body = {**SMALL, "seed": step, "priority": rng.choice([0, 0, 1, 3, MAX_PRIORITY])}
            if action > 0.85:
                body["num_outputs"] = 2  # a batch: its first job's position
            answer = client.post("/v1/text-to-image", json=body, headers=rng.choice(keys))
            assert answer.status_code == 202, answer.text
            view = answer.json()
            first = view["jobs"][0] if "jobs" in view else view
            assert first["queue_position"] == jobs.queue.get_job_position(first["id"]), (step, view)
            seen.append(first["queue_position"])
        assert len(set(seen)) > 5  # not all at the head or the end
