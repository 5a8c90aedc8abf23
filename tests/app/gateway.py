"""The gateway in process: FastAPI's TestClient over `create_app` on a real Redis, keys on, and a key of a
tenant. Shared by the app tests that submit through it."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from app.main import create_app
from core.settings import Settings

SMALL = {"prompt": "a small test", "width": 64, "height": 64, "num_inference_steps": 1}


def gateway(redis_url, tmp_path, **env) -> TestClient:
    settings = Settings.from_env({
        "REDIS_URL": redis_url, "QUEUE_PREFIX": "odprio" + uuid.uuid4().hex[:8], "RESULTS_DIR": str(tmp_path / "results"),
        "RATE_LIMIT_PER_MINUTE": "0", "AUTH_DISABLED": "false", "PUBLIC_URL": "http://api.test",
        **{k.upper(): str(v) for k, v in env.items()},
    })
    return TestClient(create_app(settings))


def key(client: TestClient, tenant: str, priority=None) -> dict:
    full, _ = client.app.state.keystore.create(tenant, "test", priority)
    return {"Authorization": f"Bearer {full}"}
