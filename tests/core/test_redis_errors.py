"""What a Redis error means (full, switching, unreachable, refused), the Redis the service refuses to
run on, the Sentinel settings and connections, and the replica barrier; each against a real redis-server."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from core.connection import connect, keys_for, wait_replicated
from core.local_redis import find_redis_server
from core.redis_errors import classify, is_transient
from core.redis_policy import EvictingRedis, check_eviction
from core.settings import Settings, SettingsError
from tests.service.harness import RedisServer, free_port, wait_until


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of this test's own (its limits and roles are changed)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    stop(server)


def stop(server: RedisServer) -> None:
    """Stop a redis-server; kill it if it takes long (a replica can be busy syncing on a loaded machine)."""
    try:
        server.stop()
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(10)


def error_of(action) -> RedisError:
    with pytest.raises(RedisError) as caught:
        action()
    return caught.value


@pytest.mark.slow  # a replica to sync, a server to stop
def test_each_kind_of_redis_failure_is_told_apart(own_redis, tmp_path):
    redis = Redis.from_url(own_redis.url)
    redis.config_set("maxmemory", 1)
    try:
        full = error_of(lambda: redis.hset("some:key:of:another:tenant", "a", 1))
        in_pipeline = error_of(lambda: redis.pipeline().set("x", 1).hset("job:1234", "a", 1).execute())
        assert redis.get("x") is None and redis.delete("nothing") == 0  # reads and deletes still work
    finally:
        redis.config_set("maxmemory", 0)
    for exc in (full, in_pipeline):
        failure = classify(exc)
        assert failure.kind == "full" and is_transient(exc)
        assert "full" in failure.message and "unreachable" not in failure.message
        assert "key" not in failure.message and "1234" not in failure.message  # never what Redis named

    replica = RedisServer(tmp_path / "replica")
    replica.start()
    try:
        Redis.from_url(replica.url).replicaof("127.0.0.1", own_redis.port)
        demoted = error_of(lambda: Redis.from_url(replica.url).set("x", 1))
    finally:
        stop(replica)
    assert classify(demoted).kind == "switching" and is_transient(demoted)

    redis.config_set("min-replicas-to-write", 1)  # a master that refuses writes while no replica is in sync
    try:
        alone = error_of(lambda: redis.set("x", 1))
        alone_in_pipeline = error_of(lambda: redis.pipeline().set("x", 1).execute())
    finally:
        redis.config_set("min-replicas-to-write", 0)
    for exc in (alone, alone_in_pipeline):
        assert classify(exc).kind == "switching" and is_transient(exc), exc

    # (no retries: redis-py's default three, with backoff, only make the same error take 4 s)
    gone = error_of(lambda: Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)).get("x"))
    assert classify(gone).kind == "unreachable" and is_transient(gone)

    redis.set("a-string", "x")
    wrong = error_of(lambda: redis.hget("a-string", "field"))
    assert classify(wrong).kind == "refused" and not is_transient(wrong)


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "volatile-ttl", "allkeys-random"])
def test_an_evicting_redis_is_refused(own_redis, policy):
    redis = Redis.from_url(own_redis.url)
    redis.config_set("maxmemory-policy", policy)
    with pytest.raises(EvictingRedis, match=f"maxmemory-policy {policy}.*noeviction"):
        check_eviction(redis)
    redis.config_set("maxmemory-policy", "noeviction")
    check_eviction(redis)


class _Interrupted(Exception):
    pass


def _interrupt(*_):
    raise _Interrupted


def test_a_sentinel_client_cut_off_mid_reply_does_not_read_that_reply_as_the_next_answer(own_redis, tmp_path):
    """A worker or the scheduler of retries told to stop (SIGTERM) while it waits in BLPOP leaves that
    command's reply unread; the next command (releasing the scheduler's lock, the worker's record) must
    be answered at once and with its own reply, as on a plain connection, not with the BLPOP's when it
    times out (a deliverer then took a quarter of a minute to stop after a failover)."""
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nsentinel monitor odm 127.0.0.1 {own_redis.port} 1\n")
    sentinel = subprocess.Popen([find_redis_server(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT)
    previous = signal.signal(signal.SIGALRM, _interrupt)
    try:
        wait_until(lambda: _answers(port), 10, what="the sentinel")
        settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_SENTINELS": f"127.0.0.1:{port}",
                                      "REDIS_SENTINEL_MASTER": "odm"})
        for redis in (connect(settings), Redis.from_url(own_redis.url)):  # through Sentinel, and as plainly
            signal.setitimer(signal.ITIMER_REAL, 0.3)  # what a stop request does: raise out of the wait
            with pytest.raises(_Interrupted):
                redis.blpop(["odm:nothing"], timeout=3)
            started = time.monotonic()
            assert redis.set("odm:x", "1") is True and redis.get("odm:x") == b"1"
            assert time.monotonic() - started < 1.5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        sentinel.kill()
        sentinel.wait(10)


def _answers(port: int) -> bool:
    try:
        return bool(Redis(port=port, socket_timeout=1).sentinel_get_master_addr_by_name("odm"))
    except RedisError:
        return False


def test_sentinel_settings_are_checked_and_name_the_variable():
    settings = Settings.from_env({"REDIS_SENTINELS": "s0:26379, [::1]:26380", "REDIS_SENTINEL_MASTER": "main"})
    assert settings.wait_replicas == 1  # Sentinel means a replica: a 202 waits for it unless told otherwise
    assert Settings.from_env({}).wait_replicas == 0
    assert Settings.from_env({"REDIS_SENTINELS": "s0:26379", "REDIS_WAIT_REPLICAS": "0"}).wait_replicas == 0
    for bad in ("s0", "s0:port", ":26379", "s0:70000"):
        with pytest.raises(SettingsError, match="REDIS_SENTINELS"):
            Settings.from_env({"REDIS_SENTINELS": bad})


@pytest.mark.slow
def test_the_replica_barrier_waits_for_a_replica_and_counts_a_shortfall(own_redis, tmp_path):
    plain = Settings.from_env({"REDIS_URL": own_redis.url, "QUEUE_PREFIX": "odbarrier"})
    assert wait_replicated(connect(plain), plain) is None  # nothing asked: no round trip at all

    strict = Settings.from_env({"REDIS_URL": own_redis.url, "QUEUE_PREFIX": "odbarrier", "REDIS_WAIT_REPLICAS": "1",
                                "REDIS_WAIT_TIMEOUT_MS": "200"})
    redis = connect(strict)
    started = time.monotonic()
    assert wait_replicated(redis, strict) == 0  # no replica: the wait ends at its timeout
    assert 0.15 < time.monotonic() - started < 5
    metric = 'unreplicated_writes_total{what="submission"}'
    assert float(redis.hget(keys_for("odbarrier").metrics, metric)) == 1

    redis.config_set("repl-diskless-sync-delay", 0)  # the replica's first sync starts at once, not 5 s later
    replica = RedisServer(tmp_path / "replica")
    replica.start()
    try:
        Redis.from_url(replica.url).replicaof("127.0.0.1", own_redis.port)
        deadline = time.monotonic() + 20
        while Redis.from_url(replica.url).info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.1)
        redis.set("written", "before the barrier")
        # a replica that is there answers within the timeout; on a busy machine that can take over 200 ms
        patient = Settings.from_env({"REDIS_URL": own_redis.url, "QUEUE_PREFIX": "odbarrier",
                                     "REDIS_WAIT_REPLICAS": "1", "REDIS_WAIT_TIMEOUT_MS": "10000"})
        assert wait_replicated(redis, patient) == 1
        assert Redis.from_url(replica.url).get("written") == b"before the barrier"
    finally:
        stop(replica)
