"""The Redis connection and the names of the keys the service keeps beside RQ's own."""

from __future__ import annotations

from functools import lru_cache

from redis import Redis
from rq import Queue

from .settings import Settings


def connect(settings: Settings) -> Redis:
    """A client for RQ (bytes, not decoded). Short timeouts, so an outage is noticed, not waited out."""
    return Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=3,
        socket_timeout=10,
        health_check_interval=15,
        retry_on_timeout=True,
    )


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
