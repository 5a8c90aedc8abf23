"""What the gateway holds for its lifetime: made once by `open_state` on `app.state`, and handed to the route
functions as typed FastAPI dependencies (`jobs: Jobs`, not `request.app.state.jobs`). Each dependency takes
only the request, so none of them adds anything to the OpenAPI document; each is a coroutine, so handing
one over costs no trip to the thread pool."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request

from core.connection import connect
from core.settings import Settings
from core.storage import BlobStore, StorageGate, open_store

from .api_keys import KeyStore
from .image_urls import ImageFetcher
from .jobs import JobService
from .streams import JobWatcher, StreamSlots


def open_state(app: FastAPI, settings: Settings) -> None:
    """Connect to Redis, open the result store and build the services the routes share."""
    state = app.state
    state.settings = settings
    state.redis = connect(settings)
    state.store = open_store(settings)
    state.jobs = JobService(state.redis, settings, store=state.store)  # stores the inputs it queues
    state.storage_gate = StorageGate(state.store, ok_ttl_s=settings.storage_check_s)
    state.image_fetcher = ImageFetcher(settings)
    state.keystore = KeyStore(state.redis, state.jobs.keys)
    state.stream_slots = StreamSlots(state.redis, state.jobs.keys.prefix, settings.max_streams_per_key,
                                     settings.max_streams_per_tenant)
    state.job_watcher = JobWatcher(state.jobs)


def _held(name: str):
    """A dependency handing over `app.state.<name>`, made once by `open_state`."""

    async def held(request: Request):
        return getattr(request.app.state, name)

    held.__name__ = f"held_{name}"
    return Depends(held)


ServerSettings = Annotated[Settings, _held("settings")]
Jobs = Annotated[JobService, _held("jobs")]
Store = Annotated[BlobStore, _held("store")]
Gate = Annotated[StorageGate, _held("storage_gate")]
Fetcher = Annotated[ImageFetcher, _held("image_fetcher")]
KeyRing = Annotated[KeyStore, _held("keystore")]
Slots = Annotated[StreamSlots, _held("stream_slots")]
Watcher = Annotated[JobWatcher, _held("job_watcher")]
