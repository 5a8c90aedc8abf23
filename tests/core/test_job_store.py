"""The job store (core/job_store.py, what workers hold) renders jobs and batches as clients see them
(core/views.py), in the API's answers and in webhook bodies alike.

Jobs are real RQ records in a real Redis, left in each state the way the gateway and the workers leave
them (RQ's own status and result records)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from redis import Redis
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.results import Result

from app.jobs import JobService
from app.schemas import WebhookSpec
from core.job_store import JobStore, on_rq_failure
from core.settings import Settings
from model.tasks import TextToImage

SMALL = {"prompt": "a small test", "width": 64, "height": 64, "num_inference_steps": 2}
OUTPUTS = [
    {"name": "image.png", "kind": "image", "media_type": "image/png", "width": 64, "height": 64},
    {"name": "depth.png", "kind": "depth16", "media_type": "image/png", "width": 64, "height": 64},
]


@pytest.fixture
def service(redis_url) -> JobService:
    settings = Settings(redis_url=redis_url, queue_prefix="odstore" + uuid.uuid4().hex[:8], rate_limit_per_minute=0,
                        public_url="http://api.test", webhook_allowlist="127.0.0.1")
    return JobService(Redis.from_url(redis_url), settings)


def submit(service: JobService, **options) -> str:
    return service.submit_once("text-to-image", TextToImage(**SMALL), "tenant-a", "key-a", **options)[0].id


def succeed(service: JobService, job_id: str, result: dict) -> None:
    """What a worker leaves for a job that succeeded: its times, RQ's result record and status."""
    job = service.fetch(job_id)
    job.started_at = datetime.now(timezone.utc) - timedelta(seconds=2)
    job.ended_at = datetime.now(timezone.utc)
    job.save()
    Result.create(job, Result.Type.SUCCESSFUL, ttl=600, return_value=result)
    job.set_status(JobStatus.FINISHED)


def as_json(store: JobStore, job_id: str) -> dict:
    return store.view(job_id).model_dump(mode="json")


def unsigned(view: dict) -> dict:
    """A view with its outputs' signed URLs cut at the query: their expiry counts from the moment of the view,
    so two views a second apart differ there and nowhere else."""
    outputs = [{**o, "signed_url": (o.get("signed_url") or "").split("?")[0]} for o in view.get("outputs") or []]
    return {**view, "outputs": outputs}


def test_queued_job_with_progress(service):
    job_id = submit(service)
    service.record_progress([job_id], 1, 2)
    rendered = as_json(service, job_id)
    assert rendered["status"] == "queued" and rendered["progress"] == {"step": 1, "total": 2, "fraction": 0.5}
    assert rendered["queue_position"] == 0


@pytest.mark.parametrize("output_format", ["png", "jpeg"])
def test_succeeded_job_with_outputs(service, output_format):
    job_id = submit(service, output_format=output_format)
    succeed(service, job_id, {"outputs": OUTPUTS, "data": {"boxes": [[1, 2, 3, 4]]}, "warnings": ["w"], "timings": {"steps_s": 0.5}})
    rendered = as_json(service, job_id)
    assert rendered["status"] == "succeeded" and rendered["timings"]["run_s"] > 0
    names = [o["name"] for o in rendered["outputs"]]
    assert names == (["image.png", "depth.png"] if output_format == "png" else ["image.jpeg", "depth.png"])
    assert all(o["signed_url"].startswith(o["url"] + "?expires=") for o in rendered["outputs"])


def test_failed_jobs(service):
    reported = submit(service)
    job = service.fetch(reported)
    job.meta["error"] = {"type": "model_error", "message": "ValueError: no"}
    job.save_meta()
    job.set_status(JobStatus.FAILED)
    lost = submit(service)
    Result.create(service.fetch(lost), Result.Type.FAILED, ttl=600, exc_string="rq.exceptions.AbandonedJobError")
    service.fetch(lost).set_status(JobStatus.FAILED)
    assert as_json(service, reported)["error"] == {"type": "model_error", "message": "ValueError: no"}
    assert as_json(service, lost)["error"]["type"] == "worker_lost"


def test_batch(service):
    batch, _ = service.submit_batch_once([("text-to-image", TextToImage(**SMALL), "png")] * 2, None, "tenant-a", "key-a")
    succeed(service, batch.jobs[0].id, {"outputs": OUTPUTS[:1]})
    rendered = service.batch_view(batch.id)
    assert rendered.counts["succeeded"] == 1 and rendered.counts["queued"] == 1
    assert [j.status for j in rendered.jobs] == ["succeeded", "queued"]


def test_webhook_body_is_the_job_as_the_api_shows_it(service):
    """The end-of-job hook (run by a worker, here by the gateway for a job canceled while queued) queues a
    body whose job is the API's view of it, from a store that has no gateway code."""
    job_id = submit(service, webhook=WebhookSpec(url="http://127.0.0.1:9/hook"))
    service.cancel(job_id, tenant="tenant-a")
    deliveries = [service.webhook_queue.fetch_job(i) for i in service.webhook_queue.job_ids]
    bodies = [json.loads(d.args[3]) for d in deliveries if d.args[:2] == ("job", job_id)]
    assert [b["event"] for b in bodies] == ["job.canceled"]
    assert bodies[0]["job"] == service.view(job_id).model_dump(mode="json")
    plain = JobStore(service.redis, service.settings)  # what a worker holds
    assert as_json(plain, job_id) == bodies[0]["job"]
    assert not service.redis.sismember(service.keys.active_jobs("tenant-a"), job_id)  # its quota slot is free


def test_jobs_of_an_earlier_release_get_todays_failure_callback(service):
    """Records written before the job store moved to core/ name `app.jobs.on_rq_failure`; RQ would stop the
    worker that cleans up after such a job's dead worker. A worker renames them when it starts."""
    queued, started = submit(service), submit(service)
    service.queue.remove(started)
    with service.redis.pipeline() as pipe:  # as a worker starts a job (worker/batch_worker.py)
        Execution.create(service.fetch(started), 600, pipeline=pipe, worker_name="a-worker")
        pipe.execute()
    assert started in service.queue.started_job_registry.get_job_ids(cleanup=False)
    for job_id in (queued, started):
        service.redis.hset(Job.key_for(job_id), "failure_callback_name", "app.jobs.on_rq_failure")
    assert service.rename_old_callbacks() == 2
    assert all(service.fetch(job_id).failure_callback is on_rq_failure for job_id in (queued, started))
    assert service.rename_old_callbacks() == 0


def test_the_end_of_a_job_keeps_its_outcome_in_the_record_not_in_a_stream(service):
    """RQ's result stream costs ~4.7 KB per job whatever it holds; the end-of-job hook moves the outcome
    into the job's record and drops the stream, and the job reads the same before and after."""
    done, lost = submit(service), submit(service)
    succeed(service, done, {"outputs": OUTPUTS, "data": {"n": 1}, "warnings": [], "timings": {"steps_s": 0.1}})
    Result.create(service.fetch(lost), Result.Type.FAILED, ttl=600, exc_string="rq.exceptions.AbandonedJobError")
    service.fetch(lost).set_status(JobStatus.FAILED)
    before = {job_id: as_json(service, job_id) for job_id in (done, lost)}
    for job_id in (done, lost):
        service.job_ended(job_id)
        assert not service.redis.exists(Result.get_key(job_id))
        assert unsigned(as_json(service, job_id)) == unsigned(before[job_id])
    assert before[done]["outputs"][0]["name"] == "image.png" and before[lost]["error"]["type"] == "worker_lost"
    assert service.redis.memory_usage(Job.key_for(done), samples=0) < 4096


def test_a_view_racing_the_move_still_finds_the_outcome(service):
    """A view reads the record, then RQ's stream; the move may happen in between."""
    job_id = submit(service)
    succeed(service, job_id, {"outputs": OUTPUTS[:1]})
    job = service.fetch(job_id)  # the record as read before the move
    service.job_ended(job_id)
    assert [o.name for o in service.view(job_id, job).outputs] == ["image.png"]


def test_job_records_live_for_job_ttl_not_for_the_outputs_ttl(redis_url):
    settings = Settings(redis_url=redis_url, queue_prefix="odstore" + uuid.uuid4().hex[:8], rate_limit_per_minute=0,
                        job_ttl_s=3600, results_ttl_s=7 * 24 * 3600)
    service = JobService(Redis.from_url(redis_url), settings)
    job_id = submit(service, idempotency_key="k1")
    job = service.fetch(job_id)
    assert job.result_ttl == job.failure_ttl == job.ttl == 3600
    service.record_progress([job_id], 1, 2)
    for key in (service.keys.progress(job_id), service.keys.idempotency("tenant-a:k1")):
        assert 3500 < service.redis.ttl(key) <= 3600
def test_queued_jobs_show_their_fair_position_and_an_eta_once_a_step_time_is_known(service):
    a = [submit(service) for _ in range(6)]
    b = service.submit_once("text-to-image", TextToImage(**SMALL), "tenant-b", "key-b")[0].id
    assert [service.view(i).queue_position for i in a[:2]] == [0, 2]  # b's first job goes second
    assert service.view(b).queue_position == 1 and service.queue.count == 7
    assert service.view(b).eta_s is None  # no step measured for this shape yet
    service.redis.hset(service.keys.step_seconds, "64x64x1", 0.5)
    assert service.view(b).eta_s == 1.0  # within the first MAX_BATCH: its own 2 steps
    assert service.view(a[5]).eta_s == 2.0  # behind one batch of MAX_BATCH (4) jobs
    service.cancel(a[0])  # out of the line at once: a's next job takes its turn
    assert [service.view(i).queue_position for i in (a[1], b, a[2])] == [0, 1, 2] and service.queue.count == 6


def test_a_long_prompts_plan_is_stored_and_the_view_shows_what_was_sent(redis_url, tmp_path):
    """A plan too long to queue by value goes to the result store; the job's view (and a process that did not
    queue it) reads its input echo back from there; an expired plan leaves the echo empty, not the view broken."""
    from core.plan import STORED, _STORED_PLANS
    from core.provenance import input_echo
    from core.storage import LocalStore

    settings = Settings(redis_url=redis_url, queue_prefix="odstore" + uuid.uuid4().hex[:8], rate_limit_per_minute=0,
                        public_url="http://api.test", results_dir=str(tmp_path))
    service = JobService(Redis.from_url(redis_url), settings)
    from benchmarks.redis_footprint import long_prompt

    request = TextToImage(**{**SMALL, "prompt": long_prompt(), "seed": 5})  # 2,000 characters of varied words
    view, _ = service.submit_once("text-to-image", request, "tenant-a", "key-a")
    assert view.input == input_echo(request) and view.input["prompt"] == request.prompt
    payload = service.fetch(view.id).args[1]
    assert set(payload) == {"plan_version", STORED}
    assert len(service.redis.hget(Job.key_for(view.id), "data")) < 300
    _STORED_PLANS.clear()
    other = JobStore(Redis.from_url(redis_url), settings)  # a worker's, or another API process's
    assert other.view(view.id).input == input_echo(request)
    _STORED_PLANS.clear()
    (tmp_path / "_inputs" / payload[STORED]).unlink()  # expired with the inputs
    assert JobStore(Redis.from_url(redis_url), settings).view(view.id).input == {}
    assert LocalStore(tmp_path).sweep(0) == 0  # nothing else of this job's was stored
