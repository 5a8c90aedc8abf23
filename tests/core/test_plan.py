"""The queued plan (core/plan.py): the gateway's FramePlan with images by digest, run by the worker as is.

Every task's plan survives the trip through the queue (JSON, as RQ carries it) unchanged; the queued
payload does not grow with the input images; the worker's Executor runs a queued plan, a raw request
queued by an earlier release, and says clearly why it cannot run a plan whose images are gone or whose
version it does not know."""

from __future__ import annotations

import base64
import hashlib
import io
import json

import pytest
from PIL import Image

from core.plan import PLAN_VERSION, PlanVersionError, QueuedPlan, is_queued_plan
from core.provenance import input_echo
from core.settings import Settings
from core.storage import LocalStore
from model.tasks import TASKS
from tests.cases import CASES
from tests.conftest import make_image
from worker.execution import Executor, WorkItem


def queued(task: str, payload: dict, store: LocalStore) -> tuple:
    request = TASKS[task].model_validate({"seed": 11, **payload})
    plan = request.plan()
    return request, plan, QueuedPlan.of(plan, store.save_input, input_echo(request))


@pytest.mark.parametrize("task", sorted(CASES))
def test_every_task_plan_survives_the_queue(tmp_path, task):
    store = LocalStore(tmp_path)
    _, plan, queued_plan = queued(task, CASES[task][0], store)
    carried = json.loads(json.dumps(queued_plan.payload()))  # what a worker gets back
    assert is_queued_plan(carried) and carried["plan_version"] == PLAN_VERSION
    assert queued_plan.images == [hashlib.sha256(data).hexdigest() for data in plan.images]
    rebuilt = QueuedPlan.from_payload(carried).frame_plan(store.load_input)
    assert rebuilt == plan  # frames, sizes, prompts, seed, steps, guidance, cameras, classes, images' bytes
    assert queued_plan.bucket == plan.bucket


def test_queued_payload_does_not_grow_with_the_input(tmp_path):
    store = LocalStore(tmp_path)
    sizes = {}
    for side in (32, 1024):
        png = make_image(side, side)
        _, _, queued_plan = queued("depth-estimation", {"image": base64.b64encode(png).decode(), "width": 64,
                                                         "height": 64}, store)
        text = json.dumps(queued_plan.payload())
        assert base64.b64encode(png).decode()[:200] not in text
        assert store.load_input(queued_plan.images[0]) == png  # the bytes live in the store, once
        sizes[side] = len(text)
    assert abs(sizes[1024] - sizes[32]) < 16  # the echo's byte count and size digits only
    assert sizes[1024] < 1500


def test_raw_requests_are_not_plans_and_unknown_versions_are_refused():
    assert not is_queued_plan({"prompt": "a cat", "seed": 1})
    with pytest.raises(PlanVersionError, match="plan version 2 .* this worker runs version 1"):
        QueuedPlan.from_payload({"plan_version": 2, "task": "text-to-image"})


@pytest.fixture(scope="module")
def executor(demo_model, tmp_path_factory):
    settings = Settings(results_dir=str(tmp_path_factory.mktemp("results")))
    return Executor(demo_model, LocalStore(settings.results_dir), settings)


def test_executor_runs_a_queued_plan_without_the_request(executor):
    payload = {"image": base64.b64encode(make_image(96, 64)).decode(), "width": 64, "height": 64,
               "num_inference_steps": 2, "prompt": "a small house"}
    request, plan, queued_plan = queued("depth-estimation", payload, executor.store)
    item = WorkItem("job-plan", "depth-estimation", json.loads(json.dumps(queued_plan.payload())))
    assert executor.plan(item) == plan
    (outcome,) = executor.run([item])
    assert outcome.error is None, outcome.error
    assert {o["name"] for o in outcome.result["outputs"]} == {"depth.png", "depth_preview.png"}
    # provenance: the PNG says what was asked, images by their summary (from the plan: no request at hand)
    preview = Image.open(io.BytesIO(executor.store.path("job-plan", "depth_preview.png").read_bytes()))
    written = json.loads(preview.text["parameters"])
    assert written == {"task": "depth-estimation", "input": input_echo(request)}
    assert written["input"]["image"]["sha256"] == hashlib.sha256(make_image(96, 64)).hexdigest()


def test_executor_still_runs_a_raw_request_queued_by_an_earlier_release(executor):
    raw = {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 3}
    (outcome,) = executor.run([WorkItem("job-legacy", "text-to-image", raw)])
    assert outcome.error is None and outcome.result["outputs"][0]["name"] == "image.png"
    image = Image.open(io.BytesIO(executor.store.path("job-legacy", "image.png").read_bytes()))
    assert json.loads(image.text["parameters"])["input"]["prompt"] == "a cat"


def test_executor_says_why_a_plan_cannot_run(executor, tmp_path):
    other = LocalStore(tmp_path)  # the blob is stored elsewhere: this worker's store has not got it
    _, _, queued_plan = queued("deblurring", {"image": base64.b64encode(make_image(90, 60, seed=5)).decode(),
                                              "width": 64, "height": 64, "num_inference_steps": 2}, other)
    good = WorkItem("job-ok", "text-to-image",
                    queued("text-to-image", {"prompt": "x", "width": 64, "height": 64, "num_inference_steps": 2},
                           executor.store)[2].payload())
    missing = WorkItem("job-missing", "deblurring", queued_plan.payload())
    newer = WorkItem("job-newer", "text-to-image", {**good.payload, "plan_version": 2})
    ok, gone, refused = executor.run([good, missing, newer])
    assert ok.error is None
    assert gone.error["type"] == "input_unavailable"
    assert queued_plan.images[0] in gone.error["message"] and "submit the job again" in gone.error["message"]
    assert refused.error["type"] == "invalid_request" and "plan version 2" in refused.error["message"]
