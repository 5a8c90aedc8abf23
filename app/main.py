"""The gateway: a FastAPI app that validates task requests, queues them in Redis and serves results.

It imports no torch, diffusers or transformers, so it starts in a second in a small CPU container."""

from __future__ import annotations

import mimetypes
from typing import Optional

from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from core.logs import setup_logging
from core.settings import Settings, get_settings
from model.decode_budget import DECODE_BUDGET, map_large_blocks

from . import errors
from .access_log import AccessLog
from .body import BodyLimit
from .docs import mount_docs
from .form_schema import add_forms
from .openapi_doc import operation_id, refine
from .routes import batches, files, health, jobs, tasks, usage
from .schemas import REQUEST_MODELS, BatchRequest
from .state import open_state
from .storage_check import storage_writable

DESCRIPTION = """OneDiffusion as a service: one diffusion transformer for text-to-image, condition-to-image,
estimation (depth, edges, pose, segmentation, detection), restoration, editing, ID customization,
subject-driven generation, multiview generation and camera pose estimation.

Submit a task (`POST /v1/<task>`), get `202` with the job; poll `GET /v1/jobs/{id}`, stream
`GET /v1/jobs/{id}/events`, or pass a webhook. Outputs are served under `/v1/files/`.
A web playground for every task is at `/playground/`.

The request examples are sized to finish in seconds on the CPU demo checkpoint (256x256, 8 steps). For
real results, run the released weights on a GPU with the model's defaults (1024x1024 text-to-image,
50 steps and more): docs/gpu.md and benchmarks/RESULTS.md have the figures."""

PLAYGROUND_DIR = Path(__file__).parent / "static" / "playground"


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    settings = settings or get_settings()
    setup_logging("api")
    app = FastAPI(title="OneDiffusion service", version="0.1.0", description=DESCRIPTION, docs_url=None, redoc_url=None,
                  generate_unique_id_function=operation_id)
    map_large_blocks()  # decoded images go back to the system when freed
    DECODE_BUDGET.configure(settings.decode_budget_mb * 1024 * 1024, settings.decode_wait_s)
    open_state(app, settings)
    errors.install(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(AccessLog)  # outermost: every request gets its line and id, refused ones too
    mount_docs(app)  # /docs and /redoc with their assets served here, not from a CDN
    origins = [o.strip().rstrip("/") for o in settings.cors_allow_origins.split(",") if o.strip()]
    if origins:  # opt-in: only the listed origins; API keys travel in Authorization, so no cookies
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["GET", "HEAD", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Prefer", "X-Request-ID", "If-None-Match"],
            expose_headers=["Location", "Retry-After", "ETag", "X-Request-ID", "Preference-Applied"], max_age=600,
        )
    for module in (tasks, jobs, batches, usage, files, health):
        needs_storage = module in (tasks, batches)  # submissions: 503 while the storage takes no writes
        app.include_router(module.router, dependencies=[Depends(storage_writable)] if needs_storage else [])
    mount_playground(app)

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (*REQUEST_MODELS.values(), BatchRequest):
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(definition.pop("$defs", {}))
            components[model.__name__] = definition
        add_forms(schema, REQUEST_MODELS)
        app.openapi_schema = refine(schema, settings)
        return app.openapi_schema

    app.openapi = openapi
    return app


class PlaygroundFiles(StaticFiles):
    """The playground's files, each load checked again (`no-cache`: a 304 while unchanged), so that after an
    upgrade a browser never runs a mix of old and new modules."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def mount_playground(app: FastAPI) -> None:
    """The web playground (plain HTML, CSS and JavaScript modules from app/static/playground) at /playground/,
    linked from /."""
    # Browsers run a module only when it comes as JavaScript; the system's MIME table (the Windows registry,
    # a sparse /etc/mime.types) may say otherwise.
    mimetypes.add_type("text/javascript", ".js")
    app.mount("/playground", PlaygroundFiles(directory=PLAYGROUND_DIR, html=True), name="playground")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/playground/")
