"""Webhook delivery: an RQ job on its own queue, run by the deliverer process (not the GPU loop).

A failed call (network error, timeout, non-2xx) raises, and RQ's `Retry` schedules the next attempt
with exponential backoff; the job's result in Redis is untouched either way. Redirects are not followed.
Each attempt has one deadline for all of it (WEBHOOK_TIMEOUT_S: connect, send, headers and body), the
deliverer runs several deliveries at once (WEBHOOK_CONCURRENCY), at most WEBHOOK_PER_HOST of them to one
destination address (counted per resolved address, so many names for one server share its slots) and
at most WEBHOOK_PER_TENANT for one tenant: a delivery over either limit is put back for a second, not
waited for, so a receiver that stalls, or a tenant whose receivers do, holds only its own slots; a put-back
delivery keeps its place in the host's line (`HostSlots`)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import httpx
from rq import Queue, Retry, get_current_job

from core.job_store import JobStore
from core.settings import get_settings
from core.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, standard_headers
from core.webhook_guard import UnsafeWebhook, parse_allowlist, resolve_checked

log = logging.getLogger(__name__)


class DeliveryFailed(RuntimeError):
    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class HostSlots:
    """Deliveries in flight per destination host, counted in Redis so the limit holds across every
    deliverer process and thread (the deliverer runs its workers in two processes, and a deployment may
    run several deliverers). A slot is a member of the host's sorted set scored by when it lapses, so
    the slot of a deliverer killed mid-call comes back after the attempt's deadline.

    A delivery that found the host busy waits its turn: it is listed by when it first asked, and a freed
    slot goes to the longest waiting, not to whichever delivery asks first after it frees (a stalling
    receiver's own retry would otherwise win it again and again). A waiter that stops asking for
    `waiter_gone_s` (cancelled, or its deliverer gone) loses its place."""

    # KEYS: the slots, the waiters by when each first asked, the waiters by when each last asked
    # ARGV: now, limit, lapses at, token, key lifetime (ms), waiter, waiter gone after (s)
    TAKE = """
    local now = tonumber(ARGV[1])
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[7]))) do
        redis.call('ZREM', KEYS[2], gone)
        redis.call('ZREM', KEYS[3], gone)
    end
    local free = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
    local since = redis.call('ZSCORE', KEYS[2], ARGV[6])
    local ahead = since and redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. since) or redis.call('ZCARD', KEYS[2])
    local taken = free > ahead
    if taken then
        redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
        redis.call('ZREM', KEYS[2], ARGV[6])
        redis.call('ZREM', KEYS[3], ARGV[6])
    elseif ARGV[6] ~= '' then
        redis.call('ZADD', KEYS[2], 'NX', now, ARGV[6])
        redis.call('ZADD', KEYS[3], now, ARGV[6])
    end
    for i = 1, 3 do
        if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
    end
    return taken and 1 or 0
    """

    def __init__(self, waiter_gone_s: float = 10.0):
        self.waiter_gone_s = waiter_gone_s

    @contextmanager
    def hold(self, redis, key: str, limit: int, hold_s: float, when: bool = True, waiter: str | None = None):
        """Yields True with a slot held for at most `hold_s`, or False at once when the key already
        has `limit` in flight or earlier waiters for the free ones (or `when` is false: nothing is
        tried). `waiter` names the delivery, so that asking again keeps its place in the line (without
        one, nothing waits)."""
        token = uuid.uuid4().hex
        now = time.time()
        taken = when and bool(redis.eval(
            self.TAKE, 3, key, f"{key}:waiting", f"{key}:asked",
            now, limit, now + hold_s, token, int((hold_s + 60) * 1000), waiter or "", self.waiter_gone_s))
        try:
            yield taken
        finally:
            if taken:
                redis.zrem(key, token)


HOST_SLOTS = HostSlots()
POSTPONE_S = 1


def _postpone(owner: str, owner_id: str, delivery_id: str, body: str, meta: dict | None = None) -> str:
    """Queue this delivery again in a second, keeping its retries (the host was busy, nothing failed)."""
    job = get_current_job()
    queue = Queue(job.origin, connection=job.connection)
    retry = Retry(max=job.retries_left, interval=job.retry_intervals or 0) if job.retries_left else None
    again = queue.enqueue_in(
        timedelta(seconds=POSTPONE_S), "worker.webhooks.deliver", owner, owner_id, delivery_id, body,
        job_id=f"{job.id.split('-p')[0]}-p{time.time_ns()}", retry=retry, result_ttl=job.result_ttl,
        failure_ttl=job.failure_ttl, description=job.description, meta={**(job.meta or {}), **(meta or {})},
    )
    return again.id


def _items_in_flight(store: JobStore, batch_id: str, settings) -> bool:
    """Whether batch.completed should wait: some item delivery of the batch is not done yet, and it has
    not waited longer than those deliveries' whole retry schedule could take."""
    if not store.item_deliveries_pending(batch_id):
        return False
    since = (get_current_job().meta or {}).get("waiting_since", time.time())
    attempts = settings.webhook_retries + 1
    window = sum(settings.webhook_backoff_s * 2**i for i in range(settings.webhook_retries)) + attempts * settings.webhook_timeout_s
    return time.time() - since < window + 60


def deliver(owner: str, owner_id: str, delivery_id: str, body: str) -> dict:
    """POST `body` to the webhook of job or batch `owner_id`, signed with its secret. A batch's
    `batch.completed` goes after its items' deliveries are done, although deliveries run concurrently."""
    settings = get_settings()
    job = get_current_job()
    store = JobStore(job.connection, settings)
    event = json.loads(body).get("event", "")
    if owner == "batch" and event == "batch.completed" and _items_in_flight(store, owner_id, settings):
        return {"postponed": _postpone(owner, owner_id, delivery_id, body, {"waiting_since": job.meta.get("waiting_since", time.time())})}
    item = owner == "batch" and event.startswith("batch.item.")
    try:
        result = _deliver(store, settings, owner, owner_id, delivery_id, body)
    except DeliveryFailed as exc:
        store.deliveries.attempted(delivery_id, "retrying" if job.retries_left else "failed",
                                   exc.status_code, str(exc))
        if item and not job.retries_left:  # the last attempt
            store.item_delivery_done(owner_id, delivery_id)
        raise
    if "status" in result:
        store.deliveries.attempted(delivery_id, "delivered", result["status"])
    elif "refused" in result or "skipped" in result:
        store.deliveries.attempted(delivery_id, "refused" if "refused" in result else "skipped", None,
                                   result.get("refused") or result.get("skipped"), attempt="refused" in result)
    if item and "postponed" not in result:
        store.item_delivery_done(owner_id, delivery_id)
    return result


def _deliver(store: JobStore, settings, owner: str, owner_id: str, delivery_id: str, body: str) -> dict:
    hook = store.webhook_of(owner, owner_id)
    if not hook:
        return {"skipped": "no webhook"}
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "onediffusion-webhooks/0.1",
        EVENT_HEADER: json.loads(body).get("event", ""),
        DELIVERY_HEADER: delivery_id,
        TIMESTAMP_HEADER: timestamp,
        **standard_headers(hook.get("secret"), delivery_id, timestamp, body),
    }
    if hook.get("secret"):
        headers[SIGNATURE_HEADER] = sign(hook["secret"], timestamp, body)
    extra = {"delivery_id": delivery_id, "owner": owner, "owner_id": owner_id}
    try:
        host, address = resolve_checked(hook["url"], parse_allowlist(settings.webhook_allowlist))
    except UnsafeWebhook as exc:  # permanent: retrying cannot make the address safe
        log.warning("webhook refused: %s", exc, extra=extra)
        return {"refused": str(exc)}
    hold_s = settings.webhook_timeout_s + 5
    by_address = store.keys.webhook_host_slots(address)
    by_tenant = f"{store.keys.prefix}:webhook-tenant:{_tenant_of(store, owner, owner_id)}"
    with HOST_SLOTS.hold(store.redis, by_address, settings.webhook_per_host, hold_s, waiter=delivery_id) as address_free, \
            HOST_SLOTS.hold(store.redis, by_tenant, settings.webhook_per_tenant, hold_s, when=address_free,
                            waiter=delivery_id) as held:
        if not held:
            later = _postpone(owner, owner_id, delivery_id, body)
            busy = "tenant" if address_free else "host"
            log.info("webhook %s busy; delivery put back", busy, extra={**extra, "host": host, "job": later})
            return {"postponed": later}
        try:
            status = _post_pinned(hook["url"], host, address, body.encode(), headers, settings)
        except (httpx.HTTPError, TimeoutError) as exc:
            log.warning("webhook call failed: %s", type(exc).__name__, extra=extra)
            raise DeliveryFailed(f"{type(exc).__name__} calling the webhook") from None
    if not 200 <= status < 300:
        log.warning("webhook answered %s", status, extra=extra)
        raise DeliveryFailed(f"the webhook answered {status}", status)
    log.info("webhook delivered", extra={**extra, "status": status})
    return {"status": status}


def _tenant_of(store: JobStore, owner: str, owner_id: str) -> str:
    """The tenant a delivery is for (its job's or batch's), for the per-tenant limit."""
    if owner == "job":
        try:
            return store.fetch(owner_id).meta.get("tenant") or ""
        except Exception:
            return ""
    return (store.redis.hget(store.keys.batch(owner_id), "tenant") or b"").decode()


def _post_pinned(url: str, host: str, address: str, body: bytes, headers: dict, settings) -> int:
    """POST to the address that was checked (not a fresh DNS answer), with the URL's Host and TLS name;
    no redirects, one deadline for the whole attempt (a receiver that trickles its answer byte by byte
    cannot hold it longer), and at most `webhook_max_response_bytes` of the answer read."""
    return asyncio.run(asyncio.wait_for(_post(url, host, address, body, headers, settings), settings.webhook_timeout_s))


async def _post(url: str, host: str, address: str, body: bytes, headers: dict, settings) -> int:
    parts = urlsplit(url)
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    headers = {**headers, "Host": parts.netloc}
    async with httpx.AsyncClient(timeout=settings.webhook_timeout_s, follow_redirects=False) as client:
        request = client.build_request("POST", pinned, content=body, headers=headers)
        if parts.scheme == "https":
            request.extensions["sni_hostname"] = host
        response = await client.send(request, stream=True)
        try:
            read = 0
            async for chunk in response.aiter_bytes():
                read += len(chunk)
                if read >= settings.webhook_max_response_bytes:
                    break
        finally:
            await response.aclose()
        return response.status_code
