"""Fair sharing between tenants through the real API and worker: one tenant's backlog never holds another
tenant's first job, and a job's priority orders its own tenant's jobs only."""

from __future__ import annotations

from datetime import datetime

from tests.service.harness import bearer, new_key, wait_until

MAX_BATCH = 2


def test_a_backlog_does_not_hold_another_tenants_first_job(make_inprocess):
    service = make_inprocess(auth_disabled="false", max_batch=MAX_BATCH)
    key_a, _ = new_key(service, "tenant-a")
    key_b, _ = new_key(service, "tenant-b")
    job = {"prompt": "x", "width": 64, "height": 64, "num_inference_steps": 2}
    items = [{"task": "text-to-image", **job, "seed": i} for i in range(24)]
    batch = service.client.post("/v1/batches", json={"items": items}, headers=bearer(key_a))
    assert batch.status_code == 202, batch.text
    b = service.client.post("/v1/text-to-image", json={**job, "seed": 99}, headers=bearer(key_b)).json()
    assert b["status"] != "queued" or b["queue_position"] <= MAX_BATCH  # not behind the other tenant's 24 jobs
    a_ids = [j["id"] for j in batch.json()["jobs"]]

    def finished_at(job_id: str, key: str) -> str:
        return wait_until(lambda: (lambda j: j["finished_at"] if j["status"] == "succeeded" else None)(
            service.client.get(f"/v1/jobs/{job_id}", headers=bearer(key)).json()), 300, 0.3, f"job {job_id}")

    def when(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    ends = sorted([(when(finished_at(i, key_a)), i) for i in a_ids] + [(when(finished_at(b["id"], key_b)), b["id"])])
    rank = [i for _, i in ends].index(b["id"]) + 1
    assert rank <= 2 * MAX_BATCH, f"tenant b's job finished {rank}th of {len(ends)}"


def test_priority_runs_a_tenants_urgent_job_before_its_backlog_but_not_before_another_tenants_turn(make_inprocess):
    """Everything is queued before the worker starts (one job at a time), so the completion order is the
    fair line's: tenant b's urgent job (its key's priority, 5) runs before b's own backlog, and after tenant
    a's job whose turn came first; a's jobs keep their places."""
    service = make_inprocess(auth_disabled="false", max_batch=1, workers=0)
    key_a, _ = new_key(service, "tenant-a")
    key_b = service.cli("keys", "create", "--tenant", "tenant-b", "--priority", "5").strip().splitlines()[-1]
    assert [line.split()[-2] for line in service.cli("keys", "list").splitlines() if "tenant-b" in line] == ["5"]
    job = {"prompt": "x", "width": 64, "height": 64, "num_inference_steps": 1}

    def submit(key: str, **fields) -> dict:
        answer = service.client.post("/v1/text-to-image", json={**job, **fields}, headers=bearer(key))
        assert answer.status_code == 202, answer.text
        return answer.json()

    def positions(ids: list[str], key: str) -> list[int]:
        return [service.client.get(f"/v1/jobs/{i}", headers=bearer(key)).json()["queue_position"] for i in ids]

    others = [submit(key_a, seed=i)["id"] for i in range(3)]
    backlog = [submit(key_b, seed=i, priority=0)["id"] for i in range(3)]
    before = positions(others, key_a)
    urgent = submit(key_b, seed=9)  # no priority: the key's
    assert urgent["priority"] == 5 and urgent["queue_position"] == 1, urgent
    assert positions(others, key_a) == before
    refused = service.client.post("/v1/text-to-image", json={**job, "priority": 6}, headers=bearer(key_b))
    assert refused.status_code == 422 and "maximum priority is 5" in refused.json()["error"]["message"], refused.text

    service.start_worker()
    keys = {i: key_a for i in others} | {i: key_b for i in [*backlog, urgent["id"]]}
    started = {i: wait_until(lambda i=i: (lambda j: j["started_at"] if j["status"] == "succeeded" else None)(
        service.client.get(f"/v1/jobs/{i}", headers=bearer(keys[i])).json()), 120, 0.3, f"job {i}") for i in keys}
    ran = sorted(started, key=lambda i: datetime.fromisoformat(started[i].replace("Z", "+00:00")))
    assert ran == [others[0], urgent["id"], others[1], backlog[0], others[2], backlog[1], backlog[2]], ran
