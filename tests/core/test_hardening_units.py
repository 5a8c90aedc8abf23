"""The hardening checks that need no service: the SSRF guard's tunnelled addresses, the schema's bounds,
and the warning about a Redis that keeps nothing on disk (against a real redis-server)."""

from __future__ import annotations

import subprocess

import pytest

from core.webhook_guard import UnsafeWebhook, resolve_checked
from tests.service.harness import RedisServer, free_port, wait_until


@pytest.mark.parametrize("url,words", [
    ("http://[2002:a9fe:a9fe::1]/", "cloud metadata"),  # 6to4 of 169.254.169.254
    ("http://[2002:7f00:1::]/", "loopback"),  # 6to4 of 127.0.0.1
    ("http://[2002:0a00:0001::]/", "private"),  # 6to4 of 10.0.0.1
    ("http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/", "private"),  # Teredo, client 10.0.0.1
    ("http://[64:ff9b::a9fe:a9fe]/", "cloud metadata"),  # NAT64
])
def test_tunnelled_private_addresses_are_refused(url, words):
    with pytest.raises(UnsafeWebhook) as refused:
        resolve_checked(url, [])
    assert words in str(refused.value)


def test_tunnelled_public_addresses_pass():
    assert resolve_checked("http://[2002:0808:0808::1]/hook", [])[1] == "2002:808:808::1"


def _bounded(schema: dict, defs: dict, path: str, problems: list) -> None:
    if "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        if name in defs and name not in _bounded.seen:
            _bounded.seen.add(name)
            _bounded(defs[name], defs, name, problems)
        return
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            _bounded(option, defs, path, problems)
    kind = schema.get("type")
    if kind == "string" and "enum" not in schema and "const" not in schema and "maxLength" not in schema:
        problems.append(f"{path}: string without maxLength")
    if kind == "array":
        if "maxItems" not in schema:
            problems.append(f"{path}: array without maxItems")
        _bounded(schema.get("items", {}), defs, path + "[]", problems)
    for name, sub in schema.get("properties", {}).items():
        _bounded(sub, defs, f"{path}.{name}", problems)


def test_every_string_and_list_of_every_request_is_bounded_in_the_schema():
    from app.schemas import REQUEST_MODELS, BatchRequest

    problems: list[str] = []
    for model in (*REQUEST_MODELS.values(), BatchRequest):
        schema = model.model_json_schema()
        _bounded.seen = set()
        _bounded(schema, schema.get("$defs", {}), model.__name__, problems)
    assert not problems, problems


def test_redis_without_persistence_is_warned_about(tmp_path):
    from core.local_redis import ensure_redis, find_redis_server

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    bare = subprocess.Popen([find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
                             "--appendonly", "no", "--save", ""], stdout=subprocess.DEVNULL)
    try:
        from core.local_redis import answers

        wait_until(lambda: answers(url), 10, what="redis")
        said: list[str] = []
        assert ensure_redis(url, tmp_path / "unused", log=said.append) is None
        assert any("persistence off" in line for line in said), said
    finally:
        bare.terminate()
        bare.wait(10)
    persistent = RedisServer(tmp_path / "aof")
    persistent.start()
    try:
        said = []
        ensure_redis(persistent.url, tmp_path / "unused", log=said.append)
        assert said == []
    finally:
        persistent.stop()


def test_webhook_host_slots_are_shared_across_processes(redis_url):
    """The per-host limit is one count in Redis, not one per deliverer process: a slot taken in another
    process is seen here, is given back when its delivery ends, and lapses if its holder died."""
    import multiprocessing
    import time

    from redis import Redis

    from worker.webhooks import HostSlots

    redis = Redis.from_url(redis_url)
    key = f"test:webhook-host:{time.time_ns()}"
    slots = HostSlots()
    taken, release = multiprocessing.Event(), multiprocessing.Event()

    def hold_elsewhere():
        with HostSlots().hold(Redis.from_url(redis_url), key, 1, 30) as held:
            assert held
            taken.set()
            release.wait(30)

    other = multiprocessing.get_context("fork").Process(target=hold_elsewhere)
    other.start()
    try:
        assert taken.wait(30)
        with slots.hold(redis, key, 1, 30) as held:
            assert not held  # the other process has the host's one slot
        release.set()
        other.join(30)
        with slots.hold(redis, key, 1, 30) as held:
            assert held  # given back when that delivery ended
    finally:
        release.set()
        other.join(5)
    with slots.hold(redis, key, 1, 0.2) as held:  # a holder that never gives its slot back ...
        assert held
        time.sleep(0.4)
        with slots.hold(redis, key, 1, 30) as again:
            assert again  # ... loses it when its hold lapses


def test_a_freed_webhook_slot_goes_to_the_delivery_that_waited_longest(redis_url):
    """A delivery put back because its host was busy keeps its place: when the slot frees, a delivery
    that asks later (a stalling receiver's own retry) waits behind it; a waiter that stops asking loses
    its place."""
    import time

    from redis import Redis

    from worker.webhooks import HostSlots

    redis = Redis.from_url(redis_url)
    key = f"test:webhook-host:{time.time_ns()}"
    slots = HostSlots(waiter_gone_s=0.5)
    with slots.hold(redis, key, 1, 30, waiter="stalled") as held:
        assert held
        with slots.hold(redis, key, 1, 30, waiter="queued") as held:
            assert not held  # busy: "queued" now waits its turn
    with slots.hold(redis, key, 1, 30, waiter="stalled-retry") as held:
        assert not held  # free, but "queued" asked first
    with slots.hold(redis, key, 1, 30, waiter="queued") as held:
        assert held
        with slots.hold(redis, key, 1, 30, waiter="stalled-retry") as held:
            assert not held
    with slots.hold(redis, key, 1, 30) as held:
        assert not held  # an unnamed ask neither waits nor passes a waiter
    time.sleep(0.6)  # "stalled-retry" stopped asking
    with slots.hold(redis, key, 1, 30, waiter="late") as held:
        assert held
    assert redis.zcard(f"{key}:waiting") == 0 and redis.zcard(f"{key}:asked") == 0
