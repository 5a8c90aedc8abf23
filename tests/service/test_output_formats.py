"""Outputs say what they are: named and labelled by the format they are served in; a conversion that would
change the data's meaning (16-bit depth to an 8-bit format) is refused."""

from __future__ import annotations

import base64
import hashlib
import io
import json

import numpy as np
from PIL import Image

from tests.cases import CASES


def test_jpeg_output_is_named_and_labelled_jpeg(inprocess_service):
    payload = {**CASES["text-to-image"][0], "output_format": "jpeg"}
    job = inprocess_service.submit("text-to-image", payload, headers={"Prefer": "wait=60"}).json()
    assert job["status"] == "succeeded", job
    (output,) = job["outputs"]
    assert output["name"] == "image.jpeg" and output["media_type"] == "image/jpeg"
    for url in (output["url"], output["signed_url"]):
        assert url.split("?")[0].endswith("/image.jpeg")
        response = inprocess_service.client.get(url)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(response.content)).format == "JPEG"
    # the stored PNG is still there under its own name
    png = inprocess_service.client.get(output["url"].replace("image.jpeg", "image.png"))
    assert Image.open(io.BytesIO(png.content)).format == "PNG"


def test_depth_stays_16_bit_png_and_8_bit_conversions_are_refused(inprocess_service):
    payload = {**CASES["depth-estimation"][0], "output_format": "webp"}
    job = inprocess_service.submit("depth-estimation", payload, headers={"Prefer": "wait=60"}).json()
    assert job["status"] == "succeeded", job
    outputs = {o["kind"]: o for o in job["outputs"]}
    depth, preview = outputs["depth16"], outputs["preview"]
    assert depth["name"] == "depth.png" and depth["media_type"] == "image/png"
    assert preview["name"] == "depth_preview.webp" and preview["media_type"] == "image/webp"
    assert Image.open(io.BytesIO(inprocess_service.client.get(depth["url"]).content)).mode == "I;16"
    for fmt in ("webp", "jpeg"):
        refused = inprocess_service.client.get(depth["url"], params={"format": fmt})
        assert refused.status_code == 422, refused.text
        assert "16-bit" in refused.json()["error"]["message"]
    assert inprocess_service.client.get(depth["url"].replace("depth.png", "depth.webp")).status_code == 422
    assert inprocess_service.client.get(preview["url"]).headers["content-type"] == "image/webp"


def test_job_echoes_its_input_and_outputs_carry_their_parameters(inprocess_service):
    payload = dict(CASES["depth-estimation"][0])
    payload.pop("seed", None)  # the service picks one; the view must say which
    job = inprocess_service.submit("depth-estimation", payload, headers={"Prefer": "wait=60"}).json()
    assert job["status"] == "succeeded", job
    echo = job["input"]
    assert isinstance(echo["seed"], int)
    raw = base64.b64decode(payload["image"].split(",")[-1])
    assert echo["image"]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert "base64" not in json.dumps(echo) and payload["image"][-40:] not in json.dumps(echo)
    for output in job["outputs"]:
        image = Image.open(io.BytesIO(inprocess_service.client.get(output["url"]).content))
        assert json.loads(image.text["parameters"]) == {"task": "depth-estimation", "input": echo}
    # the echo, with the image sent again, reproduces the job
    again = {**echo, "image": payload["image"]}
    second = inprocess_service.submit("depth-estimation", again, headers={"Prefer": "wait=60"}).json()
    assert second["input"] == echo
    first_depth = inprocess_service.client.get(job["outputs"][0]["url"]).content
    assert inprocess_service.client.get(second["outputs"][0]["url"]).content == first_depth


def test_head_and_conditional_get_on_files(inprocess_service):
    job = inprocess_service.submit("text-to-image", CASES["text-to-image"][0], headers={"Prefer": "wait=60"}).json()
    url = job["outputs"][0]["url"]
    for variant in (url, url.replace("image.png", "image.webp")):
        full = inprocess_service.client.get(variant)
        assert full.status_code == 200 and full.headers["etag"] and "max-age" in full.headers["cache-control"]
        head = inprocess_service.client.head(variant)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["etag"] == full.headers["etag"] and head.headers["content-type"] == full.headers["content-type"]
        again = inprocess_service.client.get(variant, headers={"If-None-Match": full.headers["etag"]})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == full.headers["etag"]
        assert inprocess_service.client.get(variant, headers={"If-None-Match": '"other"'}).status_code == 200
    assert inprocess_service.client.head(url.replace("image.png", "nope.png")).status_code == 404


def test_delete_job_removes_record_and_outputs(inprocess_service):
    job = inprocess_service.submit("text-to-image", CASES["text-to-image"][0], headers={"Prefer": "wait=60"}).json()
    url = job["outputs"][0]["url"]
    folder = inprocess_service.tmp / "results" / job["id"]
    assert folder.is_dir() and inprocess_service.client.get(url).status_code == 200
    deleted = inprocess_service.client.delete(f"/v1/jobs/{job['id']}")
    assert deleted.status_code == 204, deleted.text
    assert inprocess_service.client.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert inprocess_service.client.get(url).status_code == 404 and not folder.exists()
    assert inprocess_service.client.delete(f"/v1/jobs/{job['id']}").status_code == 404


def _events(client, url: str, headers: dict) -> list[tuple[str, str]]:
    """(id, event) of each event of a stream that ends by itself."""
    with client.stream("GET", url, headers=headers, timeout=60) as stream:
        assert stream.status_code == 200
        text = "".join(stream.iter_text())
    found = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            found.append((fields.get("id"), fields["event"]))
    return found


def test_events_have_ids_and_resume_after_last_event_id(inprocess_service):
    job = inprocess_service.submit("text-to-image", CASES["text-to-image"][0], headers={"Prefer": "wait=60"}).json()
    assert job["status"] == "succeeded"
    url, steps = job["urls"]["events"], job["progress"]["total"]
    everything = _events(inprocess_service.client, url, {})
    assert everything == [("started", "started"), (f"progress-{steps}", "progress"), ("finished", "finished")]
    assert _events(inprocess_service.client, url, {"Last-Event-ID": "started"}) == everything[1:]
    assert _events(inprocess_service.client, url, {"Last-Event-ID": f"progress-{steps}"}) == [("finished", "finished")]
    assert _events(inprocess_service.client, url, {"Last-Event-ID": "finished"}) == []
    assert _events(inprocess_service.client, url, {"Last-Event-ID": "garbage"}) == everything  # unknown id: from the beginning


def test_num_outputs_makes_a_batch_of_seeds(inprocess_service):
    payload = {**CASES["text-to-image"][0], "seed": 7, "num_outputs": 2}
    answer = inprocess_service.submit("text-to-image", payload)
    assert answer.status_code == 202, answer.text
    batch = answer.json()
    assert answer.headers["location"] == batch["urls"]["self"] and len(batch["jobs"]) == 2
    jobs = [inprocess_service.wait_job(job["id"]) for job in batch["jobs"]]
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded"]
    assert [job["input"]["seed"] for job in jobs] == [7, 8]
    pixels = [np.asarray(Image.open(io.BytesIO(inprocess_service.client.get(job["outputs"][0]["url"]).content)), dtype=np.int16)
              for job in jobs]
    assert np.abs(pixels[0] - pixels[1]).mean() > 5  # different seeds, different images
    alone = inprocess_service.submit("text-to-image", {**CASES["text-to-image"][0], "seed": 8},
                                  headers={"Prefer": "wait=60"}).json()
    again = np.asarray(Image.open(io.BytesIO(inprocess_service.client.get(alone["outputs"][0]["url"]).content)), dtype=np.int16)
    assert np.abs(again - pixels[1]).max() <= 2  # the second is seed 8 (alone or batched: rounding apart)
    too_many = inprocess_service.submit("text-to-image", {**payload, "num_outputs": 5})
    assert too_many.status_code == 422 and "num_outputs" in too_many.text
