"""Shared fixtures: the golden data, one demo checkpoint per session, and real service stacks
(Redis, API, workers, webhook deliverer, a local webhook receiver) for the service and chaos tests."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import file_order
from tests.paths import FIXTURES
from tests.service.harness import RedisServer, Service, WebhookReceiver

os.environ.setdefault("ONEDIFFUSION_ATTENTION", "math")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"golden fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory) -> Path:
    from model.demo_checkpoint import make_demo_checkpoint

    return make_demo_checkpoint(tmp_path_factory.mktemp("demo") / "checkpoint")


@pytest.fixture(scope="session")
def demo_model(demo_checkpoint):
    from model.pipeline import OneDiffusion

    return OneDiffusion.load(str(demo_checkpoint), device="cpu")


def make_image(width: int = 96, height: int = 64, seed: int = 0, fmt: str = "PNG") -> bytes:
    """A random-ish but smooth RGB test image, encoded."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    pixels = (base + rng.normal(0, 10, base.shape)).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def b64_image(*args, **kwargs) -> str:
    return base64.b64encode(make_image(*args, **kwargs)).decode()


# ---- real processes -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A redis-server of our own on a free port; TEST_REDIS_URL names another one instead.

    Whatever answers on 6379 belongs to somebody else: the suite never touches it unless told to."""
    if os.environ.get("TEST_REDIS_URL"):
        yield os.environ["TEST_REDIS_URL"]
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def make_service(tmp_path, redis_url, demo_checkpoint, request):
    """Start a service stack; stopped (and its logs printed on failure) at the end of the test."""
    stacks = []

    def make(redis=None, **kwargs) -> Service:
        service = Service(tmp_path / f"stack{len(stacks)}", redis or redis_url, demo_checkpoint, **kwargs)
        stacks.append(service)
        return service

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for service in stacks:
        if failed:
            print(service.logs())
        service.stop()


@pytest.fixture(scope="module")
def shared_service(tmp_path_factory, redis_url, demo_checkpoint):
    """One stack (API, one worker, the deliverer) shared by a module's tests."""
    service = Service(tmp_path_factory.mktemp("shared"), redis_url, demo_checkpoint, results_ttl_s=3600)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def worker_model(tmp_path_factory, redis_url, demo_checkpoint):
    """The demo model as a worker loads it (precision, fast path), once per pytest worker, for the
    in-process tier (tests/service/inprocess.py)."""
    from tests.service.inprocess import worker_settings
    from worker.model_host import load_model

    return load_model(worker_settings(tmp_path_factory.mktemp("worker-model"), redis_url, demo_checkpoint))


@pytest.fixture
def make_inprocess(tmp_path, redis_url, demo_checkpoint, worker_model):
    """Start an in-process stack (gateway under TestClient, workers on threads); stopped at the test's end."""
    from tests.service.inprocess import InProcessService

    stacks = []

    def make(**kwargs) -> InProcessService:
        stack = InProcessService(tmp_path / f"inprocess{len(stacks)}", redis_url, demo_checkpoint, worker_model, **kwargs)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


@pytest.fixture(scope="module")
def inprocess_service(tmp_path_factory, redis_url, demo_checkpoint, worker_model):
    """One in-process stack (gateway, one worker) shared by a module's tests."""
    from tests.service.inprocess import InProcessService

    stack = InProcessService(tmp_path_factory.mktemp("inprocess"), redis_url, demo_checkpoint, worker_model, results_ttl_s=3600)
    yield stack
    stack.stop()


@pytest.fixture
def receiver():
    hook = WebhookReceiver()
    yield hook
    hook.down()


STACK_FOLDERS = ("service", "client", "chaos")  # tests that start real processes: the `stack` tier
IN_PROCESS_FIXTURES = {"inprocess_service", "make_inprocess"}  # tests/service/inprocess.py: the `inprocess` tier


def pytest_collection_modifyitems(config, items):
    """Tiers by place: tests under tests/service, tests/client and tests/chaos start real processes
    (`stack`), unless they run on an in-process stack (`inprocess`); the playground's are `browser` too. `make test-fast` runs the rest, less what is `slow`.
    Files run longest first (tests/file_order.py)."""
    root = Path(__file__).resolve().parent
    for item in items:
        parts = Path(str(item.fspath)).resolve().relative_to(root).parts
        if set(getattr(item, "fixturenames", ())) & IN_PROCESS_FIXTURES:
            item.add_marker(pytest.mark.inprocess)
        elif parts and parts[0] in STACK_FOLDERS:
            item.add_marker(pytest.mark.stack)
        if "playground" in item.nodeid and parts and parts[0] == "client":
            item.add_marker(pytest.mark.browser)
        if item.get_closest_marker("gpu") and not _cuda():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
    items[:] = file_order.longest_first(items, file_order.load())


def pytest_configure(config):
    """TEST_DURATIONS_OUT=path records each file's seconds there (`make test-durations`)."""
    if os.environ.get("TEST_DURATIONS_OUT") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(file_order.Recorder(Path(os.environ["TEST_DURATIONS_OUT"])), "file-durations")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


def pytest_sessionfinish(session, exitstatus):
    """The warm parent of the service processes (tests/service/forked.py) ends with the session."""
    from tests.service.harness import close_launcher

    close_launcher()
