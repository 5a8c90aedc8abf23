"""The gateway's jobs and batches: idempotent submission under admission limits, listing, cancel and
delete, and the readiness the workers publish.

It extends `core.job_store.JobStore`, which holds what the workers share with the gateway (job records,
progress, cancel flags, the job and batch views, and the end-of-job hooks).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from typing import Optional

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import InvalidJobOperation
from rq.job import Callback, Job

from core.connection import wait_replicated
from core import deliveries
from core.job_store import JOB_FUNC, ON_FAILURE, JobNotFound, JobStore, drop_lapsed_executions, iso_time, new_id, now_iso
from core.plan import QueuedPlan
from core.provenance import input_echo
from core.usage import Usage
from core.settings import Settings
from core.storage import BlobStore, open_store
from core.views import TERMINAL, BatchView, JobView
from core.webhook_guard import UnsafeWebhook, parse_allowlist, resolve_checked
from model.tasks import TaskInputError, TaskRequest

from . import listing
from .errors import ApiError, CannotCancel
from .quotas import Quotas
from .schemas import WebhookSpec

log = logging.getLogger(__name__)


def fingerprint(*parts) -> str:
    """What makes two submissions the same request (for Idempotency-Key): a hash of their JSON."""
    def plain(value):
        return value.model_dump(mode="json") if hasattr(value, "model_dump") else value

    text = json.dumps([plain(p) for p in parts], sort_keys=True, separators=(",", ":"), default=plain)
    return hashlib.sha256(text.encode()).hexdigest()


class JobService(JobStore):
    def __init__(self, redis: Redis, settings: Settings, store: Optional[BlobStore] = None):
        super().__init__(redis, settings)
        self.quotas = Quotas(redis, self.keys, settings, self.queue)
        self.store = store if store is not None else open_store(settings)
        self._files = self.store  # one store for inputs, outputs and webhook bodies

    # ---- submission ------------------------------------------------------------------------------------
    def _prepare(self, request: TaskRequest) -> tuple[TaskRequest, QueuedPlan]:
        """Fix the seed (so retries and replays give the same result), check and plan the request fully, and
        store its condition images: what is queued is this plan, images by digest, run by workers as is."""
        if request.seed is None:
            request = request.model_copy(update={"seed": secrets.randbelow(2**31)})
        plan = request.plan(self.settings.task_limits())
        return request, QueuedPlan.of(plan, self.store.save_input, input_echo(request))

    def _job_data(self, task: str, request: TaskRequest, plan: QueuedPlan, meta: dict, job_id: str):
        # the input echo is in the plan (compressed with it, and meta stays small: workers read every queued
        # job's meta when they look for companions of a batch); a long plan is stored, the job refers to it
        meta = {"task": task, "bucket": plan.bucket, "created_at": now_iso(), **meta}
        ttl = self.settings.job_ttl_s
        return Queue.prepare_data(
            JOB_FUNC,
            args=(task, plan.queued_payload(self.store.save_input)),
            job_id=job_id,
            meta=meta,
            retry=Retry(max=self.settings.job_retries) if self.settings.job_retries else None,
            result_ttl=ttl,
            failure_ttl=ttl,
            ttl=ttl,
            timeout=self.settings.job_timeout_s,
            description=f"{task} {plan.bucket}",
            on_failure=Callback(ON_FAILURE),
        )

    def check_webhook(self, webhook: Optional[WebhookSpec], field: str = "webhook.url") -> None:
        if webhook is None:
            return
        try:
            resolve_checked(webhook.url, parse_allowlist(self.settings.webhook_allowlist))
        except UnsafeWebhook as exc:
            raise TaskInputError(field, str(exc)) from None

    def precheck(self, tenant: str, key_id: str, idempotency_key: Optional[str], new_jobs: int = 1) -> bool:
        """Before the body is read: True when the Idempotency-Key already names a job or batch of this
        tenant (its replay creates no work, so it is not held to the limits; the fingerprint is checked
        later); else the rate is counted and a refused limit raises its 429 (app/quotas.py)."""
        names = (self._idempotent("job", tenant, idempotency_key), self._idempotent("batch", tenant, idempotency_key))
        return self.quotas.precheck(tenant, key_id, names, new_jobs)

    def _idempotent(self, kind: str, tenant: str, key: Optional[str]) -> Optional[str]:
        """One Idempotency-Key space per tenant for jobs and batches alike: a key used for a job and then
        for a batch (or the other way) is a different request, 409."""
        return self.keys.idempotency(f"{tenant}:{key}") if key else None

    def _replayed_id(self, idem: Optional[str], fp: str, kind: str, raw: Optional[bytes] = None) -> Optional[str]:
        """The id stored under an Idempotency-Key (`raw`: the record, when already read), if any; 409 when
        it was used for another request."""
        if not idem:
            return None
        raw = raw if raw is not None else self.redis.get(idem)
        if raw is None:
            return None
        record = json.loads(raw)
        if record["fingerprint"] != fp:
            raise ApiError(409, "idempotency_mismatch",
                           f"this Idempotency-Key was used for a different request ({record['id']}); "
                           "send a new key for a new request")
        return record["id"]

    def _writes(self):
        """A pipeline that only collects commands: a submission's writes, which the admission script
        applies only when the bounds hold (`execute` is a no-op, should RQ call it)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.execute = lambda raise_on_error=True: []
        return pipe

    def _commit(self, tenant: str, idem: Optional[str], new_jobs: int, pipe):
        return self.quotas.commit(tenant, idem, new_jobs, [args for args, _ in pipe.command_stack])

    def _queued_view(self, job: Job, position: int) -> JobView:
        """What `view` answers for a job this process has just queued, built from what it queued rather
        than read back."""
        meta = job.meta or {}
        return JobView(
            id=job.id, task=meta.get("task", ""), status="queued", queue_position=position,
            created_at=meta.get("created_at") or iso_time(job.created_at), warnings=list(meta.get("warnings", [])),
            attempts=int(meta.get("attempts", 0)), batch_id=meta.get("batch_id"), priority=int(meta.get("priority") or 0),
            urls={"self": self.url(f"/v1/jobs/{job.id}"), "cancel": self.url(f"/v1/jobs/{job.id}/cancel"),
                  "events": self.url(f"/v1/jobs/{job.id}/events")},
            input=self._input_echo(job, meta),
        )

    def submit_once(
        self,
        task: str,
        request: TaskRequest,
        tenant: str,
        key_id: str,
        webhook: Optional[WebhookSpec] = None,
        output_format: str = "png",
        idempotency_key: Optional[str] = None,
        admitted: bool = False,
        maybe_replay: bool = True,
        priority: int = 0,
    ) -> tuple[JobView, bool]:
        """(the job, whether it is a replay of an earlier submission with the same Idempotency-Key).
        `admitted`: the caller ran `precheck` (the rate is counted once); `maybe_replay`: False when that
        precheck found no replay (the key is read only in the admission step then). `priority` (0 to
        MAX_PRIORITY, checked against the key by the caller) orders the job among its tenant's queued jobs."""
        idem = self._idempotent("job", tenant, idempotency_key)
        fp = fingerprint(task, request, webhook, output_format, *([priority] if priority else [])) if idem else ""
        replayed = self._replayed_id(idem, fp, "job") if maybe_replay else None
        if replayed:
            return self.view(replayed, tenant=tenant), True
        request, plan = self._prepare(request)
        self.check_webhook(webhook)
        if not admitted:
            self.quotas.check_rate(key_id)
        job_id = new_id()
        meta = {"tenant": tenant, "key_id": key_id, "webhook": webhook.model_dump() if webhook else None,
                "output_format": output_format, "priority": priority}
        data = self._job_data(task, request, plan, meta, job_id)
        writes = self._writes()
        if idem:
            writes.set(idem, json.dumps({"id": job_id, "fingerprint": fp}), ex=self.settings.job_ttl_s)
        self.quotas.added(tenant, [job_id], writes)
        listing.add(writes, self.keys.prefix, "jobs", tenant, [job_id], self.settings.job_ttl_s)
        (job,) = self.queue.enqueue_many([data], pipeline=writes)
        self.metrics.inc("jobs_submitted_total", {"task": task}, pipe=writes)
        decision = self._commit(tenant, idem, 1, writes)
        if decision.outcome == "replay":  # the same key won a race with this submission
            return self.view(self._replayed_id(idem, fp, "job", decision.value), tenant=tenant), True
        wait_replicated(self.redis, self.settings)  # a 202 then survives the master's loss
        log.info("job queued", extra={"job_id": job_id, "task": task, "bucket": plan.bucket, "tenant": tenant})
        return self._queued_view(job, decision.position or 0), False

    def submit_batch_once(
        self, items: list[tuple[str, TaskRequest, str]], webhook: Optional[WebhookSpec], tenant: str, key_id: str,
        idempotency_key: Optional[str] = None, admitted: bool = False, maybe_replay: bool = True,
        request_fingerprint: Optional[str] = None, priorities: Optional[list[int]] = None,
    ) -> tuple[BatchView, bool]:
        """`request_fingerprint`: what identifies the request for its Idempotency-Key when the items carry
        values the server drew (num_outputs' seeds), so that an identical retry is a replay, not a 409.
        `priorities`: each item's priority (as for `submit_once`; all 0 when None)."""
        priorities = list(priorities) if priorities is not None else [0] * len(items)
        if len(priorities) != len(items):
            raise ValueError("one priority per item")
        idem = self._idempotent("batch", tenant, idempotency_key)
        fp = (request_fingerprint or fingerprint(
            [[task, request, fmt, *([p] if p else [])] for (task, request, fmt), p in zip(items, priorities)], webhook,
        )) if idem else ""
        replayed = self._replayed_id(idem, fp, "batch") if maybe_replay else None
        if replayed:
            return self.batch_view(replayed, tenant=tenant), True
        prepared = []
        for index, (task, request, fmt) in enumerate(items):
            try:
                prepared.append((task, *self._prepare(request), fmt))
            except TaskInputError as exc:
                raise TaskInputError(f"items.{index}.{exc.field}", exc.message) from None
        self.check_webhook(webhook)
        if not admitted:
            self.quotas.check_rate(key_id)
        batch_id = new_id()
        job_ids = [new_id() for _ in prepared]
        datas = [
            self._job_data(task, request, plan, {"tenant": tenant, "key_id": key_id, "batch_id": batch_id,
                                                 "output_format": fmt, "priority": priority}, job_id)
            for (task, request, plan, fmt), job_id, priority in zip(prepared, job_ids, priorities)
        ]
        record = {
            "id": batch_id,
            "tenant": tenant,
            "created_at": now_iso(),
            "job_ids": json.dumps(job_ids),
            "webhook": json.dumps(webhook.model_dump() if webhook else None),
        }
        writes = self._writes()
        if idem:
            writes.set(idem, json.dumps({"id": batch_id, "fingerprint": fp}), ex=self.settings.job_ttl_s)
        writes.hset(self.keys.batch(batch_id), mapping=record)
        writes.expire(self.keys.batch(batch_id), self.settings.job_ttl_s)
        self.quotas.added(tenant, job_ids, writes)
        listing.add(writes, self.keys.prefix, "jobs", tenant, job_ids, self.settings.job_ttl_s)
        listing.add(writes, self.keys.prefix, "batches", tenant, [batch_id], self.settings.job_ttl_s)
        # no RQ Group: the batch record above tracks the items, and RQ's maintenance walks every group
        jobs = self.queue.enqueue_many(datas, pipeline=writes)
        for task, *_ in prepared:
            self.metrics.inc("jobs_submitted_total", {"task": task}, pipe=writes)
        decision = self._commit(tenant, idem, len(prepared), writes)
        if decision.outcome == "replay":
            return self.batch_view(self._replayed_id(idem, fp, "batch", decision.value), tenant=tenant), True
        wait_replicated(self.redis, self.settings)
        log.info("batch queued", extra={"batch_id": batch_id, "jobs": len(job_ids), "tenant": tenant})
        first = decision.position or 0  # the others: behind it, as a first guess
        views = [self._queued_view(job, first + i) for i, job in enumerate(jobs)]
        counts = {s: 0 for s in ("queued", "running", "succeeded", "failed", "canceled")}
        counts["queued"] = len(views)
        return BatchView(id=batch_id, status="running", created_at=record["created_at"], counts=counts, jobs=views,
                         urls={"self": self.url(f"/v1/batches/{batch_id}")}), False

    # ---- listing -----------------------------------------------------------------------------------------------
    def list_jobs(self, tenant: str, limit: int, cursor: Optional[str], status: Optional[str] = None,
                  task: Optional[str] = None) -> tuple[list[JobView], Optional[str]]:
        def load(job_id: str) -> Optional[JobView]:
            try:
                return self.view(job_id, tenant=tenant)
            except JobNotFound:
                return None

        def keep(view: JobView) -> bool:
            return (status is None or view.status == status) and (task is None or view.task == task)

        return listing.page(self.redis, self.keys.prefix, "jobs", tenant, limit, cursor, load, keep)

    def list_batches(self, tenant: str, limit: int, cursor: Optional[str],
                     status: Optional[str] = None) -> tuple[list[BatchView], Optional[str]]:
        def load(batch_id: str) -> Optional[BatchView]:
            try:
                return self.batch_view(batch_id, tenant=tenant)
            except JobNotFound:
                return None

        return listing.page(self.redis, self.keys.prefix, "batches", tenant, limit, cursor, load,
                            lambda view: status is None or view.status == status)

    def cancel_batch(self, batch_id: str, tenant: Optional[str] = None) -> BatchView:
        """Cancel every job of the batch that has not ended (ended ones keep their results)."""
        view = self.batch_view(batch_id, tenant=tenant)  # ownership
        for job in view.jobs:
            if job.status not in TERMINAL:
                try:
                    self.cancel(job.id, reason="batch canceled by the client")
                except (CannotCancel, JobNotFound):  # ended or expired meanwhile
                    pass
        return self.batch_view(batch_id)

    # ---- cancel ------------------------------------------------------------------------------------------------
    def cancel(self, job_id: str, tenant: Optional[str] = None, reason: str = "canceled by the client") -> JobView:
        job = self.fetch(job_id)
        self.view(job_id, job, tenant=tenant)  # ownership
        status = self.status(job)
        if status in TERMINAL:
            raise CannotCancel(f"the job already {status}")
        self.request_cancel(job_id, reason)
        job.meta["cancel_reason"] = reason
        job.save_meta()
        try:
            drop_lapsed_executions(job)
            job.cancel()
        except InvalidJobOperation:
            pass
        self.record_end(job)  # canceled now, for the client; a running job's worker stops at its next step
        if status == "queued":
            self.job_ended(job_id)  # a running job's worker calls this when it stops
        return self.view(job_id)

    # ---- delete ------------------------------------------------------------------------------------------------
    def delete(self, job_id: str, tenant: Optional[str] = None) -> None:
        """Remove an ended job's record (its outputs are the caller's to remove from the result store);
        409 while it is queued or running: cancel it first."""
        job = self.fetch(job_id)
        view = self.view(job_id, job, tenant=tenant)  # ownership
        if view.status not in TERMINAL:
            raise ApiError(409, "conflict", f"the job is {view.status}; cancel it first (POST {view.urls['cancel']})")
        drop_lapsed_executions(job)
        job.delete(delete_dependents=False)
        listing.remove(self.redis, self.keys.prefix, "jobs", (job.meta or {}).get("tenant", ""), job_id)
        self.forget(job_id)
        log.info("job deleted", extra={"job_id": job_id, "tenant": tenant})

    # ---- usage -------------------------------------------------------------------------------------------
    def usage(self, tenant: str, start, end, group_by: str) -> list[dict]:
        return Usage(self.redis, self.keys.prefix).summary(tenant, start, end, group_by)

    # ---- webhook deliveries --------------------------------------------------------------------------------
    def _owned(self, owner: str, owner_id: str, tenant: Optional[str]) -> None:
        if owner == "job":
            self.view(owner_id, tenant=tenant)
        else:
            self.batch_record(owner_id, tenant)

    def list_deliveries(self, owner: str, owner_id: str, tenant: Optional[str] = None) -> list[dict]:
        self._owned(owner, owner_id, tenant)
        return self.deliveries.list(owner, owner_id)

    def redeliver(self, owner: str, owner_id: str, delivery_id: str, tenant: Optional[str] = None) -> dict:
        """Send a delivery again, with its first body and id (receivers de-duplicate on the id); 409 while
        it is still being delivered or when the job or batch has no webhook any more."""
        self._owned(owner, owner_id, tenant)
        record = self.deliveries.get(owner, owner_id, delivery_id)
        if record is None:
            raise ApiError(404, "not_found", f"no delivery {delivery_id} of this {owner}")
        if record.get("status") in ("pending", "retrying"):
            raise ApiError(409, "conflict", f"delivery {delivery_id} is still being delivered ({record['status']}); "
                           "redeliver once it has ended")
        if not self.webhook_of(owner, owner_id):
            raise ApiError(409, "conflict", f"this {owner} has no webhook to deliver to")
        body = self.delivery_body(owner_id, delivery_id, record)
        if body is None:
            raise ApiError(409, "conflict", f"delivery {delivery_id} cannot be sent again: the body it sent expired with "
                           f"this {owner}'s files (RESULTS_TTL_S)")
        self.enqueue_webhook(owner, owner_id, json.loads(body), delivery_id)
        log.info("webhook redelivery queued", extra={"delivery_id": delivery_id, "owner": owner, "owner_id": owner_id})
        return deliveries.view(self.deliveries.get(owner, owner_id, delivery_id))

    # ---- readiness ---------------------------------------------------------------------------------------------
    def ready_workers(self) -> list[str]:
        cutoff = time.time() - self.settings.heartbeat_ttl_s
        return [m.decode() for m in self.redis.zrangebyscore(self.keys.workers, cutoff, "+inf")]

    def worker_info(self, names: list[str]) -> dict[str, dict[str, str]]:
        """The fields each worker publishes with its heartbeat (its precision, ...), by worker name."""
        with self.redis.pipeline(transaction=False) as pipe:  # a read: a full Redis refuses MULTI
            for name in names:
                pipe.hgetall(self.keys.worker_info(name))
            found = pipe.execute()
        return {name: {k.decode(): v.decode() for k, v in info.items()} for name, info in zip(names, found)}

