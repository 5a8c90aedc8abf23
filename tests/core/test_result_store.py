"""Outputs are stored atomically, served by name only, and expire with their time-to-live."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from core.settings import Settings
from core.storage import LocalStore, convert


def test_save_path_and_names(tmp_path):
    store = LocalStore(tmp_path)
    store.save("job1", "image.png", b"data")
    assert store.path("job1", "image.png").read_bytes() == b"data"
    assert store.path("job1", "missing.png") is None
    assert store.path("../etc", "passwd") is None and store.path("job1", "../x") is None
    with pytest.raises(ValueError):
        store.save("job1", "../escape.png", b"x")
    assert not list(tmp_path.glob("job1/.*.tmp"))


def test_the_same_input_stored_by_many_threads_at_once(tmp_path):
    """Two requests with the same image reach the gateway together: both store one blob, neither fails."""
    store = LocalStore(tmp_path)
    data = os.urandom(2_000_000)
    for _ in range(5):
        with ThreadPoolExecutor(8) as pool:
            digests = list(pool.map(lambda _: store.save_input(data), range(8)))
        assert set(digests) == {digests[0]}
        assert store.load_input(digests[0]) == data
        (tmp_path / "_inputs" / digests[0]).unlink()
    assert not list((tmp_path / "_inputs").glob(".*.tmp"))


def test_sweep_removes_only_expired_folders(tmp_path):
    store = LocalStore(tmp_path)
    store.save("old", "a.png", b"1")
    store.save("new", "a.png", b"2")
    past = time.time() - 7200
    os.utime(tmp_path / "old", (past, past))
    assert store.sweep(ttl_s=3600) == 1
    assert store.path("old", "a.png") is None and store.path("new", "a.png") is not None


def test_worker_maintenance_sweeps_outputs(tmp_path, redis_url):
    """The worker's periodic maintenance (RQ's registry cleanup) also expires output folders."""
    from redis import Redis

    from worker.batch_worker import BatchWorker

    store = LocalStore(tmp_path)
    store.save("expired", "a.png", b"1")
    os.utime(tmp_path / "expired", (time.time() - 10_000,) * 2)
    settings = Settings(redis_url=redis_url, results_ttl_s=3600, queue_prefix="sweeptest")
    redis = Redis.from_url(redis_url)
    from core.queueing import fair_queue

    worker = BatchWorker([fair_queue(redis, "sweeptest")], redis, SimpleNamespace(store=store, model=SimpleNamespace(live_batch=None)), settings, name=f"sweep-{os.getpid()}")
    worker.run_maintenance_tasks()
    assert not (tmp_path / "expired").exists()


def test_formats(tmp_path):
    from tests.conftest import make_image

    png = make_image(32, 32)
    assert convert(png, "png") == (png, "image/png")
    webp, media = convert(png, "webp")
    assert media == "image/webp" and webp[:4] == b"RIFF"
    jpeg, media = convert(png, "jpeg")
    assert media == "image/jpeg" and jpeg[:2] == b"\xff\xd8"


def test_sixteen_bit_depth_refuses_8_bit_formats():
    """webp/jpeg would squeeze 16-bit depth values into 8 bits and change their meaning: refused (the
    route answers 422); PNG keeps them."""
    import numpy as np
    import pytest

    from core.storage import LossyConversion
    from model.outputs import encode_png16

    png16 = encode_png16((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    for fmt in ("jpeg", "webp"):
        with pytest.raises(LossyConversion, match="16-bit"):
            convert(png16, fmt)
    assert convert(png16, "png") == (png16, "image/png")