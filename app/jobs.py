"""Jobs and batches on top of RQ: submit, look up, cancel, and what happens when a job ends.

RQ keeps the job states and registries (queued, started, finished, failed, canceled), retries jobs
whose worker died (`Retry`) and tracks batches (`Group`). This module adds what a client sees: the
job view with progress, outputs and errors, idempotent submission, and the end-of-job hooks that
queue webhook deliveries and count metrics. The gateway and the workers share it (it imports no torch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
import uuid
from datetime import datetime, timezone
from typing import Optional

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.group import Group
from rq.job import Callback, Job, JobStatus as RQStatus

from model.tasks import FramePlan, TaskInputError, TaskRequest

from . import listing
from .auth import UrlSigner
from .connection import Keys, keys_for, queues
from .exceptions import ApiError, CannotCancel, JobNotFound
from .metrics import Metrics
from .quotas import Quotas
from .schemas import TERMINAL, BatchView, ErrorView, JobView, OutputView, Progress, WebhookSpec
from .provenance import input_echo
from .settings import Settings
from .storage import FORMATS, converted_name
from .webhook_guard import UnsafeWebhook, parse_allowlist, resolve_checked

log = logging.getLogger(__name__)

JOB_FUNC = "worker.entry.run_job"
_STATUS = {
    RQStatus.QUEUED: "queued",
    RQStatus.DEFERRED: "queued",
    RQStatus.SCHEDULED: "queued",
    RQStatus.STARTED: "running",
    RQStatus.FINISHED: "succeeded",
    RQStatus.FAILED: "failed",
    RQStatus.STOPPED: "failed",
    RQStatus.CANCELED: "canceled",
}


def fingerprint(*parts) -> str:
    """What makes two submissions the same request (for Idempotency-Key): a hash of their JSON."""
    def plain(value):
        return value.model_dump(mode="json") if hasattr(value, "model_dump") else value

    text = json.dumps([plain(p) for p in parts], sort_keys=True, separators=(",", ":"), default=plain)
    return hashlib.sha256(text.encode()).hexdigest()


def new_id() -> str:
    """Unguessable ids (128 random bits) for jobs and batches."""
    return uuid.uuid4().hex


def _iso(value: Optional[datetime]) -> Optional[str]:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat().replace("+00:00", "Z")


def _now_iso() -> str:
    return _iso(datetime.now(timezone.utc))


class JobService:
    def __init__(self, redis: Redis, settings: Settings):
        self.redis = redis
        self.settings = settings
        self.keys: Keys = keys_for(settings.queue_prefix)
        self.queue, self.webhook_queue = queues(redis, settings)
        self.metrics = Metrics(redis, self.keys)
        self.quotas = Quotas(redis, self.keys, settings)
        self.signer = UrlSigner(redis, self.keys, settings.url_signing_secret)

    # ---- submission ------------------------------------------------------------------------------------
    def _prepare(self, request: TaskRequest) -> tuple[TaskRequest, FramePlan]:
        """Fix the seed (so retries and replays give the same result) and check the request fully."""
        if request.seed is None:
            request = request.model_copy(update={"seed": secrets.randbelow(2**31)})
        return request, request.plan(self.settings.task_limits())

    def _job_data(self, task: str, request: TaskRequest, plan: FramePlan, meta: dict, job_id: str):
        payload = request.model_dump(mode="json", exclude={"webhook", "output_format", "task"})
        meta = {"task": task, "bucket": plan.bucket, "created_at": _now_iso(), "input": input_echo(request), **meta}
        return Queue.prepare_data(
            JOB_FUNC,
            args=(task, payload),
            job_id=job_id,
            meta=meta,
            retry=Retry(max=self.settings.job_retries) if self.settings.job_retries else None,
            result_ttl=self.settings.results_ttl_s,
            failure_ttl=self.settings.results_ttl_s,
            ttl=self.settings.results_ttl_s,
            timeout=self.settings.job_timeout_s,
            description=f"{task} {plan.bucket}",
            on_failure=Callback("app.jobs.on_rq_failure"),
        )

    def check_webhook(self, webhook: Optional[WebhookSpec], field: str = "webhook.url") -> None:
        if webhook is None:
            return
        try:
            resolve_checked(webhook.url, parse_allowlist(self.settings.webhook_allowlist))
        except UnsafeWebhook as exc:
            raise TaskInputError(field, str(exc)) from None

    def admit(self, tenant: str, key_id: str, new_jobs: int) -> None:
        """Rate, tenant quota and queue bound (429s), before anything is queued."""
        self.quotas.check_rate(key_id)
        self.quotas.check_queue(self.queue.count, new_jobs)
        self.quotas.check_active(tenant, new_jobs)

    def admission(self):
        """The section where a submission checks the queue bound and tenant quota and enqueues: one at a
        time across every API process (a Redis lock), so the bounds hold exactly under concurrent load."""
        return self.redis.lock(f"{self.keys.prefix}:admission", timeout=10, sleep=0.002, blocking_timeout=10)

    def _admit_locked(self, tenant: str, new_jobs: int) -> None:
        self.quotas.check_queue(self.queue.count, new_jobs)
        self.quotas.check_active(tenant, new_jobs)

    def is_replay(self, tenant: str, key: Optional[str]) -> bool:
        """Whether an Idempotency-Key already names a job or batch of this tenant: its replay creates no
        work, so it is not held to the rate, quota and queue bounds (the fingerprint is checked later)."""
        names = [self._idempotent(kind, tenant, key) for kind in ("job", "batch")] if key else []
        return bool(names) and bool(self.redis.exists(*names))

    def _idempotent(self, kind: str, tenant: str, key: Optional[str]) -> Optional[str]:
        return self.keys.idempotency(f"{tenant}:{kind}:{key}") if key else None

    def _replayed_id(self, idem: Optional[str], fp: str, kind: str) -> Optional[str]:
        """The id stored under an Idempotency-Key, if any; 409 when it was used for another request."""
        if not idem:
            return None
        raw = self.redis.get(idem)
        if raw is None:
            return None
        record = json.loads(raw)
        if record["fingerprint"] != fp:
            raise ApiError(409, "idempotency_mismatch",
                           f"this Idempotency-Key was used for a different request ({kind} {record['id']}); "
                           "send a new key for a new request")
        return record["id"]

    def submit(
        self,
        task: str,
        request: TaskRequest,
        tenant: str,
        key_id: str,
        webhook: Optional[WebhookSpec] = None,
        output_format: str = "png",
        idempotency_key: Optional[str] = None,
        admitted: bool = False,
    ) -> JobView:
        return self.submit_once(task, request, tenant, key_id, webhook, output_format, idempotency_key, admitted)[0]

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
    ) -> tuple[JobView, bool]:
        """(the job, whether it is a replay of an earlier submission with the same Idempotency-Key).
        `admitted`: the caller already ran `admit` (the rate is counted once)."""
        idem = self._idempotent("job", tenant, idempotency_key)
        fp = fingerprint(task, request, webhook, output_format) if idem else ""
        replayed = self._replayed_id(idem, fp, "job")
        if replayed:
            return self.view(replayed, tenant=tenant), True
        request, plan = self._prepare(request)
        self.check_webhook(webhook)
        if not admitted:
            self.quotas.check_rate(key_id)
        job_id = new_id()
        meta = {"tenant": tenant, "webhook": webhook.model_dump() if webhook else None, "output_format": output_format}
        data = self._job_data(task, request, plan, meta, job_id)
        with self.admission():
            replayed = self._replayed_id(idem, fp, "job")
            if replayed:
                return self.view(replayed, tenant=tenant), True
            self._admit_locked(tenant, 1)
            with self.redis.pipeline() as pipe:  # MULTI/EXEC: the key, the quota entry and the job, or none
                if idem:
                    pipe.set(idem, json.dumps({"id": job_id, "fingerprint": fp}), ex=self.settings.results_ttl_s)
                self.quotas.added(tenant, [job_id], pipe)
                listing.add(pipe, self.keys.prefix, "jobs", tenant, [job_id], self.settings.results_ttl_s)
                self.queue.enqueue_many([data], pipeline=pipe)
                pipe.execute()
        self.metrics.inc("jobs_submitted_total", {"task": task})
        log.info("job queued", extra={"job_id": job_id, "task": task, "bucket": plan.bucket, "tenant": tenant})
        return self.view(job_id), False

    def submit_batch(
        self, items: list[tuple[str, TaskRequest, str]], webhook: Optional[WebhookSpec], tenant: str, key_id: str,
        idempotency_key: Optional[str] = None, admitted: bool = False,
    ) -> BatchView:
        return self.submit_batch_once(items, webhook, tenant, key_id, idempotency_key, admitted)[0]

    def submit_batch_once(
        self, items: list[tuple[str, TaskRequest, str]], webhook: Optional[WebhookSpec], tenant: str, key_id: str,
        idempotency_key: Optional[str] = None, admitted: bool = False,
    ) -> tuple[BatchView, bool]:
        idem = self._idempotent("batch", tenant, idempotency_key)
        fp = fingerprint([[task, request, fmt] for task, request, fmt in items], webhook) if idem else ""
        replayed = self._replayed_id(idem, fp, "batch")
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
            self._job_data(task, request, plan, {"tenant": tenant, "batch_id": batch_id, "output_format": fmt}, job_id)
            for (task, request, plan, fmt), job_id in zip(prepared, job_ids)
        ]
        record = {
            "id": batch_id,
            "tenant": tenant,
            "created_at": _now_iso(),
            "job_ids": json.dumps(job_ids),
            "webhook": json.dumps(webhook.model_dump() if webhook else None),
        }
        with self.admission():
            replayed = self._replayed_id(idem, fp, "batch")
            if replayed:
                return self.batch_view(replayed, tenant=tenant), True
            self._admit_locked(tenant, len(prepared))
            with self.redis.pipeline() as pipe:
                if idem:
                    pipe.set(idem, json.dumps({"id": batch_id, "fingerprint": fp}), ex=self.settings.results_ttl_s)
                pipe.hset(self.keys.batch(batch_id), mapping=record)
                pipe.expire(self.keys.batch(batch_id), self.settings.results_ttl_s)
                self.quotas.added(tenant, job_ids, pipe)
                listing.add(pipe, self.keys.prefix, "jobs", tenant, job_ids, self.settings.results_ttl_s)
                listing.add(pipe, self.keys.prefix, "batches", tenant, [batch_id], self.settings.results_ttl_s)
                Group.create(self.redis, name=batch_id).enqueue_many(self.queue, datas, pipeline=pipe)
        for task, *_ in prepared:
            self.metrics.inc("jobs_submitted_total", {"task": task})
        log.info("batch queued", extra={"batch_id": batch_id, "jobs": len(job_ids), "tenant": tenant})
        return self.batch_view(batch_id), False

    # ---- reading ---------------------------------------------------------------------------------------------
    def fetch(self, job_id: str) -> Job:
        try:
            return Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            raise JobNotFound(job_id) from None

    def url(self, path: str) -> str:
        return self.settings.public_url.rstrip("/") + path

    def view(self, job_id: str, job: Optional[Job] = None, tenant: Optional[str] = None) -> JobView:
        """The job as its owner sees it; another tenant gets JobNotFound (None = internal caller)."""
        job = job or self.fetch(job_id)
        meta = job.meta or {}
        if tenant is not None and meta.get("tenant") != tenant:
            raise JobNotFound(job_id)
        status = _STATUS.get(job.get_status(refresh=False), "queued")
        view = JobView(
            id=job.id,
            task=meta.get("task", ""),
            status=status,
            created_at=meta.get("created_at") or _iso(job.created_at),
            started_at=_iso(job.started_at) if status != "queued" else None,
            finished_at=_iso(job.ended_at) if status in TERMINAL else None,
            attempts=int(meta.get("attempts", 0)),
            batch_id=meta.get("batch_id"),
            warnings=list(meta.get("warnings", [])),
            urls={
                "self": self.url(f"/v1/jobs/{job.id}"),
                "cancel": self.url(f"/v1/jobs/{job.id}/cancel"),
                "events": self.url(f"/v1/jobs/{job.id}/events"),
            },
        )
        view.input = meta.get("input") or {}
        progress = self.redis.hgetall(self.keys.progress(job.id))
        if progress:
            step, total = int(progress[b"step"]), int(progress[b"total"])
            view.progress = Progress(step=step, total=total, fraction=round(step / max(total, 1), 4))
        if status == "queued":
            position = self.queue.get_job_position(job.id)
            view.queue_position = position
        if status == "succeeded":
            result = job.return_value() or {}
            fmt = meta.get("output_format", "png")
            view.outputs = []
            for f in result.get("outputs", []):
                # Named and labelled by the format they are served in: `image.jpeg`, image/jpeg. 16-bit depth
                # stays PNG (8-bit formats would change its values' meaning).
                if fmt != "png" and f["kind"] != "depth16" and f["name"].endswith(".png"):
                    f = {**f, "name": converted_name(f["name"], fmt), "media_type": FORMATS[fmt][1]}
                path = f"/v1/files/{job.id}/{f['name']}"
                signed = self.signer.query(job.id, f["name"], self.settings.signed_url_ttl_s)
                view.outputs.append(OutputView(url=self.url(path), signed_url=self.url(path) + "?" + signed, **f))
            view.data = result.get("data", {})
            view.warnings = result.get("warnings", view.warnings)
            view.timings = result.get("timings", {})
        if status == "failed":
            error = meta.get("error")
            if error is None:
                latest = job.latest_result()
                text = (latest.exc_string or "") if latest else ""
                if "AbandonedJobError" in text or "stuck" in text:
                    error = {"type": "worker_lost", "message": "the worker running this job stopped and the job's retries are used up"}
                else:
                    error = {"type": "internal", "message": "the job failed inside the worker; see the worker's log for this job id"}
            view.error = ErrorView(**error)
        if status == "canceled":
            view.error = ErrorView(type="canceled", message=meta.get("cancel_reason", "the job was canceled"))
        if view.started_at and view.finished_at:
            view.timings.setdefault("run_s", round((job.ended_at - job.started_at).total_seconds(), 3))
        return view

    def batch_view(self, batch_id: str, tenant: Optional[str] = None) -> BatchView:
        record = self.redis.hgetall(self.keys.batch(batch_id))
        if not record or (tenant is not None and record.get(b"tenant", b"").decode() != tenant):
            raise JobNotFound(batch_id)
        job_ids = json.loads(record[b"job_ids"])
        jobs = []
        for job_id in job_ids:
            try:
                jobs.append(self.view(job_id))
            except JobNotFound:
                continue
        counts = {s: 0 for s in ("queued", "running", "succeeded", "failed", "canceled")}
        for job in jobs:
            counts[job.status] += 1
        done = all(j.status in TERMINAL for j in jobs)
        return BatchView(
            id=batch_id,
            status="completed" if done else "running",
            created_at=record[b"created_at"].decode(),
            counts=counts,
            jobs=jobs,
            urls={"self": self.url(f"/v1/batches/{batch_id}")},
        )

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
        status = _STATUS.get(job.get_status(), "queued")
        if status == "canceled":
            return self.view(job_id, job)
        if status in TERMINAL:
            raise CannotCancel(f"the job already {status}")
        self.redis.set(self.keys.cancel(job_id), reason, ex=self.settings.results_ttl_s)
        job.meta["cancel_reason"] = reason
        job.save_meta()
        try:
            job.cancel()
        except InvalidJobOperation:
            pass
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
        job.delete(delete_dependents=False)
        listing.remove(self.redis, self.keys.prefix, "jobs", (job.meta or {}).get("tenant", ""), job_id)
        self.redis.delete(self.keys.progress(job_id), self.keys.cancel(job_id))
        log.info("job deleted", extra={"job_id": job_id, "tenant": tenant})

    # ---- end of a job (called by workers, and here for jobs canceled while queued) ---------------------------
    def job_ended(self, job_id: str) -> None:
        """Count the job and queue its webhook calls (its own, its batch item's and the batch's last)."""
        job = self.fetch(job_id)
        view = self.view(job_id, job)
        meta = job.meta or {}
        if meta.get("tenant"):
            self.quotas.ended(meta["tenant"], job_id)
        self.metrics.inc("jobs_total", {"task": view.task, "status": view.status})
        if view.created_at and view.status == "succeeded":
            created = datetime.fromisoformat(view.created_at.replace("Z", "+00:00"))
            self.metrics.observe("job_latency_seconds", {"task": view.task}, (datetime.now(timezone.utc) - created).total_seconds())
        body = {"event": f"job.{view.status}", "job": view.model_dump(mode="json")}
        if meta.get("webhook"):
            self.enqueue_webhook("job", job_id, body)
        batch_id = meta.get("batch_id")
        if batch_id:
            self._batch_item_ended(batch_id, job_id, body)

    def _batch_item_ended(self, batch_id: str, job_id: str, body: dict) -> None:
        record = self.redis.hgetall(self.keys.batch(batch_id))
        if not record:
            return
        webhook = json.loads(record.get(b"webhook", b"null"))
        total = len(json.loads(record[b"job_ids"]))
        with self.redis.pipeline() as pipe:
            pipe.sadd(self.keys.batch_ended(batch_id), job_id)
            pipe.expire(self.keys.batch_ended(batch_id), self.settings.results_ttl_s)
            pipe.scard(self.keys.batch_ended(batch_id))
            added, _, ended = pipe.execute()
        if not added:
            return  # already counted (a retried hook)
        if webhook:
            self.enqueue_webhook("batch", batch_id, {**body, "event": "batch.item." + body["event"].split(".", 1)[1], "batch_id": batch_id})
        if ended == total:
            view = self.batch_view(batch_id)
            self.metrics.inc("batches_total", {})
            if webhook:
                self.enqueue_webhook("batch", batch_id, {"event": "batch.completed", "batch": view.model_dump(mode="json")})

    def enqueue_webhook(self, owner: str, owner_id: str, body: dict) -> None:
        """Queue one signed delivery; the deliverer process sends it and retries with backoff."""
        delivery_id = new_id()
        intervals = [self.settings.webhook_backoff_s * 2**i for i in range(self.settings.webhook_retries)]
        if owner == "batch" and str(body.get("event", "")).startswith("batch.item."):
            with self.redis.pipeline() as pipe:  # batch.completed waits for these (deliveries run concurrently)
                pipe.sadd(self.batch_webhooks_pending(owner_id), delivery_id)
                pipe.expire(self.batch_webhooks_pending(owner_id), self.settings.results_ttl_s)
                pipe.execute()
        self.webhook_queue.enqueue(
            "worker.webhooks.deliver",
            owner,
            owner_id,
            delivery_id,
            json.dumps(body, separators=(",", ":"), sort_keys=True),
            job_id=f"wh-{delivery_id}",
            retry=Retry(max=len(intervals), interval=[max(1, int(round(i))) for i in intervals]) if intervals else None,
            result_ttl=self.settings.results_ttl_s,
            failure_ttl=self.settings.results_ttl_s,
            description=f"webhook {body.get('event')} for {owner} {owner_id}",
        )

    def batch_webhooks_pending(self, batch_id: str) -> str:
        """Set of the batch's item deliveries not yet done (delivered, refused or out of retries)."""
        return f"{self.keys.batch(batch_id)}:webhooks-pending"

    def webhook_of(self, owner: str, owner_id: str) -> Optional[dict]:
        if owner == "job":
            try:
                return self.fetch(owner_id).meta.get("webhook")
            except JobNotFound:  # deleted by its owner meanwhile: nothing left to tell
                return None
        record = self.redis.hgetall(self.keys.batch(owner_id))
        return json.loads(record.get(b"webhook", b"null")) if record else None

    # ---- readiness ---------------------------------------------------------------------------------------------
    def ready_workers(self) -> list[str]:
        cutoff = time.time() - self.settings.heartbeat_ttl_s
        return [m.decode() for m in self.redis.zrangebyscore(self.keys.workers, cutoff, "+inf")]

    def worker_info(self, names: list[str]) -> dict[str, dict[str, str]]:
        """The fields each worker publishes with its heartbeat (its precision, ...), by worker name."""
        with self.redis.pipeline() as pipe:
            for name in names:
                pipe.hgetall(self.keys.worker_info(name))
            found = pipe.execute()
        return {name: {k.decode(): v.decode() for k, v in info.items()} for name, info in zip(names, found)}


def on_rq_failure(job: Job, connection: Redis, exc_type, exc_value, tb) -> None:
    """RQ failure callback. Our worker reports its own failures; this catches the ones RQ decides, i.e. a
    job whose worker died. RQ calls it before it marks the job failed, so when no retry is left the
    end-of-job hooks are queued to run once the failure is recorded (on the webhook queue)."""
    if job.retries_left:
        return
    from .settings import get_settings

    try:
        _, webhook_queue = queues(connection, get_settings())
        webhook_queue.enqueue("app.jobs.run_job_ended", job.id, job_id=f"ended-{job.id}", description=f"end of {job.id}")
    except Exception:  # never break RQ's cleanup
        log.exception("could not queue the end-of-job hooks", extra={"job_id": job.id})


def run_job_ended(job_id: str) -> None:
    """RQ job: run the end-of-job hooks of a job that RQ failed (see on_rq_failure)."""
    from rq import get_current_job

    from .settings import get_settings

    JobService(get_current_job().connection, get_settings()).job_ended(job_id)
