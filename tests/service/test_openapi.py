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
    # no worker: generated jobs only queue (and expire), the gateway is what is under test
    service = Service(tmp_path_factory.mktemp("fuzz"), redis_url, demo_checkpoint, workers=0, deliverer=False,
                      results_ttl_s=600, auth_disabled="false")
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
         "--exclude-path", "/readyz"],  # 503 until a worker is ready, by design
        capture_output=True, text=True, timeout=600, cwd=fuzz_service.tmp,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    summary = [line for line in result.stdout.splitlines() if "generated" in line or "passed" in line]
    print("\nFUZZ " + " | ".join(s.strip() for s in summary[-2:]))
