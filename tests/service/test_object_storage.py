"""The service with STORAGE_URL=s3://...: a real API, worker and deliverer against a real S3 server process
(moto's, over HTTP). Outputs live in the bucket and are fetched from it (the API answers 307, webhooks carry
presigned URLs); a missing bucket or one that refuses writes is a 503 naming the setting while queued jobs
wait; a storage server killed mid-job costs a retry, or fails the job saying what to check, never leaves it
stuck."""

from __future__ import annotations

import io
import signal
import time

import httpx
from PIL import Image

from rq.job import Job

from benchmarks.redis_footprint import long_prompt
from core.plan import STORED
from tests.cases import CASES
from tests.s3_server import S3Server, s3_bucket, s3_server  # noqa: F401  (fixtures)
from tests.service.harness import wait_until

LONG = {"prompt": "long", "width": 128, "height": 128, "num_inference_steps": 40, "seed": 5}


def s3_settings(server: S3Server, bucket: str, **extra) -> dict:
    return {"storage_url": f"s3://{bucket}/od", **{k.lower(): v for k, v in server.env().items()}, **extra}


def image_at(url: str, **kwargs) -> Image.Image:
    response = httpx.get(url, **kwargs)
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def test_outputs_live_in_the_bucket_and_are_fetched_from_it(make_service, s3_server, s3_bucket, receiver):
    receiver.up()
    service = make_service(**s3_settings(s3_server, s3_bucket))
    payload = {**CASES["text-to-image"][0], "output_format": "jpeg", "webhook": {"url": receiver.url}}
    job = service.submit("text-to-image", payload, headers={"Prefer": "wait=90"}).json()
    assert job["status"] == "succeeded", job
    (output,) = job["outputs"]
    assert output["name"] == "image.jpeg"
    # the key-free URL is the bucket's own (presigned): the bytes come from the storage, not the API
    assert output["signed_url"].startswith(f"{s3_server.endpoint}/{s3_bucket}/od/{job['id']}/image.jpeg?")
    assert "X-Amz-Expires=86400" in output["signed_url"]  # SIGNED_URL_TTL_S
    assert image_at(output["signed_url"]).format == "JPEG"
    # the API's URL answers 307 to a presigned URL
    redirect = service.client.get(output["url"])
    assert redirect.status_code == 307 and redirect.headers["location"].startswith(s3_server.endpoint)
    assert image_at(redirect.headers["location"]).format == "JPEG"
    assert service.client.head(output["url"]).status_code == 307
    # another format than the job's: converted once, kept in the bucket, then redirected to
    webp = service.client.get(output["url"].replace("image.jpeg", "image.png"), params={"format": "webp"})
    assert webp.status_code == 307 and image_at(webp.headers["location"]).format == "WEBP"
    png = service.client.get(output["url"].replace("image.jpeg", "image.png"))
    assert image_at(png.headers["location"]).format == "PNG"
    assert service.client.get(output["url"].replace("image.jpeg", "nothing.png")).status_code == 404
    # webhook bodies carry the presigned URL too, and are kept beside the outputs (for a redelivery)
    wait_until(lambda: "job.succeeded" in receiver.events(), 30, what="the webhook")
    kept = s3_server.keys(s3_bucket, f"od/{job['id']}/")
    assert [k for k in kept if "/webhook-" not in k] == [
        f"od/{job['id']}/{name}" for name in ("image.jpeg", "image.png", "image.webp")]
    (body,) = [k for k in kept if "/webhook-" in k]
    assert body == f"od/{job['id']}/webhook-{receiver.calls[0]['headers']['onediffusion-delivery']}.json"
    (hooked,) = receiver.calls[0]["json"]["job"]["outputs"]
    assert hooked["signed_url"].startswith(s3_server.endpoint) and image_at(hooked["signed_url"]).format == "JPEG"

    # 16-bit depth stays PNG in the bucket and refuses 8-bit formats
    depth_job = service.submit("depth-estimation", {**CASES["depth-estimation"][0], "output_format": "webp"},
                               headers={"Prefer": "wait=90"}).json()
    assert depth_job["status"] == "succeeded", depth_job
    depth = {o["kind"]: o for o in depth_job["outputs"]}["depth16"]
    assert image_at(depth["signed_url"]).mode == "I;16"
    refused = service.client.get(depth["url"], params={"format": "webp"})
    assert refused.status_code == 422 and "16-bit" in refused.json()["error"]["message"]

    # a long prompt's plan is stored in the bucket beside the input images; the job carries its digest
    prompt = long_prompt()
    long_job = service.submit("text-to-image", {**CASES["text-to-image"][0], "prompt": prompt},
                              headers={"Prefer": "wait=90"}).json()
    assert long_job["status"] == "succeeded", long_job
    assert long_job["input"]["prompt"] == prompt
    digest = Job.fetch(long_job["id"], connection=service.redis()).args[1][STORED]
    assert f"od/_inputs/{digest}" in s3_server.keys(s3_bucket, "od/_inputs/")

    # no shared folder in sight, and deleting a job deletes its objects
    assert not (service.tmp / "results").exists()
    assert service.client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert s3_server.keys(s3_bucket, f"od/{job['id']}/") == []


def test_missing_bucket_is_a_503_naming_the_setting_and_queued_jobs_wait(make_service, s3_server, s3_bucket):
    service = make_service(workers=0, **s3_settings(s3_server, s3_bucket, storage_check_s=2))
    queued = [service.submit("text-to-image", CASES["text-to-image"][0]).json()["id"]]
    s3_server.delete_bucket(s3_bucket)

    def refused():
        response = service.submit("text-to-image", CASES["text-to-image"][0])
        if response.status_code == 202:  # the API's last look at the bucket is a few seconds old
            queued.append(response.json()["id"])
            return None
        return response

    response = wait_until(refused, 30, interval=0.5, what="a 503")
    assert response.status_code == 503 and response.headers["retry-after"]
    message = response.json()["error"]["message"]
    assert f"STORAGE_URL=s3://{s3_bucket}/od" in message and "does not exist" in message

    # a worker that cannot store outputs takes no jobs: they stay queued, and run once the bucket is back
    service.start_worker(wait_ready=False)
    wait_until(lambda: "not taking jobs until the storage answers" in service.logs(full=True), 60, what="the worker's log")
    time.sleep(2)
    assert all(service.job(job_id)["status"] == "queued" for job_id in queued)
    s3_server.create_bucket(s3_bucket)
    for job_id in queued:
        assert service.wait_job(job_id, timeout=120)["status"] == "succeeded"
    accepted = wait_until(lambda: (lambda r: r if r.status_code == 202 else None)(
        service.submit("text-to-image", CASES["text-to-image"][0])), 30, interval=0.5, what="submissions again")
    assert service.wait_job(accepted.json()["id"], timeout=120)["status"] == "succeeded"

    # a bucket that refuses writes (a policy, a read-only key) is refused the same way, saying so
    s3_server.refuse_writes()
    try:
        refusal = wait_until(lambda: (lambda r: r if r.status_code == 503 else None)(
            service.submit("text-to-image", CASES["text-to-image"][0])), 30, interval=0.5, what="a 503")
        assert "refused it (AccessDenied)" in refusal.json()["error"]["message"]
    finally:
        s3_server.refuse_writes(False)


def test_storage_server_killed_mid_job(make_service, tmp_path):
    server = S3Server(tmp_path)
    server.start()
    server.create_bucket("chaos")
    try:
        service = make_service(**s3_settings(server, "chaos", storage_retry_s=20, storage_timeout_s=2))
        # back within STORAGE_RETRY_S: the worker's retries store the outputs, the job succeeds
        job = service.submit("text-to-image", LONG).json()
        wait_until(lambda: (service.job(job["id"]).get("progress") or {}).get("step", 0) >= 2, 90, what="progress")
        server.kill()
        wait_until(lambda: "storage unavailable (could not store output" in service.logs(full=True), 90, what="the worker to retry storing")
        assert service.job(job["id"])["status"] == "running"
        server.start()  # an empty server on the same address
        server.create_bucket("chaos")
        done = service.wait_job(job["id"], timeout=120)
        assert done["status"] == "succeeded", done
        assert image_at(done["outputs"][0]["signed_url"]).size == (128, 128)

        # gone for good: the job fails within STORAGE_RETRY_S, saying what to check (run by a worker that
        # gives up sooner, so the test does not wait out the window the first outage needed)
        service.kill("worker1", signal.SIGTERM)
        service.start_worker(wait_ready=False, storage_retry_s=3)
        job = service.submit("text-to-image", LONG).json()
        wait_until(lambda: (service.job(job["id"]).get("progress") or {}).get("step", 0) >= 2, 90, what="progress")
        server.kill()
        done = service.wait_job(job["id"], timeout=120)
        assert done["status"] == "failed", done
        assert done["error"]["type"] == "storage_unavailable"
        assert "STORAGE_URL=s3://chaos/od" in done["error"]["message"], done["error"]
        # and the API says the same of its files
        response = service.client.get(f"/v1/files/{job['id']}/image.png")
        assert response.status_code == 503 and response.headers["retry-after"], response.text
        assert "STORAGE_URL=s3://chaos/od" in response.json()["error"]["message"]
    finally:
        server.stop()
