"""Fair sharing between tenants through the real API and worker: one tenant's backlog never holds another
tenant's first job."""

from __future__ import annotations

from datetime import datetime

from tests.service.harness import wait_until
from tests.service.test_security import bearer, new_key

MAX_BATCH = 2


def test_a_backlog_does_not_hold_another_tenants_first_job(make_service):
    service = make_service(auth_disabled="false", max_batch=MAX_BATCH, deliverer=False)
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
