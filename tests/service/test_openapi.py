"""The OpenAPI document validates, and a bounded property-based run against it, authenticated, finds no
5xx and no response that breaks the documented schema."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from openapi_spec_validator import validate

from tests.service.harness import Service


@pytest.fixture(scope="module")
def fuzz_service(tmp_path_factory, redis_url, demo_checkpoint):
    # no worker: generated jobs only queue (and expire), the gateway is what is under test; `Prefer: wait=30`
    # (the header's documented example) is not waited for, as nothing would end meanwhile
    service = Service(tmp_path_factory.mktemp("fuzz"), redis_url, demo_checkpoint, workers=0, deliverer=False,
                      results_ttl_s=600, auth_disabled="false", max_wait_s=0)
    yield service
    service.stop()


def test_openapi_document_validates(fuzz_service):
    document = fuzz_service.client.get("/openapi.json").json()
    validate(document)
    paths = document["paths"]
    assert len([p for p in paths if p.startswith("/v1/") and "post" in paths[p]]) >= 22


def test_property_based_run_finds_no_server_error(fuzz_service):
    """Schemathesis generates requests (valid and invalid) for every operation; bounded here, longer with
    `FUZZ_EXAMPLES=200 make fuzz`."""
    examples = os.environ.get("FUZZ_EXAMPLES", "8")
    key = fuzz_service.cli("keys", "create", "--tenant", "fuzz").strip().splitlines()[-1]
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", fuzz_service.url + "/openapi.json",
         "--checks", "not_a_server_error,response_schema_conformance", "--max-examples", examples,
         "--seed", "1", "--workers", "2", "--phases", os.environ.get("FUZZ_PHASES", "examples,fuzzing"), "--request-timeout", "30",
         "--header", f"Authorization: Bearer {key}",
         "--exclude-path", "/readyz",  # 503 until a worker is ready, by design
         # the event stream of a job that never ends (no worker here) stays open to the request timeout:
         # with runnable examples the run finds real job ids; tests/service/test_hardening.py and the
         # client's tests cover the stream
         "--exclude-operation-id", "job_events"],
        capture_output=True, text=True, timeout=600, cwd=fuzz_service.tmp,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    summary = [line for line in result.stdout.splitlines() if "generated" in line or "passed" in line]
    print("\nFUZZ " + " | ".join(s.strip() for s in summary[-2:]))


# ---- the documented examples are what the server accepts and answers ----------------------------------


def _key(service, tenant: str) -> dict:
    key = service.cli("keys", "create", "--tenant", tenant).strip().splitlines()[-1]
    return {"Authorization": f"Bearer {key}"}


def test_every_documented_request_example_is_accepted(fuzz_service):
    """Each POST body example of the served document, sent as it stands, is accepted (no worker runs
    them: the jobs it made are canceled)."""
    from tests.app.openapi_checks import validate_against

    document = fuzz_service.client.get("/openapi.json").json()
    auth = _key(fuzz_service, "examples")
    sent = 0
    for path, item in document["paths"].items():
        media = item.get("post", {}).get("requestBody", {}).get("content", {}).get("application/json")
        if media is None:
            continue
        validate_against(document, media["schema"], media["example"])
        response = fuzz_service.client.post(path, json=media["example"], headers=auth)
        assert response.status_code in (200, 202), (path, response.text)
        body = response.json()
        jobs = body["jobs"] if "jobs" in body else [body]
        for job in jobs:
            canceled = fuzz_service.client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
            assert canceled.json()["status"] == "canceled"
        sent += 1
    assert sent >= 22


def _documented(document: dict, path: str, method: str, code: int) -> list[dict]:
    media = document["paths"][path][method]["responses"][str(code)]["content"]["application/json"]
    return [e["value"] for e in media["examples"].values()]


def _check(document: dict, path: str, method: str, response) -> None:
    """The answer's status is documented for the operation, with an example of the same type and fields."""
    from tests.app.openapi_checks import validate_against

    body = response.json()
    validate_against(document, {"$ref": "#/components/schemas/ErrorBody"}, body)
    examples = _documented(document, path, method, response.status_code)
    same = [e for e in examples if e["error"]["type"] == body["error"]["type"]]
    assert same, (path, method, response.status_code, body, examples)
    assert any(("fields" in e["error"]) == ("fields" in body["error"]) for e in same), (body, same)
    if response.status_code in (401, 404, 415):  # fixed messages: the example is the very body
        assert body in examples, (body, examples)


def test_error_examples_are_what_the_server_answers(fuzz_service, make_service):
    document = fuzz_service.client.get("/openapi.json").json()
    client, auth = fuzz_service.client, _key(fuzz_service, "errors")
    job = client.post("/v1/text-to-image", json={"prompt": "a cat"}, headers={**auth, "Idempotency-Key": "k-1"}).json()
    cases = [
        ("/v1/text-to-image", "post", client.post("/v1/text-to-image", content=b"{oops", headers={
            **auth, "Content-Type": "application/json"}), 400),
        ("/v1/jobs/{job_id}", "get", client.get(f"/v1/jobs/{job['id']}"), 401),
        ("/v1/jobs/{job_id}", "get", client.get(f"/v1/jobs/{job['id']}", headers={"Authorization": "Bearer nope"}), 401),
        ("/v1/files/{job_id}/{name}", "get", client.get(f"/v1/files/{job['id']}/image.png"), 401),
        ("/v1/jobs/{job_id}", "get", client.get("/v1/jobs/nope", headers=auth), 404),
        ("/v1/files/{job_id}/{name}", "get", client.get("/v1/files/nope/image.png", headers=auth), 404),
        ("/v1/jobs/{job_id}", "delete", client.delete(f"/v1/jobs/{job['id']}", headers=auth), 409),
        ("/v1/text-to-image", "post", client.post("/v1/text-to-image", json={"prompt": "a dog"},
                                                  headers={**auth, "Idempotency-Key": "k-1"}), 409),
        ("/v1/batches", "post", client.post("/v1/batches", content=b"[" + b"0," * 100_001 + b"0]", headers={
            **auth, "Content-Type": "application/json"}), 413),
        ("/v1/text-to-image", "post", client.post("/v1/text-to-image", content=b"a cat", headers={
            **auth, "Content-Type": "text/plain"}), 415),
        ("/v1/batches", "post", client.post("/v1/batches", content=b"a cat", headers={
            **auth, "Content-Type": "text/plain"}), 415),
        ("/v1/text-to-image", "post", client.post("/v1/text-to-image", json={"prompt": "a cat", "width": 100},
                                                  headers=auth), 422),
        ("/v1/jobs/{job_id}", "get", client.get("/v1/jobs/a.b", headers=auth), 422),
        ("/v1/batches/{batch_id}", "get", client.get("/v1/batches/a.b", headers=auth), 422),
        ("/v1/jobs", "get", client.get("/v1/jobs?limit=1000", headers=auth), 422),
    ]
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    for path, method, response, status in cases:
        assert response.status_code == status, (path, method, response.text)
        _check(document, path, method, response)
    # 429s: a stack of its own with one submission a minute and one event stream per key
    limited = make_service(workers=0, deliverer=False, rate_limit_per_minute=1, max_streams_per_key=1)
    first = limited.submit("text-to-image", {"prompt": "a cat"})
    _check(document, "/v1/text-to-image", "post", limited.submit("text-to-image", {"prompt": "a cat"}))
    job_id = first.json()["id"]
    with limited.client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        lines = stream.iter_lines()  # kept: a dropped iterator closes the stream
        while not next(lines).startswith("event:"):
            pass
        second = limited.client.get(f"/v1/jobs/{job_id}/events", timeout=10)
        assert second.status_code == 429
        _check(document, "/v1/jobs/{job_id}/events", "get", second)


def test_form_placeholders_are_not_values(fuzz_service):
    """A form built from the document (Swagger UI, a generated client) may send `null` or an empty value
    for an optional field it leaves empty: the field is left out, never stored as the text "null"."""
    client, auth = fuzz_service.client, _key(fuzz_service, "forms")
    form = {"prompt": (None, "a cat"), "negative_prompt": (None, "null"), "seed": (None, ""), "width": (None, ""),
            "height": (None, "null"), "webhook": (None, "null"), "num_outputs": (None, "")}
    response = client.post("/v1/text-to-image", files=form, headers=auth)
    assert response.status_code == 202, response.text
    job = response.json()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert "null" not in str(job["input"].get("negative_prompt")) and isinstance(job["input"]["seed"], int)
    assert job["input"]["prompt"] == "a cat"
    refused = client.post("/v1/text-to-image", files={"prompt": (None, "null")}, headers=auth)
    assert refused.status_code == 422 and refused.json()["error"]["fields"][0]["field"] == "prompt"
