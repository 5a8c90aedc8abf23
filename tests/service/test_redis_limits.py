"""Redis at its limits, with real processes: a Redis that reaches its maxmemory (noeviction) while jobs of
two tenants run together, and a Redis that would evict keys."""

from __future__ import annotations

import os
import re
import subprocess

from redis import Redis

from tests.service.harness import CLI, TERMINAL, RedisServer, free_port, wait_until

RUNNING = {"prompt": "full store", "width": 64, "height": 64, "num_inference_steps": 12}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_a_full_redis_refuses_new_work_with_503_keeps_reads_and_loses_nothing(make_service, tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        redis = Redis.from_url(server.url)
        service = make_service(redis=server.url, auth_disabled="false", max_batch=4, batch_window_ms=500)
        keys = {t: service.cli("keys", "create", "--tenant", t).strip().splitlines()[-1] for t in ("acme", "globex")}
        finished = service.client.post("/v1/text-to-image", json={**RUNNING, "num_inference_steps": 1},
                                       headers={**bearer(keys["acme"]), "Prefer": "wait=60"}).json()
        assert finished["status"] == "succeeded", finished
        # one batch of both tenants' jobs, running when the store fills up
        jobs = {}
        for i, tenant in enumerate(["acme", "globex", "acme", "globex"]):
            answer = service.client.post("/v1/text-to-image", json={**RUNNING, "seed": i}, headers=bearer(keys[tenant]))
            assert answer.status_code == 202, answer.text
            jobs[answer.json()["id"]] = tenant
        first = next(iter(jobs))
        wait_until(lambda: (service.client.get(f"/v1/jobs/{first}", headers=bearer(keys["acme"])).json()
                            .get("progress") or {}).get("step", 0) >= 1, 120, what="the batch to run")

        redis.config_set("maxmemory", 1)  # full: every write that needs memory is refused (noeviction)
        try:
            refused = service.client.post("/v1/text-to-image", json=RUNNING, headers=bearer(keys["acme"]))
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"].isdigit()
            error = refused.json()["error"]
            assert error["type"] == "store_full" and "full" in error["message"], error
            assert "unreachable" not in error["message"]
            batch = service.client.post("/v1/batches", json={"items": [{"task": "text-to-image", **RUNNING}]},
                                        headers=bearer(keys["acme"]))
            assert batch.status_code == 503 and batch.json()["error"]["type"] == "store_full", batch.text

            # reads keep working, also on an API process started while the store is full
            second = free_port()
            service.start("api2", "serve", port=second)
            fresh = f"http://127.0.0.1:{second}"
            wait_until(lambda: _answers(service, fresh), 30, what="the second API")
            for base in (service.url, fresh):
                got = service.client.get(f"{base}/v1/jobs/{finished['id']}", headers=bearer(keys["acme"]))
                assert got.status_code == 200 and got.json()["status"] == "succeeded", got.text
                output = got.json()["outputs"][0]
                assert service.client.get(output["signed_url"].replace(service.url, base)).status_code == 200
                assert service.client.get(f"{base}/v1/jobs", headers=bearer(keys["acme"])).status_code == 200
                assert service.client.get(f"{base}/metrics").status_code == 200
                with service.client.stream("GET", f"{base}/v1/jobs/{finished['id']}/events",
                                           headers=bearer(keys["acme"])) as events:
                    assert events.status_code == 200
                    assert "event: finished" in "".join(events.iter_text())

            # the batch ends while the store is full: the worker waits to record it (or, when a job joined
            # the batch just as the store filled, waits to record that it started)
            wait_until(lambda: re.search(r"while (finishing|starting) job",
                                         (service.tmp / "worker1.log").read_text(errors="replace")),
                       180, interval=0.5, what="the worker to wait for room to record its jobs")
        finally:
            redis.config_set("maxmemory", 0)

        for job_id, tenant in jobs.items():
            done = wait_until(lambda: _ended(service, job_id, keys[tenant]), 180, 0.3, f"job {job_id}")
            assert done["status"] == "succeeded", done  # nothing already queued is lost
            others = [other for other in jobs if other != job_id]
            assert not any(other in str(done) for other in others), done  # never another job's id
        after = service.client.post("/v1/text-to-image", json={**RUNNING, "num_inference_steps": 1},
                                    headers={**bearer(keys["globex"]), "Prefer": "wait=60"})
        assert after.status_code in (200, 202), after.text
    finally:
        server.stop()


def _ended(service, job_id: str, key: str):
    job = service.client.get(f"/v1/jobs/{job_id}", headers=bearer(key)).json()
    return job if job["status"] in TERMINAL else None


def _answers(service, base: str) -> bool:
    try:
        return service.client.get(f"{base}/healthz").status_code == 200
    except Exception:
        return False


def test_processes_refuse_an_evicting_redis(tmp_path, demo_checkpoint):
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        Redis.from_url(server.url).config_set("maxmemory-policy", "allkeys-lru")
        env = {**{k: v for k, v in os.environ.items() if k != "ONEDIFFUSION_MODEL"}, "REDIS_URL": server.url, "DEMO_CHECKPOINT_DIR": str(demo_checkpoint), "PORT": str(free_port()),
               "RESULTS_DIR": str(tmp_path / "results"), "ONEDIFFUSION_ATTENTION": "math"}
        started = {role: subprocess.Popen(CLI + [role], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True)
                   for role in ("serve", "worker", "webhooks")}
        for role, process in started.items():
            try:
                out, _ = process.communicate(timeout=180)
            finally:
                process.kill()
            assert process.returncode not in (0, None), (role, out)
            assert "maxmemory-policy allkeys-lru" in out and "noeviction" in out, (role, out)
            if role == "worker":  # refused before loading a model (minutes for a real one), not after
                assert "model loaded" not in out, out
    finally:
        server.stop()
