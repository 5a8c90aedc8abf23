"""The Redis connection (directly, or to the master that Sentinel names), the durability barrier after
a submission, and the names of the keys the service keeps beside RQ's own."""

from __future__ import annotations

import logging
from functools import lru_cache

from redis import Redis
from redis.connection import parse_url
from redis.exceptions import RedisError
from redis.sentinel import Sentinel, SentinelManagedConnection
from rq import Queue

from .metrics import Metrics
from .settings import Settings, sentinel_addresses

log = logging.getLogger(__name__)

# Short timeouts, so an outage (or a master lost to a failover) is noticed, not waited out.
CLIENT_OPTIONS = dict(socket_connect_timeout=3, socket_timeout=10, health_check_interval=15, retry_on_timeout=True)
SENTINEL_OPTIONS = dict(socket_connect_timeout=1, socket_timeout=1)


class _SentinelConnection(SentinelManagedConnection):
    """redis-py's connection to the master Sentinel names, closed when reading a reply ends in an exception,
    as a plain connection is. redis-py's own keeps such a connection open by default: one left waiting for a
    reply (a BLPOP that a signal handler's exception cut short, as when a worker or the scheduler of retries
    is told to stop while it waits) went back to the pool, and the next command sent on it read the reply
    of the one before, and so on (a DEL answered with an earlier script's error), until a read timed out:
    a deliverer took a quarter of a minute to stop on SIGTERM."""

    def read_response(self, *args, disconnect_on_error: bool = True, **kwargs):
        return super().read_response(*args, disconnect_on_error=disconnect_on_error, **kwargs)


def connect(settings: Settings) -> Redis:
    """A client for RQ (bytes, not decoded). With REDIS_SENTINELS, a client of the master the sentinels
    name: every new connection asks them, and one to a master that was demoted (READONLY) or went away
    is dropped, so a failover is followed without a restart (commands in flight then fail like an outage:
    the API answers 503, workers retry). REDIS_URL then gives only the database number and credentials."""
    sentinels = sentinel_addresses(settings.redis_sentinels)
    if not sentinels:
        return Redis.from_url(settings.redis_url, **CLIENT_OPTIONS)
    url = parse_url(settings.redis_url)
    master = {k: url[k] for k in ("db", "username", "password") if url.get(k) is not None}
    sentinel = Sentinel(sentinels, sentinel_kwargs=dict(SENTINEL_OPTIONS), **CLIENT_OPTIONS)
    return sentinel.master_for(settings.redis_sentinel_master, connection_class=_SentinelConnection, **master)


def describe(settings: Settings) -> str:
    """Where this process finds Redis, for messages (no password)."""
    if settings.redis_sentinels.strip():
        return f"the master {settings.redis_sentinel_master!r} of REDIS_SENTINELS={settings.redis_sentinels}"
    url = parse_url(settings.redis_url)
    return f"REDIS_URL=redis://{url.get('host', '127.0.0.1')}:{url.get('port', 6379)}/{url.get('db', 0)}"


def wait_replicated(redis: Redis, settings: Settings, what: str = "submission") -> int | None:
    """Block until REDIS_WAIT_REPLICAS replicas hold every write acknowledged so far (at most
    REDIS_WAIT_TIMEOUT_MS); the number of replicas that do, or None when nothing was asked. `what` names
    the writes for the log and the metric: a "submission" (before its 202), a worker's "job_start" and
    "job_end".

    Redis's WAIT counts the writes of the connection it is sent on, and a pooled client may send it on
    another connection than the one that queued the job; so a PUBLISH (replicated, never stored nor
    written to the append-only file) goes first on the same connection: the replicas that acknowledged
    it also hold every write that came before it, the job's included. A shortfall is logged and
    counted; the job stays queued either way (see docs/operations.md, "What is guaranteed")."""
    wanted = settings.wait_replicas
    if wanted <= 0:
        return None
    keys = keys_for(settings.queue_prefix)
    with redis.pipeline(transaction=False) as pipe:
        pipe.publish(keys.replication_barrier, b"")
        pipe.execute_command("WAIT", wanted, settings.redis_wait_timeout_ms)
        _, acked = pipe.execute()
    if acked < wanted:
        log.warning("%s held by %d of %d replicas after %d ms", what, acked, wanted, settings.redis_wait_timeout_ms)
        try:
            Metrics(redis, keys).inc("unreplicated_writes_total", {"what": what})
        except RedisError:  # a count, never a reason to fail the submission
            pass
    return acked


class Keys:
    """Key names under one prefix (the queue prefix), so several deployments can share a Redis."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    @property
    def inference_queue(self) -> str:
        return self.prefix

    @property
    def webhook_queue(self) -> str:
        return f"{self.prefix}-webhooks"

    def progress(self, job_id: str) -> str:
        return f"{self.prefix}:progress:{job_id}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:cancel:{job_id}"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    def batch_ended(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}:ended"

    def batch_webhooks_pending(self, batch_id: str) -> str:
        """Set of the batch's item deliveries not yet done (delivered, refused or out of retries)."""
        return f"{self.prefix}:batch:{batch_id}:webhooks-pending"

    def active_jobs(self, tenant: str) -> str:
        """Set of the tenant's queued or running job ids (its quota)."""
        return f"{self.prefix}:active:{tenant}"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:idempotency:{key}"

    @property
    def workers(self) -> str:
        """Sorted set: worker name -> last heartbeat (unix seconds) of workers with a loaded model."""
        return f"{self.prefix}:workers"

    def worker_info(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    @property
    def step_seconds(self) -> str:
        """Hash: token shape -> the measured seconds of one denoising step (workers keep it; ETAs use it)."""
        return f"{self.prefix}:step-seconds"

    @property
    def metrics(self) -> str:
        return f"{self.prefix}:metrics"

    @property
    def url_signing_secret(self) -> str:
        return f"{self.prefix}:url-signing-secret"

    @property
    def replication_barrier(self) -> str:
        """Pub/sub channel of the writes that `wait_replicated` waits for (nobody listens)."""
        return f"{self.prefix}:replication-barrier"

    def webhook_host_slots(self, host: str) -> str:
        """Sorted set: webhook deliveries in flight to `host` -> when their hold expires (unix seconds)."""
        return f"{self.prefix}:webhook-host:{host.lower()}"


@lru_cache(maxsize=8)
def keys_for(prefix: str) -> Keys:
    return Keys(prefix)


def queues(redis: Redis, settings: Settings) -> tuple[Queue, Queue]:
    """(inference queue: fair between tenants (core/queueing.py), webhook queue: RQ's FIFO)."""
    from .queueing import fair_queue, parse_weights

    keys = keys_for(settings.queue_prefix)
    inference = fair_queue(redis, keys.inference_queue, parse_weights(settings.tenant_weights).items())
    return inference, Queue(keys.webhook_queue, connection=redis)
