"""GPU batching of queued jobs, batches with signed webhooks, and a receiver that is down for a while."""

from __future__ import annotations

import time

from tests.service.harness import signature_valid, wait_until

SECRET = "test-secret-123"


def small(prompt: str, steps: int = 2, **extra) -> dict:
    return {"prompt": prompt, "width": 64, "height": 64, "num_inference_steps": steps, **extra}


def test_queued_jobs_of_one_shape_share_a_batch(make_inprocess):
    service = make_inprocess(max_batch=4)
    items = [{"task": "text-to-image", **small(f"cat {i}", seed=i, steps=2 + i)} for i in range(2)]
    ids = [j["id"] for j in service.client.post("/v1/batches", json={"items": items}).json()["jobs"]]
    other_shape = service.submit("text-to-image", {**small("dog"), "width": 128}).json()["id"]
    jobs = [service.wait_job(i) for i in ids]
    assert all(j["status"] == "succeeded" for j in jobs)
    assert [j["timings"]["batch_size"] for j in jobs] == [2, 2]  # step counts differ: they still share steps
    assert service.wait_job(other_shape)["timings"]["batch_size"] == 1
    metrics = service.client.get("/metrics").text
    assert 'onediffusion_batch_size_bucket{le="2"}' in metrics


def test_batch_is_equivalent_to_single_runs(make_inprocess):
    """The same request gives the same image whether it ran in a batch or alone."""
    service = make_inprocess(max_batch=4)
    items = [{"task": "text-to-image", **small("a red cat", seed=7)}, {"task": "text-to-image", **small("a blue dog", seed=8)}]
    a, b = [j["id"] for j in service.client.post("/v1/batches", json={"items": items}).json()["jobs"]]
    batched = service.wait_job(a)
    assert service.wait_job(b)["timings"]["batch_size"] == 2
    alone = service.submit("text-to-image", small("a red cat", seed=7), headers={"Prefer": "wait=60"}).json()
    assert alone["timings"]["batch_size"] == 1
    from io import BytesIO

    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(BytesIO(service.client.get(batched["outputs"][0]["url"]).content)), dtype=int)
    y = np.asarray(Image.open(BytesIO(service.client.get(alone["outputs"][0]["url"]).content)), dtype=int)
    assert np.abs(x - y).max() <= 1


def check_signature(call: dict) -> None:
    headers = call["headers"]
    assert signature_valid(SECRET, headers["onediffusion-timestamp"], call["body"], headers["onediffusion-signature"])
    assert not signature_valid("wrong-secret", headers["onediffusion-timestamp"], call["body"], headers["onediffusion-signature"])


def test_batch_webhooks(make_service, receiver):
    receiver.up()
    service = make_service(max_batch=2)
    body = {
        "items": [{"task": "text-to-image", **small(f"item {i}")} for i in range(3)],
        "webhook": {"url": receiver.url, "secret": SECRET},
    }
    response = service.client.post("/v1/batches", json=body)
    assert response.status_code == 202, response.text
    batch = response.json()
    assert len(batch["jobs"]) == 3 and batch["status"] == "running"
    wait_until(lambda: "batch.completed" in receiver.events(), 90, what="the batch.completed webhook")
    time.sleep(0.5)
    events = receiver.events()
    assert events.count("batch.item.succeeded") == 3 and events.count("batch.completed") == 1
    # Deliveries run concurrently (a slow receiver must not hold up others), so arrival order is not
    # guaranteed: batch.completed itself carries the final counts.
    for call in receiver.calls:
        check_signature(call)
    final = next(c["json"]["batch"] for c in receiver.calls if c["json"]["event"] == "batch.completed")
    assert final["status"] == "completed" and final["counts"]["succeeded"] == 3
    items = {c["json"]["job"]["id"] for c in receiver.calls if c["json"]["event"].startswith("batch.item")}
    assert items == {j["id"] for j in batch["jobs"]}
    view = service.client.get(f"/v1/batches/{batch['id']}").json()
    assert view["status"] == "completed" and all(j["outputs"] for j in view["jobs"])


def test_webhooks_arrive_after_the_receiver_comes_back(make_service, receiver):
    service = make_service()
    hook = {"url": receiver.url, "secret": SECRET}
    job = service.submit("text-to-image", small("x", webhook=hook)).json()
    batch = service.client.post("/v1/batches", json={"items": [{"task": "text-to-image", **small(f"b{i}")} for i in range(2)],
                                                     "webhook": hook}).json()
    assert service.wait_job(job["id"])["status"] == "succeeded"
    assert all(service.wait_job(j["id"])["status"] == "succeeded" for j in batch["jobs"])
    time.sleep(2)  # a couple of failed attempts while the receiver is down
    assert receiver.calls == []
    assert service.client.get(f"/v1/jobs/{job['id']}").json()["outputs"]  # the result is kept meanwhile
    receiver.up()
    wait_until(lambda: len(receiver.calls) >= 4, 60, what="the delayed webhooks")
    time.sleep(0.5)
    assert sorted(receiver.events()) == ["batch.completed", "batch.item.succeeded", "batch.item.succeeded", "job.succeeded"]
    for call in receiver.calls:
        check_signature(call)
    single = next(c for c in receiver.calls if c["json"]["event"] == "job.succeeded")
    assert single["json"]["job"]["id"] == job["id"]
    assert single["json"]["job"]["outputs"][0]["url"].startswith(service.url)


def image_of(job: dict):
    import io

    import httpx
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(httpx.get(job["outputs"][0]["url"]).content)), dtype=int)


def test_a_short_job_joins_a_running_batch_and_leaves_first_with_the_same_image(make_service):
    """Step-level batching through the real worker: a 3-step job that arrives while a 200-step job runs
    joins it at the next step, ends long before it, and its image is the one it makes alone; canceling
    the long job then leaves a third job that joined it undisturbed."""
    service = make_service(max_batch=4)
    size = {"width": 128, "height": 128}  # steps long enough that the long job is still running when checked
    short = small("a red cat", seed=7, steps=3, **size)
    alone = service.submit("text-to-image", short, headers={"Prefer": "wait=60"}).json()
    assert alone["status"] == "succeeded" and alone["timings"]["batch_size"] == 1
    long_id = service.submit("text-to-image", small("a long walk", seed=1, steps=200, **size)).json()["id"]
    wait_until(lambda: (service.job(long_id).get("progress") or {}).get("step", 0) >= 2, 60, what="the long job's steps")
    joined = service.submit("text-to-image", short, headers={"Prefer": "wait=60"}).json()
    assert joined["status"] == "succeeded" and joined["timings"]["batch_size"] == 2
    running = service.job(long_id)
    assert running["status"] == "running" and running["eta_s"] is not None
    assert abs(image_of(alone) - image_of(joined)).max() <= 1

    third = service.submit("text-to-image", small("a third one", seed=3, steps=8, **size)).json()["id"]
    wait_until(lambda: (service.job(third).get("progress") or {}).get("step", 0) >= 1, 60, what="the third job's steps")
    assert service.client.post(f"/v1/jobs/{long_id}/cancel").status_code == 200
    assert service.wait_job(long_id)["status"] == "canceled"
    done = service.wait_job(third)
    assert done["status"] == "succeeded" and done["timings"]["batch_size"] == 2
    again = service.submit("text-to-image", small("a third one", seed=3, steps=8, **size), headers={"Prefer": "wait=60"}).json()
    assert abs(image_of(again) - image_of(done)).max() <= 1
    assert "worker loop ended on an error" not in service.logs(full=True)  # no restart hid a crash of the loop
