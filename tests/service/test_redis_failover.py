"""Redis failover through Sentinel, with real processes: a master, a replica and three sentinels; the API,
a worker, the webhook deliverer and the CLI find the master through the sentinels. The master is
SIGKILLed while jobs are being submitted and run: every job answered 202 ends succeeded and ran once,
and during the switch the API answers 503 with Retry-After, never 500."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid

import pytest

from tests.service.harness import TERMINAL, wait_until
from tests.service.replicated_redis import MASTER_NAME, ReplicatedRedis

JOBS = 50
SMALL = {"prompt": "failover", "width": 64, "height": 64, "num_inference_steps": 1}


@pytest.fixture
def redis_set(tmp_path):
    servers = ReplicatedRedis(tmp_path / "redis-set")
    servers.start()
    yield servers
    servers.stop()


def batch_starts(service) -> dict[str, int]:
    """How many times each job id was started, from the workers' "jobs joined" log lines (a batch's first
    jobs and each job that joins it later)."""
    counts: dict[str, int] = {}
    for path in service.tmp.glob("worker*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if '"jobs joined"' in line:
                for job_id in json.loads(line)["jobs"]:
                    counts[job_id] = counts.get(job_id, 0) + 1
    return counts


def test_master_killed_midway_loses_no_job_and_runs_none_twice(redis_set, make_service, request):  # Redis stops last
    service = make_service(
        # REDIS_URL names nothing that answers: every process must find the master through the sentinels
        redis="redis://127.0.0.1:1/0", redis_sentinels=redis_set.sentinels, redis_sentinel_master=MASTER_NAME,
        redis_wait_timeout_ms=200, heartbeat_ttl_s=20, max_batch=8,
    )
    request.addfinalizer(lambda: print(redis_set.logs()) if getattr(request.node, "rep_call", None) and request.node.rep_call.failed else None)
    accepted: list[str] = []
    refused: list[tuple[int, str, str]] = []  # (status, Retry-After, error type) of every answer but 202
    killed = threading.Event()

    def submit_all() -> None:
        for index in range(JOBS):
            key = uuid.uuid4().hex  # a retried submission is the same submission, never a second job
            while True:
                try:
                    response = service.client.post("/v1/text-to-image", json={**SMALL, "seed": index},
                                                   headers={"Idempotency-Key": key})
                except Exception as exc:  # the API itself must never drop a request
                    refused.append((0, "", repr(exc)))
                    time.sleep(0.2)
                    continue
                if response.status_code == 202:
                    accepted.append(response.json()["id"])
                    break
                refused.append((response.status_code, response.headers.get("retry-after", ""),
                                response.json()["error"]["type"]))
                time.sleep(0.2)
            if index == JOBS // 2:
                killed.wait(30)

    submitter = threading.Thread(target=submit_all)
    submitter.start()
    wait_until(lambda: len(accepted) > JOBS // 2, 60, what="half of the submissions")
    old_master = redis_set.master()
    redis_set.kill(old_master)  # SIGKILL, midway through submitting and running
    killed.set()
    new_master = redis_set.wait_failover(old_master)
    redis_set.restart(old_master)  # comes back as a replica of the new master (the sentinels see to it)
    submitter.join(120)
    assert not submitter.is_alive()

    assert len(accepted) == JOBS and len(set(accepted)) == JOBS
    assert refused, "no submission met the switch: the kill came too late to test anything"
    assert all(code == 503 and retry.isdigit() for code, retry, _ in refused), refused
    for job_id in accepted:
        done = service.wait_job(job_id, timeout=240)
        assert done["status"] == "succeeded", done
    starts = batch_starts(service)
    assert {job_id: n for job_id, n in starts.items() if n != 1} == {}
    assert set(starts) == set(accepted)
    assert redis_set.master() == new_master
    # the CLI follows the sentinels too
    assert "key id" in service.cli("keys", "list")
    # and the promoted server holds every accepted job
    statuses = [redis_set.client(new_master).hget(f"rq:job:{job_id}", "status") for job_id in accepted]
    assert set(statuses) == {b"finished"}
    assert all(job["status"] in TERMINAL for job in map(service.job, accepted))
    # the deliverer, told to stop while it and its scheduler of retries wait on the new master, stops at once
    started = time.monotonic()
    service.kill("webhooks", signal.SIGTERM)
    assert time.monotonic() - started < 5, service.logs()
