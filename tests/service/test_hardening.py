"""What an outside probe got through , each against real processes: 5xx from input, unbounded or
loosely typed fields, cost before checks, racy bounds, idempotency, readiness and tenant names."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image
from core.queueing import fair_queue  # the inference queue (its fair line and RQ's list)

from tests.cases import SMALL_REQUEST as SMALL
from tests.conftest import b64_image
from tests.service.harness import bearer, create_key, free_port, job_keys, queue_size, wait_until

IMG = b64_image(64, 64)
EYE = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.5], [0.0, 0.0, 0.0, 1.0]]


def post_raw(service, path: str, text: str, headers=None) -> httpx.Response:
    return service.client.post(path, content=text.encode(), headers={"content-type": "application/json", **(headers or {})})


def one_bit_png(side: int) -> str:
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()


# ---- 2: 4xx, never 5xx, from input --------------------------------------------------------------------
def test_deeply_nested_json_is_a_400_and_the_connection_stays_usable(shared_service):
    before = (queue_size(shared_service), job_keys(shared_service))
    for path in ("/v1/text-to-image", "/v1/batches"):
        response = post_raw(shared_service, path, "[" * 5000)
        assert response.status_code == 400, response.text
        assert "nested too deeply" in response.json()["error"]["message"]
    form = shared_service.client.post("/v1/text-to-multiview", files={"prompt": (None, "x"), "cameras": (None, "[" * 5000)})
    assert form.status_code == 400 and "'cameras'" in form.json()["error"]["message"], form.text
    assert shared_service.client.get("/healthz").status_code == 200  # same kept-alive client
    assert (queue_size(shared_service), job_keys(shared_service)) == before


@pytest.mark.parametrize("url", ["http://[::1/", "http://[127.0.0.1]/", "http://[zzzz]/", "http://example.com:99999/"])
def test_malformed_webhook_urls_are_422(shared_service, url):
    response = shared_service.submit("text-to-image", {**SMALL, "webhook": {"url": url}})
    assert response.status_code == 422, response.text
    assert "webhook.url" in response.json()["error"]["message"] and "not a valid URL" in response.text
    batch = shared_service.client.post("/v1/batches", json={"items": [{"task": "text-to-image", **SMALL}], "webhook": {"url": url}})
    assert batch.status_code == 422 and "webhook.url" in batch.text, batch.text


# ---- 3 and 5: bounds, strict types, finite and rigid cameras --------------------------------------------
@pytest.mark.parametrize("task,payload,field,words", [
    ("text-to-image", {**SMALL, "num_inference_steps": True}, "num_inference_steps", "not true or false"),
    ("text-to-image", {**SMALL, "seed": False}, "seed", "not true or false"),
    ("text-to-image", {**SMALL, "prompt": "   \t "}, "prompt", "more than spaces"),
    ("id-customization", {"images": [IMG], "prompt": "x", "reference_captions": ["y" * 4001]}, "reference_captions.0", "at most 4000"),
    ("id-customization", {"images": [IMG], "prompt": "x", "reference_captions": ["a"] * 4}, "reference_captions", "at most 3"),
    ("text-to-multiview", {"prompt": "x", "cameras": [{"azimuth": 0, "elevation": 0}] * 65}, "cameras", "at most 64"),
    ("generate", {"prompt": "x", "frames": [{"generate": True}] * 65}, "frames", "at most 64"),
])
def test_fields_are_bounded_and_strict(shared_service, task, payload, field, words):
    response = shared_service.submit(task, payload)
    assert response.status_code == 422, response.text
    fields = {f["field"]: f["message"] for f in response.json()["error"].get("fields", [])}
    assert field in fields and words in fields[field], fields


@pytest.mark.parametrize("c2w,words", [
    ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, "NaN"], [0, 0, 0, 1]], "c2w[2][3] is nan"),
    ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, "Infinity"], [0, 0, 0, 1]], "c2w[2][3] is inf"),
    ([["NaN"] * 4, ["NaN"] * 4, ["NaN"] * 4, [0, 0, 0, 1]], "is nan"),
    ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]], "reflection"),
    ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1e9], [0, 0, 0, 1]], "translation"),
])
def test_non_finite_or_non_rigid_c2w_is_422_naming_the_field(shared_service, c2w, words):
    text = json.dumps({"prompt": "x", "width": 64, "height": 64, "cameras": [{"c2w": EYE}, {"c2w": c2w}]})
    text = text.replace('"NaN"', "NaN").replace('"Infinity"', "Infinity")
    response = post_raw(shared_service, "/v1/text-to-multiview", text)
    assert response.status_code == 422, response.text
    assert "cameras.1" in response.json()["error"]["message"] and words in response.text


# ---- 1 and 4: cheapest checks first, pixel budget, job cost ---------------------------------------------
def test_counts_and_pixel_budget_come_before_decoding(shared_service):
    bomb = one_bit_png(6000)  # 36 megapixels, a few KB
    over = {"prompt": "x", "frames": [{"generate": True}] + [{"generate": False, "image": bomb}] * 16}
    response = shared_service.submit("generate", over)
    assert response.status_code == 422 and "17 frames is more than the limit of 16" in response.text
    three = {"prompt": "x", "frames": [{"generate": True}] + [{"generate": False, "image": bomb}] * 3}
    response = shared_service.submit("generate", three)
    assert response.status_code == 422, response.text
    assert "frames[3].image" in response.text and "pixels in all" in response.text


def test_job_cost_is_bounded(shared_service):
    huge = {"prompt": "x", "frames": [{"generate": True}] * 16, "width": 2048, "height": 2048, "num_inference_steps": 200}
    response = shared_service.submit("generate", huge)
    assert response.status_code == 422, response.text
    assert "token-steps, more than the limit of 4000000" in response.json()["error"]["message"]


def test_rate_and_key_are_checked_before_the_body(make_service):
    service = make_service(workers=0, deliverer=False, auth_disabled="false", rate_limit_per_minute=3)
    key = create_key(service, "cheap")
    # no key: 401 before the body is read, even when the body is broken or huge
    assert post_raw(service, "/v1/batches", "{not json").status_code == 401
    assert post_raw(service, "/v1/text-to-image", "{not json").status_code == 401
    # refused requests count against the rate: after 3 bad ones the 4th (valid) request is limited
    for _ in range(3):
        assert service.submit("text-to-image", {"prompt": ""}, headers=bearer(key)).status_code == 422
    limited = service.submit("text-to-image", SMALL, headers=bearer(key))
    assert limited.status_code == 429, limited.text
    # a batch of a million tiny items is refused from its raw size, not parsed
    other = create_key(service, "cheap2")
    big = '{"items":[' + ",".join(['{"task":"text-to-image","prompt":"x"}'] * 200_000) + "]}"
    response = post_raw(service, "/v1/batches", big, bearer(other))
    assert response.status_code == 413 and "JSON values" in response.text, response.text
    items = {"items": [{"task": "text-to-image", **SMALL}] * 65}
    response = service.client.post("/v1/batches", json=items, headers=bearer(other))
    assert response.status_code == 422 and "at most 64 items" in response.text


# ---- 6: the queue bound under concurrent load -----------------------------------------------------------
def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def test_queue_bound_holds_under_concurrent_submissions(make_service):
    service = make_service(workers=0, deliverer=False, auth_disabled="false", max_queue_depth=10,
                           rate_limit_per_minute=0, max_active_jobs_per_tenant=0)
    keys = [create_key(service, f"t{i}") for i in range(3)]
    second_port = free_port()  # two API replicas, as a deployment runs them
    service.start("api2", "serve", port=second_port)
    urls = [service.url, f"http://127.0.0.1:{second_port}"]
    wait_until(lambda: _answers(urls[1]), 30, what="the second API")

    def submit(i: int) -> int:
        with httpx.Client(base_url=urls[i % 2], timeout=60) as client:
            return client.post("/v1/text-to-image", json=SMALL, headers=bearer(keys[i % 3])).status_code

    with ThreadPoolExecutor(60) as pool:
        codes = list(pool.map(submit, range(90)))
    assert codes.count(202) == 10 and codes.count(429) == 80, codes
    assert fair_queue(service.redis(), service.prefix).count == 10


# ---- 7: idempotency ------------------------------------------------------------------------------------
def test_idempotency_key_is_fingerprinted_marked_and_bounded(shared_service):
    headers = {"Idempotency-Key": "hardening-1"}
    first = shared_service.submit("text-to-image", {**SMALL, "seed": 1}, headers=headers)
    again = shared_service.submit("text-to-image", {**SMALL, "seed": 1}, headers=headers)
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    other = shared_service.submit("depth-estimation", {"image": IMG}, headers=headers)
    assert other.status_code == 409 and "different request" in other.json()["error"]["message"], other.text
    changed = shared_service.submit("text-to-image", {**SMALL, "seed": 2}, headers=headers)
    assert changed.status_code == 409
    long = shared_service.submit("text-to-image", SMALL, headers={"Idempotency-Key": "k" * 201})
    assert long.status_code == 422 and "Idempotency-Key" in long.text
    batch = {"items": [{"task": "text-to-image", **SMALL, "seed": 3}]}
    one = shared_service.client.post("/v1/batches", json=batch, headers={"Idempotency-Key": "hardening-batch"})
    two = shared_service.client.post("/v1/batches", json=batch, headers={"Idempotency-Key": "hardening-batch"})
    assert one.status_code == 202 and two.json()["id"] == one.json()["id"] and two.headers["idempotent-replayed"] == "true"


def test_idempotency_key_is_not_kept_when_the_enqueue_fails(redis_url, monkeypatch):
    """A Redis error during the enqueue (injected) leaves no key behind that would answer 404 later."""
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    from app.jobs import JobService
    from core.settings import Settings
    from model.tasks import TextToImage

    settings = Settings(redis_url=redis_url, queue_prefix="odidem", rate_limit_per_minute=0)
    redis = Redis.from_url(redis_url)
    service = JobService(redis, settings)
    request = TextToImage(**SMALL)

    def broken(*args, **kwargs):
        raise RedisConnectionError("injected")

    monkeypatch.setattr(service.queue, "enqueue_many", broken)
    with pytest.raises(RedisConnectionError):
        service.submit_once("text-to-image", request, "t", "k", idempotency_key="retry-me")
    assert not redis.keys("odidem:idempotency:*") and not redis.scard("odidem:active:t")
    monkeypatch.undo()
    view, replayed = service.submit_once("text-to-image", request, "t", "k", idempotency_key="retry-me")
    again, replayed_again = service.submit_once("text-to-image", request, "t", "k", idempotency_key="retry-me")
    assert not replayed and replayed_again and again.id == view.id


# ---- 11: readiness, tenant names, images from phones ----------------------------------------------------
def test_readyz_gives_counts_not_worker_names_when_keys_are_on(make_inprocess):
    service = make_inprocess(workers=1, auth_disabled="false")
    body = service.client.get("/readyz").json()
    assert body["status"] == "ready" and body["worker_count"] == 1 and "workers" not in body, body


def test_reserved_and_unsafe_tenant_names_are_refused(shared_service):
    for tenant in ("public", "PUBLIC", "a b", "a;rm -rf", "a\x1b[31m", "$(id)", "x" * 65):
        with pytest.raises(RuntimeError) as refused:
            shared_service.cli("keys", "create", "--tenant", tenant)
        assert "tenant" in str(refused.value) or "reserved" in str(refused.value)
    assert shared_service.cli("keys", "create", "--tenant", "acme-corp.eu_1").count("od_") == 1


def test_phone_mpo_and_exif_orientation(shared_service):
    landscape = Image.new("RGB", (128, 64), (200, 30, 30))
    second = Image.new("RGB", (128, 64), (30, 30, 200))
    mpo = io.BytesIO()
    landscape.save(mpo, format="MPO", save_all=True, append_images=[second])
    response = shared_service.submit("depth-estimation", {"image": base64.b64encode(mpo.getvalue()).decode(),
                                                          "num_inference_steps": 1})
    assert response.status_code == 202, response.text
    shared_service.client.post(f"/v1/jobs/{response.json()['id']}/cancel")
    exif = landscape.getexif()
    exif[0x0112] = 6  # rotate 90: a portrait photo stored sideways
    rotated = io.BytesIO()
    landscape.save(rotated, format="JPEG", exif=exif)
    from model.tasks import DepthEstimation

    plan = DepthEstimation(image=base64.b64encode(rotated.getvalue()).decode()).plan()
    assert plan.height > plan.width, (plan.width, plan.height)


# ---- 10: event streams are bounded per key and per tenant -----------------------------------------------
def test_open_event_streams_are_bounded_per_key_and_tenant(make_service):
    import threading

    service = make_service(workers=0, deliverer=False, auth_disabled="false", max_streams_per_key=2,
                           max_streams_per_tenant=3, rate_limit_per_minute=0)
    key_a = create_key(service, "streamer")
    key_b = service.cli("keys", "create", "--tenant", "streamer").strip().splitlines()[-1]
    job = service.client.post("/v1/text-to-image", json=SMALL, headers=bearer(key_a)).json()["id"]
    release = threading.Event()
    opened: list[str] = []

    def hold(key: str) -> None:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            with client.stream("GET", f"/v1/jobs/{job}/events", headers=bearer(key)) as response:
                lines = response.iter_lines()  # kept: a dropped iterator closes the connection
                first = next(lines)
                while not first.startswith("event:"):  # an `id:` line may come first (Last-Event-ID resume)
                    first = next(lines)
                opened.append(first)
                release.wait(30)

    holders = [threading.Thread(target=hold, args=(k,), daemon=True) for k in (key_a, key_a, key_b)]
    for t in holders:
        t.start()
    wait_until(lambda: len(opened) == 3, 20, what="three streams")
    assert all(line == "event: queued" for line in opened), opened
    over_key = service.client.get(f"/v1/jobs/{job}/events", headers=bearer(key_a), timeout=5)
    assert over_key.status_code == 429 and "API key has 2 event streams open" in over_key.text, over_key.text
    over_tenant = service.client.get(f"/v1/jobs/{job}/events", headers=bearer(key_b), timeout=5)
    assert over_tenant.status_code == 429 and "tenant has 3" in over_tenant.text
    assert service.client.get(f"/v1/jobs/{job}", headers=bearer(key_a)).status_code == 200  # polling still works
    release.set()
    for t in holders:
        t.join(10)
    # closed streams give their slots back
    wait_until(lambda: service.redis().zcard(f"{service.prefix}:streams:tenant:streamer") == 0, 10, what="slots back")
    canceled = service.client.post(f"/v1/jobs/{job}/cancel", headers=bearer(key_a))
    assert canceled.status_code == 200
    with service.client.stream("GET", f"/v1/jobs/{job}/events", headers=bearer(key_a)) as response:
        assert response.status_code == 200 and "event: finished" in response.read().decode()


# ---- 8: a stalled webhook receiver delays nobody else -----------------------------------------------------
def test_stalled_webhook_receiver_does_not_delay_other_webhooks(make_service, receiver):
    import time

    from tests.service.harness import StalledReceiver

    service = make_service(webhook_timeout_s=60)
    stalled = StalledReceiver()
    receiver.up()
    try:
        first = service.submit("text-to-image", {**SMALL, "num_inference_steps": 1, "webhook": {"url": stalled.url}}).json()
        service.wait_job(first["id"])
        wait_until(lambda: stalled.connections >= 1, 20, what="the stalled delivery")
        second = service.submit("text-to-image", {**SMALL, "num_inference_steps": 1, "webhook": {"url": receiver.url}}).json()
        service.wait_job(second["id"])
        ended = time.monotonic()
        wait_until(lambda: receiver.calls, 30, interval=0.05, what="the other tenant's webhook")
        assert time.monotonic() - ended <= 2.0
    finally:
        stalled.close()


def test_a_webhook_attempt_has_one_deadline(make_service):
    import time

    from tests.service.harness import StalledReceiver

    service = make_service(workers=1, webhook_timeout_s=2)
    stalled = StalledReceiver()
    try:
        job = service.submit("text-to-image", {**SMALL, "num_inference_steps": 1, "webhook": {"url": stalled.url}}).json()
        service.wait_job(job["id"])
        wait_until(lambda: stalled.connections >= 1, 20, what="the first attempt")
        started = time.monotonic()
        wait_until(lambda: stalled.connections >= 2, 30, interval=0.1, what="a second attempt")
        assert time.monotonic() - started < 6  # 2 s deadline + 1 s backoff + scheduling, not 60 s of trickle
    finally:
        stalled.close()


def test_deliveries_to_a_busy_host_wait_their_turn_and_others_go_on(make_service, receiver):
    import time

    from tests.service.harness import StalledReceiver

    from tests.service.harness import WebhookReceiver, local_address

    # the stalled attempt holds 127.0.0.1's one slot for its whole deadline (long enough to outlast two
    # jobs on a loaded CI machine), then gives it back
    service = make_service(webhook_timeout_s=15, webhook_per_host=1, webhook_allowlist=f"127.0.0.1,::1,{local_address()}")
    stalled = StalledReceiver()
    receiver.up()
    elsewhere = WebhookReceiver(local_address())  # another address of this machine: another destination
    elsewhere.up()
    try:
        first = service.submit("text-to-image", {**SMALL, "num_inference_steps": 1, "webhook": {"url": stalled.url}}).json()
        service.wait_job(first["id"])
        wait_until(lambda: stalled.connections >= 1, 20, what="the stalled delivery")
        same_host = {"url": receiver.url}  # 127.0.0.1, whose one slot the stalled receiver holds
        other_host = {"url": elsewhere.url}
        queued = service.submit("text-to-image", {**SMALL, "num_inference_steps": 1, "seed": 1, "webhook": same_host}).json()
        prompt = service.submit("text-to-image", {**SMALL, "num_inference_steps": 1, "seed": 2, "webhook": other_host}).json()
        service.wait_job(queued["id"])
        service.wait_job(prompt["id"])
        ended = time.monotonic()
        wait_until(lambda: len(elsewhere.calls) >= 1, 30, interval=0.05, what="the other host's webhook")
        assert time.monotonic() - ended <= 2.0
        assert elsewhere.calls[0]["json"]["job"]["id"] == prompt["id"] and not receiver.calls
        wait_until(lambda: len(receiver.calls) >= 1, 60, what="the postponed webhook")  # put back, not lost
        assert receiver.calls[0]["json"]["job"]["id"] == queued["id"]
    finally:
        stalled.close()
        elsewhere.down()
