"""What a job is queued as and what it leaves in Redis, through the real API, Redis, worker and deliverer.

The gateway queues its plan with the input image by digest (the bytes go to the result store once); the
worker runs that plan; the job's records stay a few KB whatever the input's size (a long prompt's plan is
stored too, the job carrying its digest); a job queued by the previous release (its raw request as the
argument) still runs after an upgrade."""

from __future__ import annotations

import base64
import hashlib
import io
import json

import httpx
from PIL import Image
from rq import Queue
from rq.job import Callback, Job
from rq.results import Result

from benchmarks.redis_footprint import long_prompt, noise_png
from core.job_store import JOB_FUNC, ON_FAILURE, new_id, now_iso
from core.plan import STORED, is_queued_plan, is_stored_plan
from core.provenance import input_echo
from core.storage import LocalStore
from model.tasks import TASKS
from tests.service.harness import wait_until

SMALL = {"width": 64, "height": 64, "num_inference_steps": 2, "seed": 4}


def test_an_image_job_is_queued_as_a_plan_and_leaves_a_small_record(shared_service, receiver):
    receiver.up()
    png = noise_png(1.0)  # incompressible: a 1 MB PNG
    digest = hashlib.sha256(png).hexdigest()
    response = shared_service.submit("depth-estimation", {"image": base64.b64encode(png).decode(), **SMALL,
                                                          "webhook": {"url": receiver.url}})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    redis = shared_service.redis()
    record = Job.fetch(job_id, connection=redis)
    task, plan = record.args
    assert task == "depth-estimation" and is_queued_plan(plan)
    assert plan["images"] == [digest] and plan["width"] == 64 and plan["seed"] == 4
    assert len(record.data) < 2000  # the argument RQ stores: the plan, compressed, without the image
    assert LocalStore(shared_service.tmp / "results").load_input(digest) == png

    done = shared_service.wait_job(job_id)
    assert done["status"] == "succeeded", done
    assert done["input"]["image"]["sha256"] == digest and done["input"]["image"]["bytes"] == len(png)
    preview = next(o for o in done["outputs"] if o["name"] == "depth_preview.png")
    written = Image.open(io.BytesIO(httpx.get(preview["url"]).content)).text["parameters"]
    assert json.loads(written) == {"task": "depth-estimation", "input": done["input"]}

    wait_until(lambda: "job.succeeded" in receiver.events(), 60, what="the job.succeeded webhook")
    def delivery_records() -> list:  # this job's delivery records (other tests' failed deliveries stay)
        return [key for key in redis.scan_iter("rq:job:wh-*") if job_id.encode() in (redis.hget(key, "description") or b"")]

    wait_until(lambda: not delivery_records(), 30, what="the delivered webhook's record to go")
    assert not redis.exists(Result.get_key(job_id))  # the outcome is in the job's record
    assert redis.memory_usage(Job.key_for(job_id), samples=0) < 8192
    again = shared_service.job(job_id)
    assert [o["name"] for o in again["outputs"]] == [o["name"] for o in done["outputs"]] and again["input"] == done["input"]


def test_a_long_prompts_plan_is_stored_and_the_job_stays_under_4_kb(shared_service, receiver):
    """A 2,000-character prompt with a webhook: the plan is a blob of the result store, the job carries its
    digest; the client sees its input as sent, the PNG says what was asked; the job's own Redis records
    (the RQ job, progress, usage marker, delivery log) stay under 3.5 KB, under 4 KB with its share of the
    listing and registries (benchmarks/RESULTS.md)."""
    receiver.up()
    prompt = long_prompt()
    response = shared_service.submit("text-to-image", {"prompt": prompt, **SMALL, "webhook": {"url": receiver.url}})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.json()["input"]["prompt"] == prompt
    redis = shared_service.redis()
    record = Job.fetch(job_id, connection=redis)
    task, queued = record.args
    assert task == "text-to-image" and is_stored_plan(queued) and set(queued) == {"plan_version", STORED}
    stored = json.loads(LocalStore(shared_service.tmp / "results").load_input(queued[STORED]))
    assert stored["input"]["prompt"] == prompt and stored["seed"] == SMALL["seed"]
    assert len(record.data) < 300

    done = shared_service.wait_job(job_id)
    assert done["status"] == "succeeded", done
    assert done["input"] == stored["input"]
    image = httpx.get(done["outputs"][0]["url"]).content
    written = json.loads(Image.open(io.BytesIO(image)).text["parameters"])
    assert written == {"task": "text-to-image", "input": done["input"]}
    def deliveries() -> list:
        return shared_service.client.get(f"/v1/jobs/{job_id}/deliveries").json()["data"]

    wait_until(lambda: [d["status"] for d in deliveries()] == ["delivered"], 60, what="the job.succeeded webhook")
    (delivery,) = deliveries()
    assert delivery["event"] == "job.succeeded" and delivery["attempts"] == 1 and delivery["last_status_code"] == 200
    sent = [c["json"] for c in receiver.calls if c["headers"].get("webhook-id") == delivery["id"]]
    assert sent and sent[0]["job"]["input"] == done["input"]
    prefix = shared_service.prefix
    own = [Job.key_for(job_id), f"{prefix}:progress:{job_id}", f"{prefix}:usage-counted:{job_id}",
           f"{prefix}:delivery:{delivery['id']}", f"{prefix}:deliveries:job:{job_id}"]
    sizes = {key: redis.memory_usage(key, samples=0) for key in own}
    assert all(sizes.values()) and sum(sizes.values()) < 3584, sizes


def test_a_job_queued_by_the_previous_release_still_runs(shared_service):
    """The previous release queued the request itself (images inline) and kept its echo in the meta."""
    raw = {"prompt": "an old job", "image": base64.b64encode(noise_png(0.05)).decode(), **SMALL}
    request = TASKS["depth-to-image"].model_validate(raw)
    job_id = new_id()
    queue = Queue(shared_service.prefix, connection=shared_service.redis())
    queue.enqueue_many([Queue.prepare_data(
        JOB_FUNC, args=("depth-to-image", request.model_dump(mode="json", exclude={"webhook", "output_format", "task"})),
        job_id=job_id, result_ttl=600, failure_ttl=600, ttl=600, timeout=600, on_failure=Callback(ON_FAILURE),
        meta={"task": "depth-to-image", "bucket": request.plan().bucket, "created_at": now_iso(),
              "input": input_echo(request), "tenant": "public", "webhook": None, "output_format": "png"},
    )])
    done = shared_service.wait_job(job_id)
    assert done["status"] == "succeeded", done
    assert [o["name"] for o in done["outputs"]] == ["image.png"]
    assert done["input"] == input_echo(request)
