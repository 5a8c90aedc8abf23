"""A submission's API key is looked up inside its precheck script (one round trip for the key and the
limits): the answers stay those of a lookup followed by the precheck. The gateway in process (FastAPI's
TestClient) on a real Redis."""

from __future__ import annotations

from app.api_keys import KeyStore
from tests.app.gateway import SMALL, gateway, key


def rate_count(client, key_id: str) -> int:
    jobs = client.app.state.jobs
    return int(jobs.redis.get(jobs.quotas._rate_key(key_id)) or 0)


def key_id_of(headers: dict) -> str:
    return KeyStore.split(headers["Authorization"].split()[-1])[0]


def test_a_valid_key_is_admitted_as_its_tenant_with_its_priority(redis_url, tmp_path):
    with gateway(redis_url, tmp_path) as client:
        headers = key(client, "acme", 2)
        job = client.post("/v1/text-to-image", json=SMALL, headers=headers)
        assert job.status_code == 202, job.text
        assert job.json()["priority"] == 2
        meta = client.app.state.jobs.fetch(job.json()["id"]).meta
        assert meta["tenant"] == "acme" and meta["key_id"] == key_id_of(headers)


def test_wrong_unknown_and_revoked_keys_are_401_and_count_nothing(redis_url, tmp_path):
    with gateway(redis_url, tmp_path, rate_limit_per_minute=100) as client:
        headers = key(client, "acme")
        key_id = key_id_of(headers)
        assert client.post("/v1/text-to-image", json=SMALL, headers=headers).status_code == 202
        assert rate_count(client, key_id) == 1
        wrong = {"Authorization": headers["Authorization"][:-4] + "AAAA"}
        for bad in (wrong, {"Authorization": "Bearer od_000000000000_secret"}, {"Authorization": "Bearer nonsense"},
                    {"Authorization": f"Bearer od_{key_id}_"}):
            answer = client.post("/v1/text-to-image", json=SMALL, headers=bad)
            assert answer.status_code == 401, answer.text
            assert answer.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
            assert answer.json()["error"]["message"] == "the API key is not valid (wrong or revoked)"
        assert rate_count(client, key_id) == 1
        assert client.post("/v1/text-to-image", json=SMALL).status_code == 401  # no key at all
        client.app.state.keystore.revoke(key_id)
        revoked = client.post("/v1/text-to-image", json=SMALL, headers=headers)  # the very next request
        assert revoked.status_code == 401, revoked.text
        assert rate_count(client, key_id) == 1
        assert len(client.app.state.jobs.queue.line.job_ids()) == 1


def test_a_bad_key_is_401_before_a_bad_idempotency_key_is_422(redis_url, tmp_path):
    with gateway(redis_url, tmp_path) as client:
        headers = key(client, "acme")
        bad_idem = {"Idempotency-Key": "not visible \x7f"}
        answer = client.post("/v1/text-to-image", json=SMALL, headers={"Authorization": "Bearer od_x_y", **bad_idem})
        assert answer.status_code == 401, answer.text
        answer = client.post("/v1/text-to-image", json=SMALL, headers={**headers, **bad_idem})
        assert answer.status_code == 422, answer.text


def test_the_limits_and_replays_are_the_tenants(redis_url, tmp_path):
    with gateway(redis_url, tmp_path, rate_limit_per_minute=3, max_active_jobs_per_tenant=2) as client:
        jobs = client.app.state.jobs
        acme, other = key(client, "acme"), key(client, "other")
        first = client.post("/v1/text-to-image", json=SMALL, headers={**acme, "Idempotency-Key": "k1"})
        assert first.status_code == 202
        # the precheck finds the tenant's Idempotency-Key under the name the submission stored it under
        decision, raw = jobs.quotas.precheck_keyed(client.app.state.keystore.hash_key, key_id_of(acme),
                                                   "0" * 64, "k1", 1)
        assert decision.outcome == "key" and raw is None  # a wrong secret: nothing looked at
        replay = client.post("/v1/text-to-image", json=SMALL, headers={**acme, "Idempotency-Key": "k1"})
        assert replay.status_code == 202 and replay.headers.get("Idempotent-Replayed") == "true"
        assert replay.json()["id"] == first.json()["id"]
        assert rate_count(client, key_id_of(acme)) == 1  # a replay is found by the precheck: not counted
        # another tenant's same Idempotency-Key is another request
        theirs = client.post("/v1/text-to-image", json=SMALL, headers={**other, "Idempotency-Key": "k1"})
        assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
        assert "Idempotent-Replayed" not in theirs.headers
        assert client.post("/v1/text-to-image", json=SMALL, headers=acme).status_code == 202
        quota = client.post("/v1/text-to-image", json=SMALL, headers=acme)  # acme's third active job
        assert quota.status_code == 429 and quota.json()["error"]["type"] == "quota_exceeded", quota.text
        rate = client.post("/v1/text-to-image", json=SMALL, headers=acme)  # acme's fourth counted submission
        assert rate.status_code == 429 and rate.json()["error"]["type"] == "rate_limited", rate.text
        assert client.post("/v1/text-to-image", json=SMALL, headers=other).status_code == 202


def test_small_and_large_bodies_get_the_same_answers_in_the_same_order(redis_url, tmp_path):
    """A small JSON body is read before the admission checks, which then run in the trip that queues the
    job; a large one after them: the answers are the same either way."""
    import json

    from app.routes.tasks import SMALL_BODY_BYTES

    with gateway(redis_url, tmp_path, rate_limit_per_minute=4) as client:
        good = key(client, "acme")
        bad = {"Authorization": "Bearer od_000000000000_nope"}
        bad_idem = {"Idempotency-Key": "bad \x7f"}

        def post(text: str, headers: dict, pad: bool):
            text = text + " " * (SMALL_BODY_BYTES + 1) if pad else text
            return client.post("/v1/text-to-image", content=text.encode(),
                               headers={"Content-Type": "application/json", **headers})

        answers = {}
        for pad in (False, True):
            answers[pad] = [
                (r.status_code, r.json()["error"]["type"] if r.status_code >= 400 else None) for r in (
                    post(json.dumps(SMALL), {}, pad),  # no key
                    post("{not json", bad, pad),  # a bad key before a bad body
                    post(json.dumps(SMALL), {**bad, **bad_idem}, pad),  # a bad key before a bad header
                    post(json.dumps(SMALL), {**good, **bad_idem}, pad),
                    post("{not json", good, pad),  # counted, then refused
                    post(json.dumps({"prompt": ""}), good, pad),  # counted, then refused
                    post(json.dumps(SMALL), good, pad),  # counted, queued
                )
            ]
            assert rate_count(client, key_id_of(good)) == 3, pad
            client.app.state.jobs.redis.delete(
                *client.app.state.jobs.redis.keys(f"{client.app.state.jobs.keys.prefix}:rate:*"))
        assert answers[False] == answers[True], answers
        assert [code for code, _ in answers[False]] == [401, 401, 401, 422, 400, 422, 202], answers
