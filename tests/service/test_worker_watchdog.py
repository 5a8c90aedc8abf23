"""A worker whose main thread hangs in a step: the watchdog reports it not ready, hands its job back to
the queue and exits; the job then succeeds on another worker. The probes a deployment uses (/livez,
/readyz on the worker's probe port) say what the worker knows."""

from __future__ import annotations

import time

import httpx

from tests.service.harness import free_port, wait_until
from worker.probes import WorkerHealth, serve_probes
from worker.watchdog import EXIT_STALLED, FAULT_STALL_AT_STEP, Watchdog

STALL_S = 4  # the stuck worker's WATCHDOG_STALL_S
LONG = {"prompt": "long", "width": 128, "height": 128, "num_inference_steps": 30, "seed": 5}


def probe(port: int, path: str) -> tuple[int, dict]:
    response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    return response.status_code, response.json()


def test_a_stuck_worker_hands_its_job_back_and_exits(make_service):
    service = make_service(workers=0, deliverer=False)
    stuck_port = free_port()
    stuck = service.start("worker1", "worker", worker_probe_port=stuck_port, watchdog_stall_s=STALL_S,
                          **{FAULT_STALL_AT_STEP: 3})
    service.wait_ready(1)
    assert probe(stuck_port, "/readyz")[0] == 200 and probe(stuck_port, "/livez")[0] == 200

    job = service.submit("text-to-image", LONG).json()
    wait_until(lambda: (service.job(job["id"]).get("progress") or {}).get("step", 0) >= 2, 90, what="progress")
    started = time.monotonic()
    code = wait_until(lambda: stuck.poll(), 60, 0.2, "the stuck worker to exit")
    assert code == EXIT_STALLED, service.logs()
    assert time.monotonic() - started < STALL_S + 30
    assert "the main thread is stuck" in service.logs(full=True)
    assert service.ready_workers() == 0  # out of /readyz at once, not after its heartbeat ages out
    wait_until(lambda: service.job(job["id"])["status"] == "queued", 15, what="the job back in the queue")

    service.start_worker(wait_ready=False)  # the default bound (derived from its steps): never tripped here
    done = service.wait_job(job["id"], timeout=180)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2 and done["outputs"]


def test_probes_answer_what_the_worker_knows():
    health = WorkerHealth()
    port = free_port()
    server = serve_probes("127.0.0.1", port, health)
    try:
        code, body = probe(port, "/readyz")
        assert code == 503 and body["status"] == "loading"
        assert probe(port, "/livez")[0] == 200  # loading is not dead: the startup probe bounds it
        health.loaded()
        health.working()
        assert probe(port, "/readyz") == (200, {"status": "ready"})
        health.failed("no step for 130 s (bound 120 s)")
        for path in ("/readyz", "/livez"):
            code, body = probe(port, path)
            assert code == 503 and body["reason"] == "no step for 130 s (bound 120 s)"
        assert probe(port, "/other")[0] == 404
    finally:
        server.shutdown()


class _Settings:
    watchdog_stall_s = 0.0


def test_the_bound_follows_the_measured_steps_and_trips_past_it():
    exits, stalls = [], []
    watchdog = Watchdog(_Settings(), on_stall=stalls.append, health=WorkerHealth(), exit=exits.append)
    assert watchdog.bound() == 300.0  # no step measured yet: the floor
    watchdog.batch_started()
    time.sleep(0.3)  # the batch's start (text encoding, compiling) is not a step
    for _ in range(3):
        watchdog.progress()
        time.sleep(0.05)
    assert 300.0 == watchdog.bound()  # 20 x ~0.05 s steps is below the floor
    watchdog.steps.append(20.0)  # a slow GPU: 20 s steps
    assert watchdog.bound() == 400.0
    watchdog.batch_ended()
    assert watchdog.stalled_for() == 0.0  # idle between batches is not a stall

    fixed = _Settings()
    fixed.watchdog_stall_s = 0.5
    watchdog = Watchdog(fixed, on_stall=stalls.append, health=WorkerHealth(), exit=exits.append)
    watchdog.start()
    watchdog.batch_started()
    wait_until(lambda: exits, 10, 0.05, "the watchdog to give up")
    assert exits == [EXIT_STALLED] and len(stalls) == 1 and stalls[0].startswith("no step for")
    assert not watchdog.health.live()[0] and not watchdog.health.ready()[0]
    watchdog.thread.join(5)
    assert not watchdog.thread.is_alive()
