"""What a first-time user sees: URLs on the port the API really listens on, `up` that fails loudly."""

from __future__ import annotations

import json
import os
import time
import socket
import subprocess

from tests.cases import CASES
from tests.service.harness import CLI


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
    assert f"Redis: {redis_url} (REDIS_URL)" in result.stdout  # and the Redis it was told to use
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


# ---- a newcomer's second look -----------------------------------------------------------------------------
SMALL_JOB = {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 2}


def test_serve_port_flag_shows_in_every_url(tmp_path, redis_url):
    """`onediffusion serve --port N` with PORT and PUBLIC_URL unset: Location and job URLs say :N."""
    from tests.service.harness import free_port, wait_until
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PUBLIC_URL", "PORT", "HOST")}
    env.update(REDIS_URL=redis_url, AUTH_DISABLED="true", QUEUE_PREFIX=f"odport{port}", RATE_LIMIT_PER_MINUTE="0")
    log = open(tmp_path / "api.log", "wb")
    process = subprocess.Popen(CLI + ["serve", "--port", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def up():
            try:
                return httpx.get(base + "/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 30, what="the API")
        response = httpx.post(base + "/v1/text-to-image", json=SMALL_JOB)
        assert response.status_code == 202, response.text
        assert response.headers["location"].startswith(f"{base}/v1/jobs/")
        assert all(url.startswith(base) for url in response.json()["urls"].values())
    finally:
        process.terminate()
        process.wait(20)


def test_batch_submit_answers_location(make_service):
    service = make_service(workers=0, deliverer=False)
    response = service.client.post("/v1/batches", json={"items": [{"task": "text-to-image", **SMALL_JOB}]})
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"{service.url}/v1/batches/{response.json()['id']}"
    assert service.client.get(response.headers["location"]).json()["id"] == response.json()["id"]


def test_num_outputs_retry_without_seed_is_a_replay(make_service):
    """The seeds of num_outputs are drawn by the server: an identical retry under the same key is the first batch."""
    service = make_service(workers=0, deliverer=False)
    body = {**SMALL_JOB, "num_outputs": 3}
    first = service.submit("text-to-image", body, headers={"Idempotency-Key": "twins-1"})
    again = service.submit("text-to-image", body, headers={"Idempotency-Key": "twins-1"})
    assert first.status_code == again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    other = service.submit("text-to-image", {**body, "prompt": "a dog"}, headers={"Idempotency-Key": "twins-1"})
    assert other.status_code == 409


def test_bare_prefer_wait_waits_up_to_max_wait(make_service):
    service = make_service(max_wait_s=45)
    response = service.submit("text-to-image", SMALL_JOB, headers={"Prefer": "wait"})
    assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text
    assert response.headers["preference-applied"] == "wait=45"
    assert "wait(=" in service.client.get("/openapi.json").text  # the documented pattern takes a bare `wait`


def test_empty_form_field_is_unset(make_service):
    """Swagger UI's Try-it-out sends empty optional fields as ''; that keeps the default negative prompt."""
    from model.tasks import NEGATIVE_PROMPT, TextToImage

    service = make_service(workers=0, deliverer=False)
    form = {"prompt": (None, "a cat"), "negative_prompt": (None, ""), "width": (None, "64"), "height": (None, "64")}
    job = service.client.post("/v1/text-to-image", files=form).json()
    assert job["input"]["negative_prompt"] is None
    assert TextToImage.model_validate(job["input"]).plan().negative_prompt == NEGATIVE_PROMPT
    off = service.client.post("/v1/text-to-image", files={**form, "negative_prompt": (None, '""')}).json()
    assert off["input"]["negative_prompt"] == ""  # `""` in a form: explicitly none
    empty_prompt = service.client.post("/v1/text-to-image", files={**form, "prompt": (None, "")})
    assert empty_prompt.status_code == 422 and empty_prompt.json()["error"]["fields"][0]["field"] == "prompt"


def test_cancel_twice_is_409_and_canceled_jobs_have_finished_at(make_service):
    service = make_service(workers=0, deliverer=False)
    job = service.submit("text-to-image", SMALL_JOB).json()
    canceled = service.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert canceled.status_code == 200 and canceled.json()["finished_at"] is not None
    again = service.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and "already canceled" in again.json()["error"]["message"]
    assert service.job(job["id"])["finished_at"] == canceled.json()["finished_at"]


def test_webhook_query_string_stays_out_of_the_logs(make_service, receiver):
    receiver.up()
    service = make_service()
    token = "tok-" + os.urandom(8).hex()
    job = service.submit("text-to-image", {**SMALL_JOB, "webhook": {"url": f"{receiver.url}?token={token}"}},
                         headers={"Prefer": "wait=60"}).json()
    assert job["status"] == "succeeded"
    from tests.service.harness import wait_until

    wait_until(lambda: receiver.events(), 30, what="the webhook")
    wait_until(lambda: "webhook delivered" in service.logs(full=True), 10, what="the delivery's log line")
    assert token not in service.logs(full=True)


def test_up_without_redis_url_starts_its_own_redis(tmp_path, demo_checkpoint):
    """Without REDIS_URL, `up` never writes into whatever answers on 6379: it starts a Redis of its own, names
    it in the banner, and stops it with the rest."""
    import re
    import signal
    import time

    import httpx

    from core.local_redis import answers
    from tests.service.harness import free_port, wait_until

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PUBLIC_URL", "ONEDIFFUSION_MODEL", "REDIS_URL")}
    env.update(PORT=str(port), DEMO_CHECKPOINT_DIR=str(demo_checkpoint), AUTH_DISABLED="true", ONEDIFFUSION_ATTENTION="math")
    out = open(tmp_path / "up.log", "w+")
    process = subprocess.Popen(CLI + ["up"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        banner = wait_until(lambda: re.search(r"Redis: (redis://127\.0\.0\.1:(\d+)/0) \(started for this run",
                                              (tmp_path / "up.log").read_text()), 120, what="the Redis line of the banner")
        url, redis_port = banner.group(1), int(banner.group(2))
        assert redis_port != 6379 and answers(url)
        assert (tmp_path / "var" / "redis").is_dir()  # its data lives under ./var/redis

        def ready():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 120, interval=0.5, what="a ready worker")
        job = httpx.post(f"http://127.0.0.1:{port}/v1/text-to-image", json=SMALL_JOB).json()
        from redis import Redis

        assert Redis.from_url(url).exists(f"rq:job:{job['id']}")  # the jobs go to that Redis
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    time.sleep(0.5)
    assert not answers(url), "the Redis that `up` started outlived it"


def test_webhook_events_filter(make_service, receiver):
    """webhook.events: started and throttled progress when asked; by default only the end (completed)."""
    from tests.service.harness import wait_until

    receiver.up()
    service = make_service(webhook_progress_interval_s=0.3)
    steps = 40
    asked = service.submit("text-to-image", {**SMALL_JOB, "num_inference_steps": steps, "webhook": {
        "url": receiver.url, "secret": "s3cret-s3cret", "events": ["started", "progress", "completed"]}}).json()
    plain = service.submit("text-to-image", {**SMALL_JOB, "webhook": {"url": receiver.url}}).json()
    only_start = service.submit("text-to-image", {**SMALL_JOB, "webhook": {"url": receiver.url, "events": ["started"]}}).json()
    for job in (asked, plain, only_start):
        service.wait_job(job["id"])

    def events_of(job_id):
        return [c["json"]["event"] for c in receiver.calls if c["json"].get("job", {}).get("id") == job_id]

    wait_until(lambda: "job.succeeded" in events_of(asked["id"]) and "job.succeeded" in events_of(plain["id"])
               and "job.started" in events_of(only_start["id"]), 60, what="the webhooks")
    time.sleep(1)  # anything late would show now
    seen = events_of(asked["id"])  # deliveries run concurrently: arrival order is not sending order
    assert seen.count("job.started") == 1 and seen.count("job.succeeded") == 1, seen
    started = next(c["json"] for c in receiver.calls if c["json"]["event"] == "job.started" and c["json"]["job"]["id"] == asked["id"])
    assert started["job"]["status"] == "running"
    progress = [c["json"]["job"]["progress"]["step"] for c in receiver.calls
                if c["json"]["event"] == "job.progress" and c["json"]["job"]["id"] == asked["id"]]
    assert progress and len(progress) < steps - 1 and all(0 < s < steps for s in progress), progress  # throttled
    assert events_of(plain["id"]) == ["job.succeeded"]
    assert events_of(only_start["id"]) == ["job.started"]
    bad = service.submit("text-to-image", {**SMALL_JOB, "webhook": {"url": receiver.url, "events": ["finished"]}})
    assert bad.status_code == 422 and "events" in bad.text


def test_webhook_deliveries_listed_and_redelivered(make_service, receiver):
    """GET .../deliveries shows each call and how it went; POST .../redeliver sends it again (same id)."""
    from tests.service.harness import wait_until

    service = make_service(webhook_retries=0)  # the receiver is down: the one attempt fails
    job = service.submit("text-to-image", {**SMALL_JOB, "webhook": {"url": receiver.url}},
                         headers={"Prefer": "wait=60"}).json()
    deliveries = f"/v1/jobs/{job['id']}/deliveries"
    failed = wait_until(lambda: (lambda d: d if d and d[0]["status"] == "failed" else None)(
        service.client.get(deliveries).json()["data"]), 60, what="the failed delivery")
    (first,) = failed
    assert first["event"] == "job.succeeded" and first["attempts"] == 1 and first["last_error"]
    receiver.up()
    again = service.client.post(f"{deliveries}/{first['id']}/redeliver")
    assert again.status_code == 202 and again.json()["id"] == first["id"], again.text
    wait_until(lambda: receiver.calls, 30, what="the redelivery")
    call = receiver.calls[0]
    assert call["headers"]["onediffusion-delivery"] == first["id"] and call["json"]["job"]["id"] == job["id"]
    # the body it first sent, kept beside the job's outputs (Redis keeps no copy of it)
    stored = service.tmp / "results" / job["id"] / f"webhook-{first['id']}.json"
    assert call["json"] == json.loads(stored.read_text())
    assert not service.redis().hexists(f"{service.prefix}:delivery:{first['id']}", "body")
    done = wait_until(lambda: (lambda d: d if d[0]["status"] == "delivered" else None)(
        service.client.get(deliveries).json()["data"]), 30, what="the delivered status")
    assert done[0]["attempts"] == 2 and done[0]["last_status_code"] == 200
    assert service.client.post(f"{deliveries}/nosuchdelivery/redeliver").status_code == 404

    batch = service.client.post("/v1/batches", json={"items": [{"task": "text-to-image", **SMALL_JOB}],
                                                     "webhook": {"url": receiver.url}}).json()
    listed = wait_until(lambda: (lambda d: d if len(d) == 2 and all(x["status"] == "delivered" for x in d) else None)(
        service.client.get(f"/v1/batches/{batch['id']}/deliveries").json()["data"]), 90, what="the batch's deliveries")
    assert {d["event"] for d in listed} == {"batch.item.succeeded", "batch.completed"}
    assert service.client.get("/v1/batches/nosuchbatch/deliveries").status_code == 404


def test_usage_by_task_day_and_key(make_service):
    from datetime import datetime, timezone

    from tests.cases import IMG
    from tests.service.harness import wait_until

    service = make_service()
    for body in (SMALL_JOB, {**SMALL_JOB, "seed": 2}):
        assert service.submit("text-to-image", body, headers={"Prefer": "wait=60"}).json()["status"] == "succeeded"
    depth = service.submit("depth-estimation", {"image": IMG, **{k: v for k, v in SMALL_JOB.items() if k != "prompt"}},
                           headers={"Prefer": "wait=60"}).json()
    assert depth["status"] == "succeeded"

    def by(group_by, **params):
        answer = service.client.get("/v1/usage", params={"group_by": group_by, **params})
        assert answer.status_code == 200, answer.text
        return answer.json()

    tasks = wait_until(lambda: (lambda r: r if r["total"]["jobs"] == 3 else None)(by("task")), 30, what="usage")
    rows = {row["group"]: row for row in tasks["data"]}
    assert rows["text-to-image"]["jobs"] == rows["text-to-image"]["succeeded"] == 2
    assert rows["text-to-image"]["images"] == 2 and rows["text-to-image"]["token_steps"] == 2 * (4 * 4 * 1 * 2)
    assert rows["depth-estimation"]["images"] == 2 and rows["depth-estimation"]["token_steps"] == 4 * 4 * 2 * 2
    assert tasks["total"]["run_s"] > 0
    today = datetime.now(timezone.utc).date().isoformat()
    days = by("day", **{"from": today, "to": today})
    assert [row["group"] for row in days["data"]] == [today] and days["data"][0]["jobs"] == 3 and days["from"] == today
    assert len(by("key")["data"]) == 1
    assert by("day", **{"from": "2000-01-01", "to": "2000-01-02"})["total"]["jobs"] == 0
    bad = service.client.get("/v1/usage", params={"from": "2026-02-02", "to": "2026-02-01"})
    assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["field"] == "from"
