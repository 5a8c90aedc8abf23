"""What the service needs of its Redis, checked when a process starts: a Redis that evicts keys to make
room drops queued jobs and finished results without a word, so the API, the workers and the webhook
deliverer refuse to start on one (a full Redis that does not evict refuses writes instead, which the
API answers with 503 and the workers wait out)."""

from __future__ import annotations

from typing import Optional

from redis import Redis

NEEDED_POLICY = "noeviction"


class EvictingRedis(RuntimeError):
    """The Redis may delete keys when full (maxmemory-policy other than noeviction)."""


def memory_policy(redis: Redis) -> Optional[tuple[str, int]]:
    """(maxmemory-policy, maxmemory in bytes) from INFO (allowed where CONFIG is not, as on managed Redis);
    None when the server does not say."""
    info = redis.info("memory")
    if "maxmemory_policy" not in info:
        return None
    return str(info["maxmemory_policy"]), int(info.get("maxmemory", 0) or 0)


def check_eviction(redis: Redis) -> None:
    """Raise EvictingRedis, with what to do, when the Redis may evict keys. Every policy but noeviction
    can: the volatile-* ones take keys with an expiry, and every job record and result has one."""
    found = memory_policy(redis)
    if found is None or found[0] == NEEDED_POLICY:
        return
    policy, limit = found
    when = f"when it reaches maxmemory ({limit} bytes)" if limit else "as soon as a maxmemory is set"
    raise EvictingRedis(
        f"the Redis has maxmemory-policy {policy}: it would delete queued jobs and finished results {when}. "
        f"Set `maxmemory-policy {NEEDED_POLICY}` (redis.conf, or `redis-cli config set maxmemory-policy {NEEDED_POLICY}`); "
        "a full Redis then refuses new submissions (503) and keeps what it holds"
    )

