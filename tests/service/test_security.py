"""Keys and tenants, limits with clear answers, and webhooks that cannot be turned against us."""

from __future__ import annotations

import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import threading

import httpx
import pytest

from tests.service.harness import bearer, free_port, new_key, wait_until

SMALL = {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 2}
SECRET = "super-secret-webhook-key"


def secret_part(key: str) -> str:
    """The secret of `od_<key id>_<secret>` (the secret itself may contain '_')."""
    return key[len("od_"):].partition("_")[2]


@pytest.fixture(scope="module")
def secured(tmp_path_factory, redis_url, demo_checkpoint):
    from tests.service.harness import Service

    service = Service(tmp_path_factory.mktemp("secured"), redis_url, demo_checkpoint, auth_disabled="false", results_ttl_s=3600)
    yield service
    service.stop()


def test_keys_are_required_and_checked(secured):
    key, key_id = new_key(secured, "acme")
    missing = secured.submit("text-to-image", SMALL)
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]["message"]
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = secured.submit("text-to-image", SMALL, headers=bearer(key[:-3] + "xyz"))
    assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]["message"]
    junk = secured.submit("text-to-image", SMALL, headers=bearer("not-a-key"))
    assert junk.status_code == 401
    ok = secured.submit("text-to-image", SMALL, headers={**bearer(key), "Prefer": "wait=60"})
    assert ok.status_code == 200 and ok.json()["status"] == "succeeded"
    for path in ("/v1/jobs/abc", "/v1/batches/abc", "/v1/jobs/abc/events"):
        assert secured.client.get(path).status_code == 401
    assert secured.client.post("/v1/batches", json={"items": []}).status_code == 401

    listing = secured.cli("keys", "list")
    assert key_id in listing and "acme" in listing and secret_part(key) not in listing
    stored = secured.redis().hgetall(f"{secured.prefix}:apikeys")
    assert secret_part(key).encode() not in b"".join(stored.values())  # only a hash is kept

    assert f"revoked {key_id}" in secured.cli("keys", "revoke", key_id)
    revoked = secured.submit("text-to-image", SMALL, headers=bearer(key))
    assert revoked.status_code == 401
    assert "acme" in secured.cli("keys", "list") and "-" != secured.cli("keys", "list").splitlines()[-1].split()[-1]


def test_tenants_see_only_their_own(secured):
    key_a, _ = new_key(secured, "tenant-a")
    key_b, _ = new_key(secured, "tenant-b")
    job = secured.submit("text-to-image", SMALL, headers={**bearer(key_a), "Prefer": "wait=60"}).json()
    batch = secured.client.post("/v1/batches", json={"items": [{"task": "text-to-image", **SMALL}]}, headers=bearer(key_a)).json()
    as_b = bearer(key_b)
    assert secured.client.get(f"/v1/jobs/{job['id']}", headers=as_b).status_code == 404
    assert secured.client.post(f"/v1/jobs/{job['id']}/cancel", headers=as_b).status_code == 404
    assert secured.client.get(f"/v1/jobs/{job['id']}/events", headers=as_b).status_code == 404
    assert secured.client.get(f"/v1/batches/{batch['id']}", headers=as_b).status_code == 404
    output = job["outputs"][0]
    assert httpx.get(output["url"], headers=as_b).status_code == 404
    assert httpx.get(output["url"]).status_code == 401
    assert httpx.get(output["url"], headers=bearer(key_a)).status_code == 200
    assert secured.client.get(f"/v1/jobs/{job['id']}", headers=bearer(key_a)).status_code == 200
    # the signed URL works without a key; a changed signature or expiry does not
    assert httpx.get(output["signed_url"]).status_code == 200
    assert httpx.get(output["signed_url"].replace("sig=", "sig=0")).status_code == 401
    expires = int(output["signed_url"].split("expires=")[1].split("&")[0])
    assert httpx.get(output["signed_url"].replace(f"expires={expires}", f"expires={expires + 10}")).status_code == 401
    assert len(job["id"]) == 32 and int(job["id"], 16) >= 0  # 128 random bits


def test_rate_limit(make_inprocess):
    service = make_inprocess(workers=0, auth_disabled="false", rate_limit_per_minute=2)
    key, _ = new_key(service, "busy")
    codes = [service.submit("text-to-image", SMALL, headers=bearer(key)) for _ in range(3)]
    assert [r.status_code for r in codes[:2]] == [202, 202]
    limited = codes[2]
    assert limited.status_code == 429 and "more than 2 submissions a minute" in limited.json()["error"]["message"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60


def test_active_jobs_quota_and_queue_bound(make_inprocess):
    service = make_inprocess(workers=0, auth_disabled="false", max_active_jobs_per_tenant=1, max_queue_depth=2)
    key_a, _ = new_key(service, "a")
    key_b, _ = new_key(service, "b")
    key_c, _ = new_key(service, "c")
    assert service.submit("text-to-image", SMALL, headers=bearer(key_a)).status_code == 202
    quota = service.submit("text-to-image", SMALL, headers=bearer(key_a))
    assert quota.status_code == 429 and "limit is 1" in quota.json()["error"]["message"] and quota.headers["retry-after"]
    assert service.submit("text-to-image", SMALL, headers=bearer(key_b)).status_code == 202
    full = service.submit("text-to-image", SMALL, headers=bearer(key_c))
    assert full.status_code == 429 and "queue is full" in full.json()["error"]["message"]
    # a canceled job frees its tenant's slot
    first = [k for k in service.redis().smembers(f"{service.prefix}:active:a")][0].decode()
    assert service.client.post(f"/v1/jobs/{first}/cancel", headers=bearer(key_a)).status_code == 200
    assert service.submit("text-to-image", SMALL, headers=bearer(key_a)).status_code == 202


def test_prompt_steps_and_time_limits(make_inprocess):
    service = make_inprocess(max_prompt_chars=20, max_steps=60, job_timeout_s=1)
    long_prompt = service.submit("text-to-image", {**SMALL, "prompt": "x" * 21})
    assert long_prompt.status_code == 422 and "21 characters is more than the limit of 20" in long_prompt.text
    steps = service.submit("text-to-image", {**SMALL, "num_inference_steps": 61})
    assert steps.status_code == 422 and "61 steps is more than the limit of 60" in steps.text
    slow = service.submit("text-to-image", {**SMALL, "num_inference_steps": 60, "width": 512, "height": 512})
    done = service.wait_job(slow.json()["id"])
    assert done["status"] == "failed"
    assert done["error"] == {"type": "timeout", "message": "the job ran past its time limit of 1 s"}
    assert done["progress"]["step"] < 60


def test_webhook_urls_to_private_addresses_are_refused(make_service, receiver):
    service = make_service(workers=0, deliverer=False, webhook_allowlist="")
    for url, words in (
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://10.0.0.7/hook", "private"),
        ("http://localhost:9/hook", "loopback"),
    ):
        response = service.submit("text-to-image", {**SMALL, "webhook": {"url": url}})
        assert response.status_code == 422 and words in response.json()["error"]["message"], response.text
        assert "WEBHOOK_ALLOWLIST" in response.json()["error"]["message"]
    batch = service.client.post("/v1/batches", json={"items": [{"task": "text-to-image", **SMALL}], "webhook": {"url": "http://127.0.0.1/x"}})
    assert batch.status_code == 422


def test_delivery_checks_the_address_again(make_service, receiver):
    """Accepted at submission (allow-listed there) but refused by a deliverer whose allow-list is empty."""
    receiver.up()
    service = make_service(deliverer=False)
    service.start("webhooks", "webhooks", webhook_allowlist="")
    job = service.submit("text-to-image", {**SMALL, "webhook": {"url": receiver.url}}, headers={"Prefer": "wait=60"})
    assert job.json()["status"] == "succeeded"
    time.sleep(3)
    assert receiver.calls == []
    assert "webhook refused" in (service.tmp / "webhooks.log").read_text()


def test_redirects_are_not_followed(make_service, receiver):
    receiver.up()
    redirect_port = free_port()
    hits = []

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self):
            hits.append(self.path)
            self.send_response(307)
            self.send_header("Location", receiver.url)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", redirect_port), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        service = make_service(webhook_retries=1)
        url = f"http://127.0.0.1:{redirect_port}/hook"
        service.submit("text-to-image", {**SMALL, "webhook": {"url": url}}, headers={"Prefer": "wait=60"})
        wait_until(lambda: len(hits) >= 2, 30, what="the first attempt and its retry")
        time.sleep(1)
        assert receiver.calls == []
    finally:
        server.shutdown()
        server.server_close()


def test_logs_and_errors_carry_no_secrets(secured, receiver):
    receiver.up()
    key, _ = new_key(secured, "quiet")
    payload = {**SMALL, "webhook": {"url": receiver.url, "secret": SECRET}}
    done = secured.submit("text-to-image", payload, headers={**bearer(key), "Prefer": "wait=60"}).json()
    wait_until(lambda: receiver.calls, 30, what="the webhook")
    bad = secured.submit("text-to-image", {**SMALL, "width": 7}, headers=bearer(key))
    assert "Traceback" not in bad.text and "File \"" not in bad.text
    logs = secured.logs(full=True)
    assert key not in logs and secret_part(key) not in logs and SECRET not in logs
    assert done["id"] in logs  # structured logs name the job
