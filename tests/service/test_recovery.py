"""Nothing lost: a worker killed mid-job, and a Redis restart."""

from __future__ import annotations

import signal

from tests.service.harness import RedisServer, wait_until

LONG = {"prompt": "long", "width": 128, "height": 128, "num_inference_steps": 40, "seed": 5}


def wait_progress(service, job_id: str, step: int = 2) -> None:
    wait_until(lambda: (service.job(job_id).get("progress") or {}).get("step", 0) >= step, 90, what="progress")


def test_killed_worker_job_is_retried_on_a_live_worker(make_service):
    service = make_service()
    job = service.submit("text-to-image", LONG).json()
    wait_progress(service, job["id"])
    service.kill("worker1", signal.SIGKILL)
    running = service.job(job["id"])
    assert running["status"] == "running"
    service.start_worker(wait_ready=False)
    done = service.wait_job(job["id"], timeout=120)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2 and done["outputs"]


def test_job_fails_with_a_reason_when_retries_are_used_up(make_service):
    service = make_service(job_retries=0)
    job = service.submit("text-to-image", LONG).json()
    wait_progress(service, job["id"])
    service.kill("worker1", signal.SIGKILL)
    service.start_worker(wait_ready=False)
    done = service.wait_job(job["id"], timeout=120)
    assert done["status"] == "failed"
    assert done["error"]["type"] == "worker_lost" and "retries" in done["error"]["message"]
    # RQ failed it, so its end-of-job hooks ran through the failure callback (core.job_store.on_rq_failure)
    ended = 'onediffusion_jobs_total{status="failed",task="text-to-image"} 1'
    wait_until(lambda: ended in service.client.get("/metrics").text, 30, what="the end-of-job hooks")


def test_redis_restart_loses_no_job_or_result(make_service, tmp_path):
    redis = RedisServer(tmp_path / "redis-data")
    redis.start()
    try:
        service = make_service(redis=redis.url)
        finished = service.submit("text-to-image", {**LONG, "num_inference_steps": 2}, headers={"Prefer": "wait=60"}).json()
        assert finished["status"] == "succeeded"
        running = service.submit("text-to-image", LONG).json()
        queued = service.submit("text-to-image", {**LONG, "seed": 6}).json()
        wait_progress(service, running["id"])
        redis.stop()
        assert service.client.get(f"/v1/jobs/{running['id']}").status_code == 503
        redis.start()
        for job_id in (finished["id"], running["id"], queued["id"]):
            done = service.wait_job(job_id, timeout=180)
            assert done["status"] == "succeeded", done
            assert done["outputs"]
    finally:
        redis.stop()
