"""What a Redis error means for the caller: the store is full, it is switching masters, or it cannot be
reached. The API answers each with its own 503 and message; workers wait and retry what can be retried.

Messages of redis-py's errors can name keys (a failed pipeline names its command and arguments, so job
ids of other tenants), so none of them is ever shown to a client or written into a job's error."""

from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import (
    BusyLoadingError,
    ConnectionError as RedisConnectionError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    TimeoutError as RedisTimeoutError,
    TryAgainError,
)
from redis.sentinel import MasterNotFoundError

# Error replies that mean "not now" rather than "never": a replica promoted or demoted, a master that lost
# its replicas (min-replicas-to-write), a server loading its data or busy with a script. redis-py has
# classes for some (SWITCHING_ERRORS); the others keep their code at the start of the message.
SWITCHING_ERRORS = (ReadOnlyError, BusyLoadingError, MasterDownError, TryAgainError, MasterNotFoundError)
_SWITCHING_CODES = ("READONLY", "MASTERDOWN", "NOREPLICAS", "LOADING", "TRYAGAIN", "BUSY ")


@dataclass(frozen=True)
class RedisFailure:
    kind: str  # "full", "switching", "unreachable" or "refused"
    message: str  # for a client: says what happened, names nothing stored
    retry_after_s: int


def is_out_of_memory(exc: BaseException) -> bool:
    """The Redis reached maxmemory (noeviction) and refuses writes (and every command queued in a
    MULTI); reads and plain deletes still work."""
    return isinstance(exc, OutOfMemoryError) or (isinstance(exc, RedisError) and "used memory > 'maxmemory'" in str(exc))


def is_transient(exc: BaseException) -> bool:
    """Worth retrying as it is: an outage, a failover, a full store (it drains as jobs expire or are
    deleted). Not a bug of ours such as WRONGTYPE."""
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError)) or classify(exc).kind in ("full", "switching")


def classify(exc: BaseException) -> RedisFailure:
    if is_out_of_memory(exc):
        return RedisFailure("full", "the job store (Redis) is full and accepts no new work for now; "
                                    "jobs already accepted are kept and finish. Retry later", 30)
    text = str(exc).upper()
    if isinstance(exc, SWITCHING_ERRORS) or any(text.startswith(c) or f"ERROR: {c}" in text for c in _SWITCHING_CODES):
        return RedisFailure("switching", "the job store (Redis) is switching to another server or starting; retry shortly", 5)
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return RedisFailure("unreachable", "the job store (Redis) is unreachable; retry shortly", 5)
    return RedisFailure("refused", "the job store (Redis) refused the operation; it has been logged, retry shortly", 5)
