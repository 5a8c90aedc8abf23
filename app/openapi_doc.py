"""The OpenAPI document made to say what the server does: short operation ids, the headers the routes read
and send, one typed error schema for every error (path and query 422s included) with an example of each,
a request example per body, and the limits this server's settings enforce rather than the models' outer
bounds."""

from __future__ import annotations

from fastapi.routing import APIRoute

from core.settings import Settings
from model.tasks import MAX_LIST_ITEMS

from .openapi_examples import BATCH_EXAMPLE, REQUEST_EXAMPLES, error_examples

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
HEADER_PARAMS = {
    "prefer": {"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string", "pattern": r"^wait(=\d+)?$"},
               "description": "`wait=N`: answer 200 with the finished job if it ends within N seconds (up to "
                              "MAX_WAIT_S); a bare `wait` waits up to MAX_WAIT_S",
               "example": "wait=30"},
    "idempotency": {"name": "Idempotency-Key", "in": "header", "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    # no `example`: Swagger UI would send it with every "Try it out", and the second
                    # request with other fields would be a 409
                    "description": "A retry with the same key returns the first submission (409 if the request "
                                   "differs); e.g. a UUID per logical request"},
}
LOCATION = {"Location": {"schema": {"type": "string", "format": "uri"}, "description": "The job's URL"}}
RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying"}}


def operation_id(route: APIRoute) -> str:
    """`text_to_image`, `get_job`, `list_batches`: the endpoint's name, without `submit_` for task routes."""
    name = route.name
    if name.startswith("submit_") and name != "submit_batch":
        return name[len("submit_"):]
    return name


def _limits(schema: dict, settings: Settings) -> None:
    """Walk a JSON schema and lower the bounds to the server's settings."""
    if isinstance(schema, dict):
        for key, value in (schema.get("properties") or {}).items():
            for branch in [value, *value.get("anyOf", [])]:
                if key in ("width", "height") and "maximum" in branch:
                    branch["maximum"] = min(branch["maximum"], settings.max_side)
                if key in ("prompt", "negative_prompt") and "maxLength" in branch:
                    branch["maxLength"] = min(branch["maxLength"], settings.max_prompt_chars)
                if key == "num_inference_steps" and "maximum" in branch:
                    branch["maximum"] = min(branch["maximum"], settings.max_steps)
                # lists the models bound only by the generic MAX_LIST_ITEMS: views and frames per the settings
                if branch.get("maxItems") == MAX_LIST_ITEMS and key in ("cameras", "images", "frames"):
                    branch["maxItems"] = settings.max_frames if key == "frames" else settings.max_views
        for value in schema.values():
            if isinstance(value, dict):
                _limits(value, settings)
            elif isinstance(value, list):
                for item in value:
                    _limits(item, settings)


def _request_example(path: str, method: str, op: dict) -> None:
    """A JSON body that runs as sent, for each task and for a batch."""
    body = op.get("requestBody", {}).get("content", {}).get("application/json")
    if method != "post" or body is None:
        return
    task = path[len("/v1/"):]
    example = BATCH_EXAMPLE if path == "/v1/batches" else REQUEST_EXAMPLES.get(task)
    if example is not None:
        body["example"] = example


def refine(schema: dict, settings: Settings) -> dict:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            params = op.setdefault("parameters", [])
            is_task = method == "post" and path.startswith("/v1/") and path.count("/") == 2 and path != "/v1/batches"
            if is_task or (method == "post" and path == "/v1/batches"):
                params.append(HEADER_PARAMS["idempotency"])
            if is_task:
                params.append(HEADER_PARAMS["prefer"])
                for code in ("200", "202"):
                    if code in op.get("responses", {}):
                        op["responses"][code].setdefault("headers", {}).update(LOCATION)
            if not params:
                op.pop("parameters")
            if "422" not in op.get("responses", {}) and (op.get("parameters") or op.get("requestBody")):
                op.setdefault("responses", {})["422"] = {"description": "Invalid request"}
            for code, response in op.get("responses", {}).items():
                if code.startswith(("4", "5")):
                    response["content"] = {"application/json": {
                        "schema": ERROR_REF, "examples": error_examples(path, method, code, settings)}}
                    if code in ("429", "503"):
                        response.setdefault("headers", {}).update(RETRY_AFTER)
            _request_example(path, method, op)
            if method == "head":  # answers carry headers only
                for response in op.get("responses", {}).values():
                    response.pop("content", None)
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    _limits(components, settings)
    return schema
