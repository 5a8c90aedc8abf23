"""Bad input gets the right 4xx with a message that says what to change, and nothing is queued."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.conftest import b64_image, make_image
from tests.service.harness import job_keys, queue_size

IMG = b64_image(96, 64)


def gif() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    return base64.b64encode(buffer.getvalue()).decode()


CASES = [
    # (task, payload or raw, status, words in the message)
    ("depth-estimation", {"image": base64.b64encode(b"this is text").decode()}, 422, "image: the image could not be decoded"),
    ("depth-estimation", {"image": "%%%not base64%%%"}, 422, "not valid base64"),
    ("depth-estimation", {"image": gif()}, 422, "GIF image; send PNG, JPEG or WebP"),
    ("depth-estimation", {}, 422, "image: Field required"),
    ("id-customization", {"images": [IMG] * 4, "prompt": "x"}, 422, "images: List should have at most 3 items"),
    ("camera-pose-estimation", {"images": [IMG]}, 422, "at least 2 items"),
    ("text-to-image", {"prompt": "x", "width": 500, "height": 512}, 422, "width: Input should be a multiple of 16"),
    ("text-to-image", {"prompt": "x", "width": 512}, 422, "give both width and height"),
    ("text-to-image", {"prompt": "x", "num_inference_steps": 0}, 422, "num_inference_steps: Input should be greater than or equal to 1"),
    ("text-to-image", {"prompt": "x", "num_inference_steps": 1000}, 422, "less than or equal to 200"),
    ("text-to-image", {"prompt": "x", "guidance_scale": 99}, 422, "guidance_scale"),
    ("text-to-image", {"prompt": ""}, 422, "prompt: String should have at least 1 character"),
    ("text-to-image", {"prompt": "x", "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
    ("text-to-image", {"prompt": "x", "width": 4096, "height": 4096}, 422, "larger than the 2048 px limit"),
    ("segmentation", {"image": IMG, "classes": [{"name": "a", "colour": "chartreuse"}]}, 422, "unknown colour 'chartreuse'"),
    ("text-to-multiview", {"prompt": "x", "width": 512, "height": 256}, 422, "square"),
    ("text-to-image", {"prompt": "x", "webhook": {"url": "ftp://example.com"}}, 422, "webhook.url"),
]


@pytest.mark.parametrize("task,payload,status,words", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_request(inprocess_service, task, payload, status, words):
    before = (queue_size(inprocess_service), job_keys(inprocess_service))
    response = inprocess_service.submit(task, payload)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"], error
    assert error["type"] == "invalid_request"
    assert (queue_size(inprocess_service), job_keys(inprocess_service)) == before


def test_not_json_and_wrong_media_type(inprocess_service):
    response = inprocess_service.client.post("/v1/text-to-image", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    response = inprocess_service.client.post("/v1/text-to-image", content=b"prompt=x", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and "application/json or multipart/form-data" in response.json()["error"]["message"]
    response = inprocess_service.client.post("/v1/text-to-image", json=["a", "list"])
    assert response.status_code == 422


def test_payload_too_large(make_inprocess):
    service = make_inprocess(workers=0, max_body_bytes=100_000)
    before = queue_size(service)
    big = {"image": base64.b64encode(make_image(1024, 1024)).decode()}
    response = service.submit("depth-estimation", big)
    assert response.status_code == 413 and "larger than 100000 bytes" in response.json()["error"]["message"]
    chunks = (b"x" * 50_000 for _ in range(4))  # no Content-Length: counted while streaming
    streamed = service.client.post("/v1/depth-estimation", content=chunks, headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert queue_size(service) == before


def test_too_many_pixels(make_inprocess):
    service = make_inprocess(workers=0, max_input_pixels=5000)
    response = service.submit("depth-estimation", {"image": IMG})
    assert response.status_code == 422 and "more than the limit of 5000" in response.json()["error"]["message"]


def test_unknown_things_are_404(inprocess_service):
    assert inprocess_service.client.get("/v1/jobs/doesnotexist").status_code == 404
    assert inprocess_service.client.get("/v1/jobs/bad$id").status_code == 422
    assert inprocess_service.client.post("/v1/no-such-task", json={}).status_code == 404
    assert inprocess_service.client.get("/v1/batches/nope").json()["error"]["type"] == "not_found"


def test_batch_with_a_bad_item_queues_nothing(inprocess_service):
    before = (queue_size(inprocess_service), job_keys(inprocess_service))
    body = {"items": [
        {"task": "text-to-image", "prompt": "fine", "width": 64, "height": 64, "num_inference_steps": 1},
        {"task": "depth-estimation", "image": gif()},
    ]}
    response = inprocess_service.client.post("/v1/batches", json=body)
    assert response.status_code == 422
    assert "items.1.image" in response.json()["error"]["message"]
    response = inprocess_service.client.post("/v1/batches", json={"items": [{"task": "nope"}]})
    assert response.status_code == 422 and "task" in response.json()["error"]["message"]
    assert (queue_size(inprocess_service), job_keys(inprocess_service)) == before
