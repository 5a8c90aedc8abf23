"""Every task over HTTP against a real API, Redis and worker: submit, follow, download, check."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.cases import CASES
from tests.conftest import make_image
from tests.service.harness import wait_until


def check_outputs(service, job: dict, expected: dict) -> None:
    assert {o["name"] for o in job["outputs"]} == set(expected)
    for output in job["outputs"]:
        response = httpx.get(output["url"])
        assert response.status_code == 200
        assert response.headers["content-type"] == output["media_type"]
        image = Image.open(io.BytesIO(response.content))
        image.load()
        assert image.size == (output["width"], output["height"])
        assert image.mode == expected[output["name"]][1]


@pytest.mark.parametrize("task", sorted(CASES))
def test_task_endpoint(shared_service, task):
    payload, expected = CASES[task]
    response = shared_service.submit(task, payload)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] in ("queued", "running") and job["task"] == task
    assert response.headers["location"] == job["urls"]["self"]
    done = shared_service.wait_job(job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"step": payload["num_inference_steps"], "total": payload["num_inference_steps"], "fraction": 1.0}
    check_outputs(shared_service, done, expected)
    if task == "camera-pose-estimation":
        assert len(done["data"]["cameras"]) == 3
    if task == "detection":
        assert done["data"]["classes"][0]["name"] == "bird"


def test_prefer_wait_returns_the_finished_job(shared_service):
    payload, expected = CASES["text-to-image"]
    response = shared_service.submit("text-to-image", payload, headers={"Prefer": "wait=60"})
    assert response.status_code == 200 and response.headers["preference-applied"] == "wait=60"
    assert response.json()["status"] == "succeeded"
    check_outputs(shared_service, response.json(), expected)


def test_prefer_wait_times_out_with_202(shared_service):
    # far longer than the wait on any machine (the demo model ran 60 steps at 256 px within a second)
    payload = {"prompt": "slow", "width": 512, "height": 512, "num_inference_steps": 200}
    response = shared_service.submit("text-to-image", payload, headers={"Prefer": "wait=1"})
    assert response.status_code == 202 and response.json()["status"] in ("queued", "running")
    shared_service.client.post(f"/v1/jobs/{response.json()['id']}/cancel")
    shared_service.wait_job(response.json()["id"])


def test_idle_keep_alive_outlasts_clients(shared_service):
    """A connection idle for longer than httpx's and uvicorn's 5 s default is still served: the server
    must not close one a client is about to reuse (that race reset a request in CI)."""
    import http.client
    import time

    conn = http.client.HTTPConnection("127.0.0.1", shared_service.port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        assert first.status == 200 and first.read()
        sock = conn.sock
        time.sleep(6)
        conn.request("GET", "/healthz")  # on the same socket: a closed one answers RemoteDisconnected
        second = conn.getresponse()
        assert second.status == 200 and second.read() and conn.sock is sock
    finally:
        conn.close()


def test_event_stream(shared_service):
    payload = {"prompt": "a cat", "width": 128, "height": 128, "num_inference_steps": 6}
    job = shared_service.submit("text-to-image", payload).json()
    events = []
    with httpx.stream("GET", job["urls"]["events"], timeout=60) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
                if kind == "finished":
                    break
    kinds = [k for k, _ in events]
    assert kinds[-1] == "finished" and events[-1][1]["status"] == "succeeded"
    assert "started" in kinds
    progress = [d["step"] for k, d in events if k == "progress"]
    assert progress and progress == sorted(progress) and progress[-1] == 6


def test_cancel_running_job(shared_service):
    payload = {"prompt": "long", "width": 256, "height": 256, "num_inference_steps": 200}
    job = shared_service.submit("text-to-image", payload).json()
    shared_service.wait_job(job["id"], until=("running",))
    wait_until(lambda: (shared_service.job(job["id"]).get("progress") or {}).get("step", 0) >= 1, 60, what="first step")
    response = shared_service.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    done = shared_service.wait_job(job["id"])
    assert done["status"] == "canceled" and done["error"]["type"] == "canceled"
    assert done["progress"]["step"] < 200
    assert done["finished_at"] is not None and done["finished_at"] >= done["started_at"]
    again = shared_service.client.post(f"/v1/jobs/{job['id']}/cancel")  # the docs: 409 once it has ended
    assert again.status_code == 409 and "already canceled" in again.json()["error"]["message"]


def test_cancel_queued_job_and_finished_job(shared_service):
    blocker = shared_service.submit("text-to-image", {"prompt": "x", "width": 256, "height": 256, "num_inference_steps": 200}).json()
    queued = shared_service.submit("text-to-image", {"prompt": "y", "width": 64, "height": 64, "num_inference_steps": 1}).json()
    response = shared_service.client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    assert response.json()["finished_at"] is not None and response.json()["started_at"] is None
    assert shared_service.client.post(f"/v1/jobs/{queued['id']}/cancel").status_code == 409
    shared_service.client.post(f"/v1/jobs/{blocker['id']}/cancel")
    shared_service.wait_job(blocker["id"])
    finished = shared_service.submit("text-to-image", CASES["text-to-image"][0], headers={"Prefer": "wait=60"}).json()
    conflict = shared_service.client.post(f"/v1/jobs/{finished['id']}/cancel")
    assert conflict.status_code == 409 and "already succeeded" in conflict.json()["error"]["message"]


def test_multipart_upload(shared_service):
    files = [("images", ("a.png", make_image(96, 64, seed=1), "image/png")), ("images", ("b.jpg", make_image(80, 80, seed=2, fmt="JPEG"), "image/jpeg"))]
    data = {"prompt": "a chef", "num_inference_steps": "2", "width": "128", "height": "96",
            "reference_captions": json.dumps(["a man", "the same man"])}
    response = shared_service.client.post("/v1/id-customization", data=data, files=files)
    assert response.status_code == 202, response.text
    done = shared_service.wait_job(response.json()["id"])
    assert done["status"] == "succeeded"
    single = shared_service.client.post(
        "/v1/depth-estimation", data={"num_inference_steps": "2", "width": "128", "height": "96"},
        files={"image": ("x.webp", make_image(96, 64, fmt="WEBP"), "image/webp")},
    )
    assert single.status_code == 202, single.text
    assert shared_service.wait_job(single.json()["id"])["status"] == "succeeded"
    # lists and objects as `application/json` parts, as the document's `encoding` says (and Swagger UI sends)
    classes = [{"name": "dragon", "colour": "cyan"}]
    typed = shared_service.client.post(
        "/v1/segmentation", data={"num_inference_steps": "2", "width": "64", "height": "64"},
        files={"image": ("x.png", make_image(64, 64), "image/png"),
               "classes": ("blob", json.dumps(classes).encode(), "application/json"),
               "webhook": ("blob", b"", "application/json")},  # an empty part: no webhook
    )
    assert typed.status_code == 202, typed.text
    assert typed.json()["input"]["classes"][0]["name"] == "dragon"


def test_output_formats(shared_service):
    payload = {**CASES["text-to-image"][0], "output_format": "webp"}
    job = shared_service.submit("text-to-image", payload, headers={"Prefer": "wait=60"}).json()
    url = job["outputs"][0]["url"]
    assert url.endswith("/image.webp")
    assert httpx.get(url).headers["content-type"] == "image/webp"
    jpeg = httpx.get(url.split("?")[0], params={"format": "jpeg"})
    assert jpeg.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(jpeg.content)).format == "JPEG"
    assert httpx.get(url.split("?")[0], params={"format": "gif"}).status_code == 422
    assert httpx.get(url.rsplit("/", 1)[0] + "/nope.png").status_code == 404


def test_idempotency_key_returns_the_same_job(shared_service):
    payload = CASES["text-to-image"][0]
    first = shared_service.submit("text-to-image", payload, headers={"Idempotency-Key": "abc-123-" + shared_service.prefix})
    second = shared_service.submit("text-to-image", payload, headers={"Idempotency-Key": "abc-123-" + shared_service.prefix})
    assert first.json()["id"] == second.json()["id"]


def test_same_seed_same_image(shared_service):
    payload = {**CASES["text-to-image"][0], "seed": 1234}
    a = shared_service.submit("text-to-image", payload, headers={"Prefer": "wait=60"}).json()
    b = shared_service.submit("text-to-image", payload, headers={"Prefer": "wait=60"}).json()
    first, second = (Image.open(io.BytesIO(httpx.get(job["outputs"][0]["url"]).content)) for job in (a, b))
    assert first.text == second.text  # the parameters written into the PNG
    # the same image, to one level: a job may have shared its steps with others (text padded to the longest)
    difference = np.abs(np.asarray(first, dtype=np.int16) - np.asarray(second, dtype=np.int16))
    assert difference.max() <= 1, difference.max()


def test_metrics(shared_service):
    shared_service.submit("text-to-image", CASES["text-to-image"][0], headers={"Prefer": "wait=60"})
    text = shared_service.client.get("/metrics").text
    assert 'onediffusion_jobs_total{status="succeeded",task="text-to-image"}' in text
    for name in ("onediffusion_queue_depth", "onediffusion_batch_size_bucket", "onediffusion_step_seconds_count",
                 "onediffusion_job_latency_seconds_bucket", "onediffusion_workers_ready 1"):
        assert name in text


def test_docs_page(shared_service):
    assert shared_service.client.get("/docs").status_code == 200
    schema = shared_service.client.get("/openapi.json").json()
    assert "/v1/text-to-image" in schema["paths"] and "TextToImageRequest" in schema["components"]["schemas"]
