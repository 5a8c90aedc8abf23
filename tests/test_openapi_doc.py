"""The OpenAPI document says what the server does: short ids, declared headers, one typed error schema,
and the limits of this server's settings."""

from __future__ import annotations

import json

import pytest

from app.main import create_app
from core.settings import Settings


@pytest.fixture(scope="module")
def schema():
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", "AUTH_DISABLED": "true", "MAX_SIDE": "1536"})
    return create_app(settings).openapi(), settings


def operations(schema):
    for path, item in schema["paths"].items():
        for method, op in item.items():
            yield path, method, op


def test_short_unique_operation_ids(schema):
    doc, _ = schema
    ids = [op["operationId"] for _, _, op in operations(doc)]
    assert len(ids) == len(set(ids))
    assert {"text_to_image", "depth_estimation", "get_job", "cancel_job", "submit_batch", "get_file"} <= set(ids)
    assert all(len(i) <= 30 for i in ids), ids


def test_headers_declared(schema):
    doc, _ = schema
    op = doc["paths"]["/v1/text-to-image"]["post"]
    names = {p["name"] for p in op["parameters"] if p["in"] == "header"}
    assert {"Prefer", "Idempotency-Key"} <= names
    assert "Location" in op["responses"]["202"]["headers"]
    assert "Retry-After" in op["responses"]["429"]["headers"]
    assert "Idempotency-Key" in {p["name"] for p in doc["paths"]["/v1/batches"]["post"]["parameters"]}


def test_one_typed_error_schema(schema):
    doc, _ = schema
    text = json.dumps(doc)
    assert "HTTPValidationError" not in text
    for path, method, op in operations(doc):
        for code, response in op["responses"].items():
            if code.startswith(("4", "5")) and method != "head":  # HEAD answers have no body
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, (path, method, code)
    detail = doc["components"]["schemas"]["ErrorDetail"]
    assert {"type", "message"} <= set(detail["required"]) and "fields" in detail["properties"]
    assert "422" in doc["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]


def test_limits_are_the_servers(schema):
    doc, settings = schema
    props = doc["components"]["schemas"]["TextToImageRequest"]["properties"]
    width = next(b for b in [props["width"], *props["width"].get("anyOf", [])] if "maximum" in b)
    assert width["maximum"] == settings.max_side == 1536
    prompt = next(b for b in [props["prompt"], *props["prompt"].get("anyOf", [])] if "maxLength" in b)
    assert prompt["maxLength"] == settings.max_prompt_chars
