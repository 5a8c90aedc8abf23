"""The queued plan (core/plan.py): the gateway's FramePlan with images by digest, run by the worker as is.

Every task's plan survives the trip through the queue (JSON, as RQ carries it) unchanged; the queued
payload does not grow with the input images; the worker's Executor runs a queued plan, a raw request
queued by an earlier release, and says clearly why it cannot run a plan whose images are gone or whose
version it does not know. A plan too long to queue by value (a long prompt) is stored by digest and read
back as it was."""

from __future__ import annotations

import base64
import hashlib
import io
import json

import pytest
from PIL import Image

from core.plan import (PLAN_VERSION, STORED, _STORED_PLANS, PlanVersionError, QueuedPlan, StoredPlanUnreadable,
                       is_queued_plan, is_stored_plan, resolve_payload)
from benchmarks.redis_footprint import long_prompt
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


# ---- a long plan is stored, the job carries its digest -----------------------------------------------------
LONG_PROMPT = long_prompt(1900)  # varied words, compressing as a real caption does


def test_a_short_plan_is_queued_by_value_with_no_store_round_trip(tmp_path):
    store = LocalStore(tmp_path)
    _, _, queued_plan = queued("text-to-image", {"prompt": "a lighthouse on a cliff at sunset, oil painting"}, store)
    calls = []
    payload = queued_plan.queued_payload(lambda data: calls.append(data) or "0" * 64)
    assert payload == queued_plan.payload() and not calls and not is_stored_plan(payload)


def test_a_long_plan_is_stored_and_read_back_as_it_was(tmp_path):
    store = LocalStore(tmp_path)
    request, plan, queued_plan = queued("text-to-image", {"prompt": LONG_PROMPT, "width": 64, "height": 64}, store)
    payload = json.loads(json.dumps(queued_plan.queued_payload(store.save_input)))  # what RQ carries
    assert is_queued_plan(payload) and is_stored_plan(payload)
    assert set(payload) == {"plan_version", STORED} and len(json.dumps(payload)) < 120
    blob = store.load_input(payload[STORED])
    assert hashlib.sha256(blob).hexdigest() == payload[STORED] and LONG_PROMPT in blob.decode()
    _STORED_PLANS.clear()  # as a worker that did not queue it: read from the store
    resolved = resolve_payload(payload, store.load_input)
    assert resolved == queued_plan.payload() and resolved["input"] == input_echo(request)
    assert QueuedPlan.from_payload(resolved).frame_plan(store.load_input) == plan
    assert resolve_payload(queued_plan.payload(), lambda digest: pytest.fail("read")) == queued_plan.payload()


def test_the_stored_plans_size_in_the_queue_does_not_depend_on_the_prompt(tmp_path):
    store = LocalStore(tmp_path)
    sizes = set()
    for words in (80, 300):
        prompt = " ".join(f"word{i}" for i in range(words))
        _, _, queued_plan = queued("text-to-image", {"prompt": prompt}, store)
        sizes.add(len(json.dumps(queued_plan.queued_payload(store.save_input))))
    assert len(sizes) == 1


def test_a_stored_plan_that_is_not_its_digest_is_refused(tmp_path):
    store = LocalStore(tmp_path)
    _, _, queued_plan = queued("text-to-image", {"prompt": LONG_PROMPT}, store)
    payload = queued_plan.queued_payload(store.save_input)
    _STORED_PLANS.clear()
    with pytest.raises(StoredPlanUnreadable, match="does not hash to its digest"):
        resolve_payload(payload, lambda digest: b"{}")
    with pytest.raises(FileNotFoundError):
        resolve_payload(payload, LocalStore(tmp_path / "other").load_input)


def test_executor_runs_a_stored_plan_and_says_why_when_it_is_gone(executor, tmp_path):
    request, plan, queued_plan = queued("text-to-image", {"prompt": LONG_PROMPT, "width": 64, "height": 64,
                                                          "num_inference_steps": 2}, executor.store)
    payload = json.loads(json.dumps(queued_plan.queued_payload(executor.store.save_input)))
    _STORED_PLANS.clear()
    item = WorkItem("job-stored", "text-to-image", payload)
    (outcome,) = executor.run([item])
    assert outcome.error is None, outcome.error
    image = Image.open(io.BytesIO(executor.store.path("job-stored", "image.png").read_bytes()))
    assert json.loads(image.text["parameters"]) == {"task": "text-to-image", "input": input_echo(request)}

    other = LocalStore(tmp_path)  # stored elsewhere (or expired): this worker's store has not got it
    _, _, elsewhere = queued("text-to-image", {"prompt": LONG_PROMPT + " again", "width": 64, "height": 64}, other)
    gone_payload = elsewhere.queued_payload(other.save_input)
    _STORED_PLANS.clear()
    (gone,) = executor.run([WorkItem("job-gone", "text-to-image", gone_payload)])
    assert gone.error["type"] == "input_unavailable"
    assert gone_payload[STORED] in gone.error["message"] and "submit the job again" in gone.error["message"]
