"""GET /v1/jobs and /v1/batches: the caller's own, newest first, cursor pages, filters; cancel of a batch."""

from __future__ import annotations

from tests.cases import CASES
from tests.service.harness import bearer, new_key


def _pages(client, path: str, headers: dict, **params) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        got = client.get(path, headers=headers, params={**params, **({"cursor": cursor} if cursor else {})})
        assert got.status_code == 200, got.text
        body = got.json()
        pages.append([item["id"] for item in body["data"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


def test_list_jobs_and_batches_and_cancel_a_batch(make_inprocess):
    service = make_inprocess(workers=0, auth_disabled="false")
    acme, _ = new_key(service, "acme")
    other, _ = new_key(service, "other")
    t2i, depth = CASES["text-to-image"][0], CASES["depth-estimation"][0]
    singles = [service.submit("text-to-image", t2i, headers=bearer(acme)).json()["id"] for _ in range(3)]
    singles.append(service.submit("depth-estimation", depth, headers=bearer(acme)).json()["id"])
    batch = service.client.post("/v1/batches", headers=bearer(acme), json={"items": [
        {"task": "text-to-image", **t2i}, {"task": "text-to-image", **t2i}]}).json()
    service.submit("text-to-image", t2i, headers=bearer(other))
    batch_jobs = [job["id"] for job in batch["jobs"]]

    pages = _pages(service.client, "/v1/jobs", bearer(acme), limit=2)
    assert [job for page in pages for job in page] == list(reversed(singles + batch_jobs))  # newest first, all, once
    assert all(len(page) <= 2 for page in pages) and len(pages) >= 3
    assert _pages(service.client, "/v1/jobs", bearer(acme), task="depth-estimation") == [[singles[-1]]]
    assert len(_pages(service.client, "/v1/jobs", bearer(other))[0]) == 1  # tenants see only their own

    canceled = service.client.post(f"/v1/batches/{batch['id']}/cancel", headers=bearer(acme))
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "completed" and canceled.json()["counts"]["canceled"] == 2
    assert {j["status"] for j in canceled.json()["jobs"]} == {"canceled"}
    assert service.client.post(f"/v1/batches/{batch['id']}/cancel", headers=bearer(other)).status_code == 404
    assert [j for p in _pages(service.client, "/v1/jobs", bearer(acme), status="canceled") for j in p] == \
        list(reversed(batch_jobs))
    assert _pages(service.client, "/v1/batches", bearer(acme)) == [[batch["id"]]]
    assert _pages(service.client, "/v1/batches", bearer(other)) == [[]]

    bad = service.client.get("/v1/jobs", headers=bearer(acme), params={"cursor": "nonsense!"})
    assert bad.status_code == 422 and "cursor" in bad.json()["error"]["message"]
    assert service.client.get("/v1/jobs", headers=bearer(acme), params={"limit": 0}).status_code == 422
