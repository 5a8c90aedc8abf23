"""The Python client is imported from this repository's clients/python (not an installed copy), so
the tests always check the client that ships next to this service."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.service.harness import Service

CLIENT_SRC = Path(__file__).resolve().parents[2] / "clients" / "python"
if str(CLIENT_SRC) not in sys.path:
    sys.path.insert(0, str(CLIENT_SRC))


@pytest.fixture(scope="package")
def shared_service(tmp_path_factory, redis_url, demo_checkpoint):
    """One stack for the client's and the playground's tests (the suite's is one per module)."""
    service = Service(tmp_path_factory.mktemp("client-shared"), redis_url, demo_checkpoint, results_ttl_s=3600)
    yield service
    service.stop()
