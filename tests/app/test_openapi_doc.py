"""The OpenAPI document says what the server does: short ids, declared headers, one typed error schema,
and the limits of this server's settings."""

from __future__ import annotations

import json

import pytest

from app.main import create_app
from core.settings import Settings
from tests.app.openapi_checks import validate_against


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


def test_view_and_frame_counts_are_the_servers(schema):
    """The schema (and the playground, which reads it) stops where the server does: MAX_VIEWS, MAX_FRAMES."""
    doc, settings = schema
    components = doc["components"]["schemas"]
    for kind in ("Request", "Item", "Form"):
        assert components[f"ImageToMultiview{kind}"]["properties"]["cameras"]["maxItems"] == settings.max_views == 8
        assert components[f"TextToMultiview{kind}"]["properties"]["cameras"]["maxItems"] == settings.max_views
        assert components[f"CameraPoseEstimation{kind}"]["properties"]["images"]["maxItems"] == settings.max_views
        assert components[f"Generate{kind}"]["properties"]["frames"]["maxItems"] == settings.max_frames == 16
        assert components[f"IdCustomization{kind}"]["properties"]["images"]["maxItems"] == 3


# ---- examples: one per error status, every one valid ---------------------------------------------------


def schema_examples(doc: dict):
    """(where, schema, example) for every `examples` entry of a schema in the document."""
    def walk(node, where):
        if isinstance(node, dict):
            if isinstance(node.get("examples"), list) and ("type" in node or "$ref" in node or "anyOf" in node):
                for example in node["examples"]:
                    yield where, {k: v for k, v in node.items() if k != "examples"}, example
            for key, value in node.items():
                yield from walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{where}/{i}")
    yield from walk(doc["components"], "#/components")


def test_every_error_status_has_an_example_of_its_body(schema):
    doc, settings = schema
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    seen = {}
    for path, method, op in operations(doc):
        for code, response in op["responses"].items():
            if not code.startswith(("4", "5")) or method == "head":
                continue
            media = response["content"]["application/json"]
            examples = [e["value"] for e in media.get("examples", {}).values()] + (
                [media["example"]] if "example" in media else [])
            assert examples, (path, method, code)
            for example in examples:
                validate_against(doc, error_body, example)
                seen.setdefault(code, set()).add(example["error"]["type"])
    assert seen["401"] == {"unauthorized"} and seen["404"] == {"not_found"} and seen["503"] == {"unavailable", "store_full"}
    assert seen["429"] >= {"rate_limited", "quota_exceeded", "queue_full", "too_many_streams"}
    assert seen["409"] == {"conflict", "idempotency_mismatch"} and seen["422"] == {"invalid_request"}
    too_large = doc["paths"]["/v1/text-to-image"]["post"]["responses"]["413"]["content"]["application/json"]
    assert str(settings.max_body_bytes) in json.dumps(too_large["examples"])  # this server's limit


def test_every_schema_example_is_valid_and_images_decode(schema):
    import io

    from PIL import Image

    from model.images import decode_base64

    doc, _ = schema
    examples = list(schema_examples(doc))
    assert len(examples) > 20
    images = 0
    for where, node, example in examples:
        validate_against(doc, node, example)
        if isinstance(example, str) and example.startswith("data:image/"):
            Image.open(io.BytesIO(decode_base64(example))).load()
            images += 1
    assert images >= 10


def test_request_examples_are_valid_bodies_for_every_post(schema):
    doc, _ = schema
    posts = [(path, op) for path, method, op in operations(doc) if method == "post" and "requestBody" in op]
    assert len(posts) >= 22
    for path, op in posts:
        media = op["requestBody"]["content"]["application/json"]
        assert "example" in media, path
        validate_against(doc, media["schema"], media["example"])
    batch = doc["paths"]["/v1/batches"]["post"]["requestBody"]["content"]["application/json"]["example"]
    seed = doc["components"]["schemas"]["TextToImageItem"]["properties"]["seed"]["anyOf"][0]
    assert all(0 <= item.get("seed", 0) <= min(seed["maximum"], 2**53) for item in batch["items"])


# ---- multipart bodies: their own schema, files as binary, no null ------------------------------------


def test_multipart_bodies_have_their_own_schema(schema):
    from app.schemas import REQUEST_MODELS
    from model.tasks import image_fields

    doc, settings = schema
    components = doc["components"]["schemas"]
    for task, model in REQUEST_MODELS.items():
        content = doc["paths"][f"/v1/{task}"]["post"]["requestBody"]["content"]
        ref = content["multipart/form-data"]["schema"]["$ref"]
        assert ref != content["application/json"]["schema"]["$ref"]
        form = components[ref.rsplit("/", 1)[1]]
        assert ref.endswith("Form") and set(form["properties"]) == set(model.model_fields)
        assert '"null"' not in json.dumps(form) and "anyOf" not in json.dumps(form), task
        assert all(p.get("default", "") is not None for p in form["properties"].values()), task
        images = image_fields(model)
        for name, prop in form["properties"].items():
            if name in images:
                binary = prop["items"] if images[name] else prop
                assert (binary["type"], binary["format"]) == ("string", "binary"), (task, name)
                assert prop["type"] == ("array" if images[name] else "string")
            else:
                assert "type" in prop or "$ref" in prop, (task, name)
        encoding = content["multipart/form-data"]["encoding"]
        for name, prop in form["properties"].items():
            if "$ref" in prop or (prop.get("type") == "array" and name not in images):
                assert encoding[name]["contentType"] == "application/json", (task, name)
    props = components["TextToImageForm"]["properties"]
    assert props["seed"]["type"] == "integer" and props["width"]["maximum"] == settings.max_side
    assert components["InpaintingForm"]["properties"]["mask"]["format"] == "binary"
    assert components["CameraPoseEstimationForm"]["properties"]["images"]["items"]["format"] == "binary"


def test_file_download_declares_binary_images(schema):
    doc, _ = schema
    content = doc["paths"]["/v1/files/{job_id}/{name}"]["get"]["responses"]["200"]["content"]
    assert {"image/png", "image/webp", "image/jpeg", "image/*"} <= set(content)
    assert all(media["schema"] == {"type": "string", "format": "binary"} for media in content.values())


def test_webhook_secret_names_both_signatures(schema):
    doc, _ = schema
    text = doc["components"]["schemas"]["WebhookSpec"]["properties"]["secret"]["description"]
    for header in ("webhook-id", "webhook-timestamp", "webhook-signature", "OneDiffusion-Signature"):
        assert header in text


def test_job_store_down_answers_the_documented_503(schema):
    """The 503 example is the body the app sends when Redis does not answer (a closed port here)."""
    from fastapi.testclient import TestClient

    doc, settings = schema
    with TestClient(create_app(settings)) as client:
        response = client.get("/v1/jobs/abc")
    documented = doc["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["503"]["content"]["application/json"]["examples"]
    assert response.status_code == 503 and response.headers["retry-after"]
    assert response.json() in [e["value"] for e in documented.values()]
