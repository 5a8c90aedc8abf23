"""The Python client (clients/python) against the real service: its methods match the OpenAPI
document, every task runs through its typed method, cancel, batches with verified webhooks, a 429
retried after Retry-After, errors as typed exceptions, and the asyncio client."""

from __future__ import annotations

import asyncio
import base64
import functools
import inspect
import io
import logging
import re
import threading
import time
import typing
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
from PIL import Image

import onediffusion_client as od
from onediffusion_client import codegen
from tests.cases import CASES
from tests.conftest import make_image
from tests.service.harness import local_address, wait_until

CLIENT_OPTIONS = ["wait", "timeout", "on_progress", "idempotency_key"]


@pytest.fixture(scope="module")
def client(shared_service):
    with od.Client(shared_service.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def openapi(shared_service) -> dict:
    return shared_service.client.get("/openapi.json").json()


# ---- the methods are the API's ------------------------------------------------------------------


def test_generated_methods_are_up_to_date(openapi):
    assert codegen.render(openapi) == codegen.TARGET.read_text(), (
        "clients/python/onediffusion_client/tasks.py is stale: run `make client-codegen`"
    )


@pytest.mark.parametrize("cls", [od.Client, od.AsyncClient])
def test_each_task_method_has_the_schema_fields_and_defaults(openapi, cls):
    tasks = codegen.task_schemas(openapi)
    assert set(od.TASKS) == set(tasks)
    for task, (_, schema) in tasks.items():
        method = getattr(cls, task.replace("-", "_"))
        assert inspect.iscoroutinefunction(method) == (cls is od.AsyncClient)
        params = dict(list(inspect.signature(method).parameters.items())[1:])
        assert list(params)[-4:] == CLIENT_OPTIONS
        fields = {k: v for k, v in params.items() if k not in CLIENT_OPTIONS}
        assert set(fields) == set(schema["properties"]), task
        hints = typing.get_type_hints(method, {**vars(od.tasks), "Job": od.Job, "AsyncJob": od.AsyncJob,
                                               "Batch": od.Batch, "AsyncBatch": od.AsyncBatch})
        batch = od.AsyncBatch if cls is od.AsyncClient else od.Batch
        assert (batch in typing.get_args(hints["return"])) == ("num_outputs" in schema["properties"]), task
        for name, prop in schema["properties"].items():
            param = fields[name]
            if name in schema.get("required", []):
                assert param.default is inspect.Parameter.empty, (task, name)
                assert param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, (task, name)
            else:
                assert param.default == prop.get("default"), (task, name)
                assert param.kind is inspect.Parameter.KEYWORD_ONLY, (task, name)
            enum = prop.get("enum")
            if enum:
                assert typing.get_args(hints[name]) == tuple(enum), (task, name)
            kind = prop.get("type") or next((o.get("type") for o in prop.get("anyOf", []) if o.get("type") != "null"), None)
            if kind in ("integer", "number", "boolean") and not enum:
                expected = {"integer": int, "number": float, "boolean": bool}[kind]
                assert expected in (typing.get_args(hints[name]) or (hints[name],)), (task, name, hints[name])


# ---- every task through its typed method ----------------------------------------------------------


def _as_inputs(task: str, payload: dict, tmp_path) -> dict:
    """The suite's payload with its base64 images turned into the client's inputs: bytes, paths, PIL images."""
    fields = dict(payload)
    raw = {k: base64.b64decode(v) for k, v in fields.items() if k in ("image", "mask")}
    fields.update(raw)
    if "images" in fields:
        decoded = [base64.b64decode(v) for v in fields["images"]]
        path = tmp_path / f"{task}-0.png"
        path.write_bytes(decoded[0])
        fields["images"] = [path, Image.open(io.BytesIO(decoded[1])), *decoded[2:]]
    if "frames" in fields:
        fields["frames"] = [od.Frame(generate=f["generate"], image=base64.b64decode(f["image"]) if f.get("image") else None)
                            for f in fields["frames"]]
    if "classes" in fields:
        fields["classes"] = [c["name"] for c in fields["classes"]]  # plain names are accepted
    return fields


def test_every_task_through_its_method(client, tmp_path):
    jobs = {}
    for task, (payload, _) in CASES.items():
        method = getattr(client, task.replace("-", "_"))
        jobs[task] = method(**_as_inputs(task, payload, tmp_path), wait=False)
        assert jobs[task].status in ("queued", "running") and jobs[task].task == task
    for task, job in jobs.items():
        job.wait(timeout=180)
        expected = CASES[task][1]
        assert job.status == "succeeded" and {o.name for o in job.outputs} == set(expected), (task, job.raw)
        assert job.progress == od.Progress(2, 2, 1.0)
        for output in job.outputs:
            image = job.image(output)
            assert image.size == (output.width, output.height) and image.mode == expected[output.name][1], (task, output)
    assert jobs["depth-estimation"].depth == od.DepthInfo("16-bit PNG, 65535 = nearest", "depth.png")
    assert [s.name for s in jobs["segmentation"].segments] == ["a", "b"]
    for segment in jobs["segmentation"].segments:
        mask = jobs["segmentation"].image(segment.mask)
        assert sum(1 for v in mask.tobytes() if v) == segment.pixels
    (detection,) = jobs["detection"].detections
    assert detection.name == "bird" and all(isinstance(b, od.Box) and b.x1 >= b.x0 for b in detection.boxes)
    cameras = jobs["camera-pose-estimation"].cameras
    assert [c.view for c in cameras] == [0, 1, 2] and all(len(c.c2w) == 4 for c in cameras)
    assert isinstance(cameras[0].intrinsics, od.Intrinsics) and len(cameras[1].position) == 3


def test_run_waits_with_progress_and_downloads(client, tmp_path):
    seen = []
    job = client.text_to_image("a lighthouse", width=64, height=64, num_inference_steps=5, seed=7, timeout=120,
                               on_progress=seen.append)
    assert job.status == "succeeded"
    paths = job.download(tmp_path / "out")
    assert [p.name for p in paths] == ["image.png"] and Image.open(paths[0]).size == (64, 64)
    assert job.read() == paths[0].read_bytes()
    # same seed, same image
    again = client.run("text-to-image", prompt="a lighthouse", width=64, height=64, num_inference_steps=5, seed=7)
    assert again.id != job.id and again.read() == job.read()
    assert all(isinstance(p, od.Progress) for p in seen)


def test_num_outputs_answers_a_batch(client, shared_service, tmp_path):
    """num_outputs > 1: the server answers a batch of jobs seeded seed, seed+1, ...; the client hands back
    a Batch whose download keeps every image (their outputs share a name)."""
    batch = client.text_to_image("twins", width=64, height=64, num_inference_steps=2, seed=40, num_outputs=2, timeout=120)
    assert isinstance(batch, od.Batch) and batch.status == "completed" and len(batch.jobs) == 2
    assert all(job.status == "succeeded" for job in batch.jobs)
    paths = batch.download(tmp_path / "twins")
    assert [p.name for p in paths] == ["0-image.png", "1-image.png"]
    assert paths[0].read_bytes() != paths[1].read_bytes()  # seeds 40 and 41
    single = client.text_to_image("twins", width=64, height=64, num_inference_steps=2, seed=41)
    # the same image as seed 41 alone, up to the rounding of a batched matmul
    difference = np.abs(np.asarray(single.image(), np.int16) - np.asarray(Image.open(paths[1]), np.int16))
    assert difference.max() <= 3

    async def queued():
        async with od.AsyncClient(shared_service.url) as aclient:
            handle = await aclient.text_to_image("twins", width=64, height=64, num_inference_steps=100,
                                                 num_outputs=3, wait=False)
            await handle.cancel()
            return handle, await handle.wait(timeout=60)

    handle, ended = asyncio.run(queued())
    assert isinstance(handle, od.AsyncBatch) and len(ended.jobs) == 3
    assert all(job.status in ("canceled", "succeeded") for job in ended.jobs)


def test_submit_events_and_cancel(client):
    job = client.text_to_image("long", width=256, height=256, num_inference_steps=200, wait=False)
    started = time.monotonic()
    with pytest.raises(od.WaitTimeout):
        job.wait(timeout=1)
    assert time.monotonic() - started < 5
    kinds = []
    for event in job.events(timeout=120):
        kinds.append(event.type)
        if event.type == "progress" and job.status != "canceled":
            job.cancel()  # once: a second cancel is a Conflict (the job has ended)
    assert kinds[-1] == "finished" and "progress" in kinds and job.status == "canceled"
    with pytest.raises(od.JobCanceled) as caught:
        job.wait()
    assert caught.value.type == "canceled" and job.progress.step < 200
    with pytest.raises(od.Conflict):
        client.text_to_image("x", width=64, height=64, num_inference_steps=1).cancel()


def test_job_priority_queue_position_and_eta(client):
    job = client.text_to_image("prio", width=64, height=64, num_inference_steps=1, priority=3, wait=False)
    assert job.priority == 3 and job.raw["priority"] == 3
    assert job.queue_position == job.raw["queue_position"] and job.eta_s == job.raw["eta_s"]
    assert job.status != "queued" or job.queue_position is not None
    job.wait(timeout=120)
    assert job.status == "succeeded" and job.priority == 3 and job.queue_position is None
    with pytest.raises(od.InvalidRequest) as caught:
        client.text_to_image("x", width=64, height=64, num_inference_steps=1, priority=10)
    assert [f.field for f in caught.value.fields] == ["priority"]


def test_api_errors_are_typed(client):
    with pytest.raises(od.InvalidRequest) as caught:
        client.text_to_image("x", width=100, height=64, num_inference_steps=1)
    error = caught.value
    assert error.status == 422 and error.type == "invalid_request"
    assert [f.field for f in error.fields] == ["width"] and "multiple of 16" in error.fields[0].message
    with pytest.raises(od.NotFound):
        client.job("no-such-job")
    with pytest.raises(FileNotFoundError, match="not a file"):
        client.depth_estimation("/nonexistent/photo.png")


def test_list_jobs(client, openapi):
    if "get" in openapi["paths"].get("/v1/jobs", {}):
        job = client.text_to_image("listed", width=64, height=64, num_inference_steps=1)
        assert job.id in {j.id for j in client.list_jobs()}
    else:
        with pytest.raises(od.NotSupported, match="cannot list jobs"):
            client.list_jobs()


def test_progress_is_reported_for_a_job_that_ends_within_the_wait(client):
    """`on_progress` sees the steps of a job short enough to end within Prefer: wait (it used to see none)."""
    seen = []
    job = client.text_to_image("quick", width=64, height=64, num_inference_steps=6, seed=3, on_progress=seen.append)
    assert job.status == "succeeded" and seen, "on_progress was never called"
    assert seen[-1].step == seen[-1].total == 6 and all(isinstance(p, od.Progress) for p in seen)

    async def run_async():
        steps = []
        async with od.AsyncClient(client.base_url) as aclient:
            await aclient.text_to_image("quick", width=64, height=64, num_inference_steps=4, on_progress=steps.append)
        return steps

    steps = asyncio.run(run_async())
    assert steps and steps[-1].step == 4


def test_paging_batches_and_batch_idempotency(client, shared_service):
    """list_jobs / list_batches page with cursors, iter_* follow them; submit_batch sends an Idempotency-Key."""
    tag = f"paged-{time.time_ns()}"
    jobs = [client.text_to_image(tag, width=64, height=64, num_inference_steps=1, wait=False) for _ in range(3)]
    first = client.list_jobs(task="text-to-image", limit=2)
    assert isinstance(first, od.Page) and len(first) == 2 and first.next_cursor
    second = client.list_jobs(task="text-to-image", limit=2, cursor=first.next_cursor)
    assert {j.id for j in first}.isdisjoint({j.id for j in second})
    everything = [j.id for j in client.iter_jobs(task="text-to-image", page_size=2)]
    assert {j.id for j in jobs} <= set(everything) and len(everything) == len(set(everything))

    items = [("text-to-image", {"prompt": tag, "width": 64, "height": 64, "num_inference_steps": 1})]
    batch = client.submit_batch(items, idempotency_key=tag)
    again = client.submit_batch(items, idempotency_key=tag)  # a retry: the same batch, not a second one
    assert again.id == batch.id
    other = client.submit_batch(items)  # a fresh key each call without one
    assert other.id != batch.id
    listed = client.list_batches(limit=1)
    assert isinstance(listed, od.Page) and [b.id for b in listed] == [other.id] and listed.next_cursor
    assert {batch.id, other.id} <= {b.id for b in client.iter_batches(page_size=1)}
    assert all(isinstance(b, od.Batch) for b in listed)


# ---- batches and webhooks -------------------------------------------------------------------------


def test_batch_with_verified_webhooks(client, receiver):
    receiver.up()
    secret = "whsec_" + base64.b64encode(b"batch webhook secret").decode()
    batch = client.submit_batch(
        [("text-to-image", {"prompt": "one", "width": 64, "height": 64, "num_inference_steps": 1}),
         {"task": "depth-estimation", "image": make_image(64, 64), "width": 64, "height": 64, "num_inference_steps": 1}],
        webhook=od.Webhook(receiver.url, secret),
    )
    assert len(batch.jobs) == 2 and batch.status == "running"
    batch.wait(timeout=120)
    assert batch.status == "completed" and batch.counts.get("succeeded") == 2
    assert [j.task for j in batch.jobs] == ["text-to-image", "depth-estimation"]
    assert batch.jobs[1].depth is not None
    wait_until(lambda: "batch.completed" in receiver.events() and len(receiver.calls) >= 3, 60, what="webhooks")
    for call in receiver.calls:
        body = od.verify_webhook(call["headers"], call["body"], secret)
        assert body["event"] in ("batch.item.succeeded", "batch.completed")
        with pytest.raises(od.WebhookVerificationError):
            od.verify_webhook(call["headers"], call["body"] + b" ", secret)
        with pytest.raises(od.WebhookVerificationError):
            od.verify_webhook(call["headers"], call["body"], "whsec_" + base64.b64encode(b"another").decode())


def test_job_webhook_verified(client, receiver):
    receiver.up()
    secret = "plain-secret-for-a-job"
    job = client.text_to_image("hook", width=64, height=64, num_inference_steps=1, webhook={"url": receiver.url, "secret": secret})
    wait_until(lambda: receiver.calls, 60, what="the job's webhook")
    body = od.verify_webhook(receiver.calls[0]["headers"], receiver.calls[0]["body"], secret)
    assert body["event"] == "job.succeeded" and body["job"]["id"] == job.id


# ---- 429: retried after Retry-After, with one idempotency key ----------------------------------------


class RetryAfterCapped(httpx.HTTPTransport):
    """The API's answers, with Retry-After capped at `cap` s on their way to the client (the client's wait is
    what is checked, not its length); `sent` keeps the values the API sent."""

    def __init__(self, cap: int):
        super().__init__()
        self.cap, self.sent = cap, []

    def handle_request(self, request):
        response = super().handle_request(request)
        if "retry-after" in response.headers:
            self.sent.append(response.headers["retry-after"])
            response.headers["retry-after"] = str(min(self.cap, int(response.headers["retry-after"])))
        return response


def test_429_is_retried_after_retry_after(make_service, caplog):
    """A tenant limit of one active job and no worker: the second submission gets 429 (Retry-After 10, which
    reaches the client as 3); the first job is canceled meanwhile, and the client's retry is accepted as one job."""
    service = make_service(workers=0, deliverer=False, max_active_jobs_per_tenant=1)
    transport = RetryAfterCapped(3)
    with od.Client(service.url, http=httpx.Client(base_url=service.url, timeout=90, transport=transport)) as client:
        blocker = client.text_to_image("blocker", width=64, height=64, num_inference_steps=1, wait=False)
        threading.Timer(2.0, blocker.cancel).start()
        caplog.set_level(logging.WARNING, logger="onediffusion_client")
        started = time.monotonic()
        job = client.text_to_image("second", width=64, height=64, num_inference_steps=1, wait=False, idempotency_key="k-429")
        waited = time.monotonic() - started
        retries = [re.search(r"answered 429; retry 1 in ([\d.]+) s", r.getMessage()) for r in caplog.records]
        (asked,) = [float(m.group(1)) for m in retries if m]
        assert job.status == "queued" and asked >= 1 and waited >= asked
        assert transport.sent[0] == "10"  # what the API asked for a tenant at its limit
        again = client.text_to_image("second", width=64, height=64, num_inference_steps=1, wait=False, idempotency_key="k-429")
        assert again.id == job.id
        limited = od.Client(service.url, max_retries=0)
        with pytest.raises(od.RateLimited) as caught:
            limited.text_to_image("third", width=64, height=64, num_inference_steps=1, wait=False)
        assert caught.value.type == "quota_exceeded" and caught.value.retry_after == float(caught.value.headers["retry-after"])
        limited.close()
        job.cancel()


# ---- asyncio -------------------------------------------------------------------------------------------


@pytest.fixture
def image_server(tmp_path):
    """A plain HTTP server for an image given by URL."""
    (tmp_path / "photo.png").write_bytes(make_image(96, 64, seed=3))
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    address = local_address()  # a loopback address the harness names in IMAGE_URL_ALLOWLIST
    server = ThreadingHTTPServer((address, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{address}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_async_client(shared_service, image_server):
    async def main():
        async with od.AsyncClient(shared_service.url) as client:
            depth, edges = await asyncio.gather(
                client.depth_estimation(f"{image_server}/photo.png", width=64, height=64, num_inference_steps=2),
                client.edge_estimation(f"{image_server}/photo.png", edge_type="hed", width=64, height=64, num_inference_steps=2),
            )
            preview = await depth.image("depth_preview.png")
            job = await client.text_to_image("x", width=64, height=64, num_inference_steps=100, wait=False)
            await job.cancel()
            with pytest.raises(od.JobCanceled):
                await job.wait(timeout=60)
            with pytest.raises(od.InvalidRequest):
                await client.text_to_multiview("x", cameras=[od.Camera(azimuth=0, elevation=120)], num_inference_steps=1)
            return depth, edges, preview

    depth, edges, preview = asyncio.run(main())
    assert depth.status == edges.status == "succeeded"
    assert preview.size == (64, 64) and [o.name for o in edges.outputs] == ["edges.png"]
