"""What a first-time user sees: URLs on the port the API really listens on, `up` that fails loudly."""

from __future__ import annotations

import os
import socket
import subprocess

from tests.service.harness import CLI
from tests.test_pipeline import CASES


def test_urls_follow_port_without_public_url(make_service):
    service = make_service(workers=0, deliverer=False, public_url="")  # PUBLIC_URL unset: PORT alone decides
    response = service.submit("text-to-image", CASES["text-to-image"][0])
    assert response.status_code == 202, response.text
    assert response.headers["location"].startswith(f"{service.url}/v1/jobs/")
    assert all(url.startswith(service.url) for url in response.json()["urls"].values())


def test_up_exits_non_zero_when_the_port_is_taken(tmp_path, redis_url, demo_checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in ("PUBLIC_URL", "ONEDIFFUSION_MODEL")}
        env.update(PORT=str(port), REDIS_URL=redis_url, DEMO_CHECKPOINT_DIR=str(demo_checkpoint), AUTH_DISABLED="true",
                   QUEUE_PREFIX="odup" + str(port), ONEDIFFUSION_ATTENTION="math")
        result = subprocess.run(CLI + ["up"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode != 0, result.stdout + result.stderr
    assert f"http://127.0.0.1:{port}" in result.stdout  # the banner names the port it tried, not :8000
    assert "onediffusion serve` exited" in result.stderr


def test_cors_is_opt_in_and_limited_to_the_allowlist(make_service):
    closed = make_service(workers=0, deliverer=False)
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type,idempotency-key"}
    assert "access-control-allow-origin" not in closed.client.options("/v1/text-to-image", headers=preflight).headers
    open_ = make_service(workers=0, deliverer=False, cors_allow_origins="https://app.example.com, http://localhost:3000")
    answer = open_.client.options("/v1/text-to-image", headers=preflight)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example.com"
    got = open_.client.get("/healthz", headers={"Origin": "https://app.example.com"})
    assert got.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "x-request-id" in got.headers["access-control-expose-headers"].lower()
    other = open_.client.get("/healthz", headers={"Origin": "https://evil.example.net"})
    assert "access-control-allow-origin" not in other.headers


def test_delete_refuses_a_job_that_has_not_ended(make_service):
    service = make_service(workers=0, deliverer=False)
    job = service.submit("text-to-image", CASES["text-to-image"][0]).json()
    refused = service.client.delete(f"/v1/jobs/{job['id']}")
    assert refused.status_code == 409 and "cancel it first" in refused.json()["error"]["message"]
    assert service.job(job["id"])["status"] == "queued"
