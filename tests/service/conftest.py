"""Fixtures for tests against real processes."""

from __future__ import annotations

import pytest

from tests.service.harness import RedisServer, Service, WebhookReceiver


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """The machine's Redis (a database of its own) when one answers, else a redis-server we start."""
    from app.local_redis import answers

    if answers("redis://127.0.0.1:6379/9"):
        yield "redis://127.0.0.1:6379/9"
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


@pytest.fixture
def receiver():
    hook = WebhookReceiver()
    yield hook
    hook.down()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)
