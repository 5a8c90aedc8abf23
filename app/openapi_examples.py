"""Examples the OpenAPI document shows: a request body per task and for a batch (each one runs as sent:
tests submit every one), and per error status the body the server sends (tests provoke each)."""

from __future__ import annotations

from core.settings import Settings
from model.tasks import EXAMPLE_IMAGE

from .ids import ID_PATTERN

IMAGE = EXAMPLE_IMAGE
CLASSES = [{"name": "dragon", "colour": "cyan"}, {"name": "bird"}]
CAMERAS = [{"azimuth": 0.0, "elevation": 0.0}, {"azimuth": 45.0, "elevation": 0.0}]

# Every example is sized to finish in seconds on the CPU demo (256 px, 8 steps; the README says so): the
# model's defaults (1024 px text-to-image, 50 steps and more) are for a GPU with the released weights.
QUICK = {"width": 256, "height": 256, "num_inference_steps": 8}

_EXAMPLES: dict[str, dict] = {
    "text-to-image": {"prompt": "A lighthouse on a cliff at sunset, oil painting", "seed": 42},
    "depth-to-image": {"image": IMAGE, "prompt": "a photo of a cat on a table", "seed": 42},
    "canny-to-image": {"image": IMAGE, "prompt": "a photo of a cat on a table"},
    "hed-to-image": {"image": IMAGE, "prompt": "a photo of a cat on a table"},
    "pose-to-image": {"image": IMAGE, "prompt": "a dancer on a stage"},
    "semantic-map-to-image": {"image": IMAGE, "prompt": "a dragon chasing a bird", "classes": CLASSES},
    "boxes-to-image": {"image": IMAGE, "prompt": "a dragon chasing a bird", "classes": CLASSES},
    "depth-estimation": {"image": IMAGE},
    "edge-estimation": {"image": IMAGE, "edge_type": "hed"},
    "pose-estimation": {"image": IMAGE},
    "segmentation": {"image": IMAGE, "classes": CLASSES},
    "detection": {"image": IMAGE, "classes": CLASSES},
    "deblurring": {"image": IMAGE, "output_format": "webp"},
    "inpainting": {"image": IMAGE, "mask": IMAGE, "prompt": "a full moon"},
    "image-editing": {"image": IMAGE, "prompt": "make it winter"},
    "id-customization": {"images": [IMAGE], "prompt": "a portrait of the person in a garden, soft light"},
    "subject-driven": {"image": IMAGE, "item": "dog", "prompt": "a dog on a beach"},
    "image-to-multiview": {"image": IMAGE, "cameras": CAMERAS},
    "text-to-multiview": {"prompt": "a ceramic teapot", "cameras": CAMERAS},
    "camera-pose-estimation": {"images": [IMAGE, IMAGE]},
    "generate": {"prompt": "[[text2image]] a red bicycle", "frames": [{"kind": "image", "generate": True}], "seed": 7},
}
REQUEST_EXAMPLES: dict[str, dict] = {task: {**example, **QUICK} for task, example in _EXAMPLES.items()}

# What the docs' multipart forms show in a field the task's example leaves out and that has no default:
# Swagger UI sends whatever a form field shows, and its own samples are "string" for text and the maximum
# for the seed (out of range once it goes through a JavaScript number).
FORM_FALLBACKS: dict[str, object] = {"seed": 42, "width": QUICK["width"], "height": QUICK["height"]}

BATCH_EXAMPLE = {"items": [
    {"task": "text-to-image", "prompt": "A lighthouse on a cliff at sunset, oil painting", "seed": 42, **QUICK},
    {"task": "text-to-image", "prompt": "A lighthouse on a cliff at sunset, oil painting", "seed": 43, **QUICK},
    {"task": "depth-estimation", "image": IMAGE, "output_format": "webp", **QUICK},
]}


def _error(type_: str, message: str, fields: list | None = None) -> dict:
    body = {"type": type_, "message": message}
    if fields:
        body["fields"] = fields
    return {"error": body}


_WIDTH = "Input should be a multiple of 16"
_ID = f"String should match pattern '{ID_PATTERN}'"
_LIMIT = "Input should be less than or equal to 100"


def _errors(settings: Settings) -> dict[str, tuple[str, dict]]:
    """name -> (summary, body), with this server's limits in the messages."""
    active = settings.max_active_jobs_per_tenant or 64
    return {
        "invalid_json": ("The body is not JSON", _error(
            "invalid_json", "the body is not valid JSON: Expecting value: line 1 column 1 (char 0)")),
        "unauthorized": ("No API key", _error("unauthorized", "send an API key: Authorization: Bearer <key>")),
        "invalid_key": ("A wrong or revoked key", _error("unauthorized", "the API key is not valid (wrong or revoked)")),
        "file_unauthorized": ("No key and no valid signature", _error(
            "unauthorized", "send an API key, or use the output's signed_url (it may have expired)")),
        "not_found": ("No such job", _error("not_found", "no such job or batch (ids expire with their results)")),
        "file_not_found": ("No such file", _error("not_found", "no such file (outputs expire with their job)")),
        "conflict": ("The job has not ended", _error(
            "conflict", "the job is running; cancel it first (POST https://api.example.com/v1/jobs/3f2a9c/cancel)")),
        "cannot_cancel": ("The job already ended", _error("conflict", "cannot cancel: the job already succeeded")),
        "redeliver_conflict": ("Still being delivered", _error(
            "conflict", "delivery 5d41ab is still being delivered (retrying); redeliver once it has ended")),
        "idempotency_mismatch": ("Key reused for another request", _error(
            "idempotency_mismatch", "this Idempotency-Key was used for a different request (job 3f2a9c); "
            "send a new key for a new request")),
        "payload_too_large": ("Body too large", _error(
            "payload_too_large",
            f"the request body is larger than {settings.max_body_bytes} bytes; send smaller or fewer images")),
        "unsupported_media_type": ("Neither JSON nor multipart", _error(
            "unsupported_media_type", "send application/json or multipart/form-data")),
        "batch_not_json": ("Not JSON", _error("unsupported_media_type", "send the batch as application/json")),
        "invalid_request": ("A field to change", _error(
            "invalid_request", f"width: {_WIDTH}", [{"field": "width", "message": _WIDTH}])),
        "invalid_path": ("A malformed id", _error(
            "invalid_request", f"job_id: {_ID}", [{"field": "job_id", "message": _ID}])),
        "invalid_batch_id": ("A malformed id", _error(
            "invalid_request", f"batch_id: {_ID}", [{"field": "batch_id", "message": _ID}])),
        "invalid_query": ("A query parameter to change", _error(
            "invalid_request", f"limit: {_LIMIT}", [{"field": "limit", "message": _LIMIT}])),
        "lossy_format": ("A format the output cannot take", _error(
            "invalid_request", "format: this output holds 16-bit values (depth); jpeg keeps 8 bits per channel and would "
            "change what they mean: fetch it as png, or fetch the depth preview image for a picture")),
        "rate_limited": ("Rate limit", _error(
            "rate_limited",
            f"more than {settings.rate_limit_per_minute or 120} submissions a minute for this key; retry in 12 s")),
        "quota_exceeded": ("Tenant quota", _error(
            "quota_exceeded", f"this tenant has {active} queued or running jobs and the limit is {active}; "
            "wait for some to finish")),
        "queue_full": ("Queue full", _error(
            "queue_full", f"the service queue is full ({settings.max_queue_depth or 2000} jobs waiting); retry later")),
        "too_many_streams": ("Too many event streams", _error(
            "too_many_streams", f"this API key has {settings.max_streams_per_key or 20} event streams open, the limit; "
            "close one or poll GET /v1/jobs/{id}")),
        "unavailable": ("Job store down", _error("unavailable", "the job store (Redis) is unreachable; retry shortly")),
        "store_full": ("Job store full", _error(
            "store_full", "the job store (Redis) is full and accepts no new work for now; jobs already accepted are "
            "kept and finish. Retry later")),
    }


def _names(path: str, method: str, code: str) -> list[str]:
    """Which errors an operation answers with this status."""
    submits = method == "post" and (path == "/v1/batches" or path.count("/") == 2)
    if code == "401":
        return ["file_unauthorized" if path.startswith("/v1/files/") else "unauthorized", "invalid_key"]
    if code == "415" and path == "/v1/batches":
        return ["batch_not_json"]
    if code == "404":
        return ["file_not_found" if path.startswith("/v1/files/") else "not_found"]
    if code == "409":
        if submits:
            return ["idempotency_mismatch"]
        if path.endswith("/redeliver"):
            return ["redeliver_conflict"]
        return ["cannot_cancel"] if path.endswith("/cancel") else ["conflict"]
    if code == "422":
        if path.startswith("/v1/files/"):
            return ["invalid_path", "lossy_format"]
        if submits:
            return ["invalid_request"]
        return ["invalid_batch_id"] if "{batch_id}" in path else ["invalid_path"] if "{job_id}" in path else ["invalid_query"]
    if code == "503" and submits:
        return ["unavailable", "store_full"]
    if code == "429":
        return ["too_many_streams"] if path.endswith("/events") else ["rate_limited", "quota_exceeded", "queue_full"]
    return [{"400": "invalid_json", "413": "payload_too_large",
             "415": "unsupported_media_type", "503": "unavailable"}[code]]


def error_examples(path: str, method: str, code: str, settings: Settings) -> dict:
    """The media type's `examples` for an error status of an operation."""
    errors = _errors(settings)
    return {name: {"summary": errors[name][0], "value": errors[name][1]} for name in _names(path, method, code)}
