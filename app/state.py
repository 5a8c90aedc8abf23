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
    state.storage_gate = StorageGate(state.store)
    state.image_fetcher = ImageFetcher(settings)
    state.keystore = KeyStore(state.redis, state.jobs.keys)
    state.stream_slots = StreamSlots(state.redis, state.jobs.keys.prefix, settings.max_streams_per_key,
                                     settings.max_streams_per_tenant)
    state.job_watcher = JobWatcher(state.jobs)


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _jobs(request: Request) -> JobService:
    return request.app.state.jobs


async def _store(request: Request) -> BlobStore:
    return request.app.state.store


async def _storage_gate(request: Request) -> StorageGate:
    return request.app.state.storage_gate


async def _image_fetcher(request: Request) -> ImageFetcher:
    return request.app.state.image_fetcher


async def _keystore(request: Request) -> KeyStore:
    return request.app.state.keystore


async def _stream_slots(request: Request) -> StreamSlots:
    return request.app.state.stream_slots


async def _job_watcher(request: Request) -> JobWatcher:
    return request.app.state.job_watcher


ServerSettings = Annotated[Settings, Depends(_settings)]
Jobs = Annotated[JobService, Depends(_jobs)]
Store = Annotated[BlobStore, Depends(_store)]
Gate = Annotated[StorageGate, Depends(_storage_gate)]
Fetcher = Annotated[ImageFetcher, Depends(_image_fetcher)]
KeyRing = Annotated[KeyStore, Depends(_keystore)]
Slots = Annotated[StreamSlots, Depends(_stream_slots)]
Watcher = Annotated[JobWatcher, Depends(_job_watcher)]
