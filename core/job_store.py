"""The job store: what the gateway and the workers both read and write about jobs and batches in Redis.

RQ keeps the job states and registries (queued, started, finished, failed, canceled), retries jobs
whose worker died (`Retry`) and tracks batches (`Group`). Beside those, this module keeps progress,
cancel flags and batch records, renders a job or batch as clients see it (core/views.py: in API answers
and in webhook bodies), and runs the end-of-job hooks: release the tenant's quota slot, count metrics,
queue webhook deliveries. Workers use `JobStore` directly; the gateway's `app.jobs.JobService` extends it
with submission, admission, listing, cancel and delete. It imports no torch and nothing from HTTP.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime, timezone
from typing import Iterable, Optional

from redis import Redis
from rq import Retry, get_current_job
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import Job, JobStatus as RQStatus
from rq.results import Result
from rq.utils import utcformat

from .connection import Keys, keys_for, queues
from .deliveries import DeliveryLog, body_name
from .usage import Usage
from .metrics import Metrics
from .plan import STORED, is_queued_plan, is_stored_plan, resolve_payload
from .queueing import FairQueue, token_shape
from .settings import Settings, get_settings
from .storage import FORMATS, BlobStore, converted_name, open_store
from .url_signing import UrlSigner
from .views import TERMINAL, BatchView, ErrorView, JobView, OutputView, Progress

log = logging.getLogger(__name__)

JOB_FUNC = "worker.entry.run_job"
ON_FAILURE = "core.job_store.on_rq_failure"
# Failure callbacks that job records of earlier releases name (see JobStore.rename_old_callbacks).
OLD_CALLBACKS = {"app.jobs.on_rq_failure": ON_FAILURE}
_RENAME_CALLBACK = """
if redis.call('HGET', KEYS[1], 'failure_callback_name') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'failure_callback_name', ARGV[2])
  return 1
end
return 0
"""
_KEEP_OUTCOME = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'meta', ARGV[1])
end
redis.call('DEL', KEYS[2])
return 1
"""
STATUS = {
    RQStatus.QUEUED: "queued",
    RQStatus.DEFERRED: "queued",
    RQStatus.SCHEDULED: "queued",
    RQStatus.STARTED: "running",
    RQStatus.FINISHED: "succeeded",
    RQStatus.FAILED: "failed",
    RQStatus.STOPPED: "failed",
    RQStatus.CANCELED: "canceled",
}


DEFAULT_WEBHOOK_EVENTS = ("completed",)
RUNNING_EVENTS = {"started", "progress"}


def drop_lapsed_executions(job: Job) -> None:
    """Forget the job's executions whose record has lapsed (a killed worker's attempt).

    RQ keeps an execution's id in its job's list a minute longer than the execution's own record, and
    deleting the job looks every listed execution up: within that minute after a worker was killed, the
    deletion raises. A delivery (deleted when done) that worked is then counted as failed and sent again;
    DELETE /v1/jobs/{id} would fail. One round trip when nothing has lapsed."""
    registry = job.execution_registry
    ids = [i.decode() if isinstance(i, bytes) else i for i in job.connection.zrange(registry.key, 0, -1)]
    if not ids:
        return
    with job.connection.pipeline(transaction=False) as pipe:
        for execution_id in ids:
            pipe.exists(Execution(execution_id, job.id, job.connection).key)
        alive = pipe.execute()
    lapsed = [execution_id for execution_id, exists in zip(ids, alive) if not exists]
    if lapsed:
        job.connection.zrem(registry.key, *lapsed)


def wants(webhook: Optional[dict], event: str) -> bool:
    """Whether a webhook (url, secret, events) asked for `event`: started, progress or completed (the
    default; records from before `events` existed have none)."""
    return bool(webhook) and event in (webhook.get("events") or DEFAULT_WEBHOOK_EVENTS)


class JobNotFound(LookupError):
    """No such job or batch, or one that belongs to another tenant (the same answer, so ids do not leak)."""


def new_id() -> str:
    """Unguessable ids (128 random bits) for jobs, batches and webhook deliveries."""
    return uuid.uuid4().hex


def iso_time(value: Optional[datetime]) -> Optional[str]:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat().replace("+00:00", "Z")


def now_iso() -> str:
    return iso_time(datetime.now(timezone.utc))


class JobStore:
    def __init__(self, redis: Redis, settings: Settings):
        self.redis = redis
        self.settings = settings
        self.keys: Keys = keys_for(settings.queue_prefix)
        self.queue, self.webhook_queue = queues(redis, settings)
        self.metrics = Metrics(redis, self.keys)
        self.signer = UrlSigner(redis, self.keys, settings.url_signing_secret)
        self._files: Optional[BlobStore] = None

    @property
    def files(self) -> BlobStore:
        """The blob store of inputs and outputs (built on first use: only output URLs need it here)."""
        if self._files is None:
            self._files = open_store(self.settings)
        return self._files

    # ---- records ---------------------------------------------------------------------------------------------
    def fetch(self, job_id: str) -> Job:
        try:
            return Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            raise JobNotFound(job_id) from None

    def status(self, job: Job, refresh: bool = True) -> str:
        """The job's status as clients name it."""
        return STATUS.get(job.get_status(refresh=refresh), "queued")

    def batch_record(self, batch_id: str, tenant: Optional[str] = None) -> dict[bytes, bytes]:
        """The batch's hash; JobNotFound when it is gone or `tenant` (None = internal caller) does not own it."""
        record = self.redis.hgetall(self.keys.batch(batch_id))
        if not record or (tenant is not None and record.get(b"tenant", b"").decode() != tenant):
            raise JobNotFound(batch_id)
        return record

    def url(self, path: str) -> str:
        return self.settings.public_url.rstrip("/") + path

    # ---- progress and cancel flags ------------------------------------------------------------------------------
    def record_progress(self, job_ids: Iterable[str], step: int, total: int, pipe=None) -> None:
        job_ids = list(job_ids)
        target = pipe if pipe is not None else self.redis.pipeline()
        for job_id in job_ids:
            key = self.keys.progress(job_id)
            target.hset(key, mapping={"step": step, "total": total})
            target.expire(key, self.settings.job_ttl_s)
        if pipe is None:
            target.execute()
        self.running_webhooks(job_ids, step, total)

    # ---- webhooks of running jobs (webhook.events: started, progress) ------------------------------------
    def running_webhooks(self, job_ids: Iterable[str], step: int, total: int) -> None:
        """Queue `started` (step 0) and throttled `progress` (0 < step < total; the end sends `completed`)
        calls for the jobs whose webhook asked for them. Best effort: never fails a job."""
        for job_id in job_ids:
            try:
                hook = self._running_hook(job_id)
                kind = "started" if step == 0 else "progress" if step < total else None
                if hook is None or kind not in hook[2]:
                    continue
                gate = f"{self.keys.prefix}:webhook-{kind}:{job_id}"  # started once; progress once per interval
                ttl_ms = int(self.settings.webhook_progress_interval_s * 1000) if kind == "progress" else self.settings.job_ttl_s * 1000
                if not self.redis.set(gate, 1, nx=True, px=max(1, ttl_ms)):
                    continue
                owner, owner_id, _ = hook
                view = self.view(job_id)
                if kind == "progress":
                    view.progress = Progress(step=step, total=total, fraction=round(step / max(total, 1), 4))
                body = {"event": f"{'job' if owner == 'job' else 'batch.item'}.{kind}", "job": view.model_dump(mode="json")}
                if owner == "batch":
                    body["batch_id"] = owner_id
                self.enqueue_webhook(owner, owner_id, body)
            except Exception:  # a webhook of a running job is a courtesy: the job goes on
                log.warning("could not queue a webhook of a running job", exc_info=True, extra={"job_id": job_id})

    def _running_hook(self, job_id: str) -> Optional[tuple[str, str, tuple[str, ...]]]:
        """(owner, owner id, events) of the webhook that hears about the job while it runs (its own, else its
        batch's), when it asked for started or progress; None otherwise. Read once per job per process."""
        cache: dict = self.__dict__.setdefault("_running_hooks", {})
        if job_id not in cache:
            if len(cache) > 10_000:
                cache.clear()
            meta = self.fetch(job_id).meta or {}
            owner, owner_id, hook = "job", job_id, meta.get("webhook")
            if not hook and meta.get("batch_id"):
                raw = self.redis.hget(self.keys.batch(meta["batch_id"]), "webhook")
                owner, owner_id, hook = "batch", meta["batch_id"], json.loads(raw) if raw else None
            events = tuple(hook.get("events") or DEFAULT_WEBHOOK_EVENTS) if hook else ()
            cache[job_id] = (owner, owner_id, events) if RUNNING_EVENTS & set(events) else None
        return cache[job_id]

    def write_progress(self, pipe, job_id: str, step: int, total: int, step_s: Optional[float] = None,
                       new: bool = False) -> None:
        """One command per job and step (its expiry set once, when it starts): the worker's per-step
        pipeline carries every row's progress in one round trip. `step_s` (the step's wall time) gives the ETA."""
        key = self.keys.progress(job_id)
        fields = {"step": step, "total": total}
        if step_s is not None:
            fields["step_s"] = round(step_s, 5)
        pipe.hset(key, mapping=fields)
        if new:
            pipe.expire(key, self.settings.job_ttl_s)

    def request_cancel(self, job_id: str, reason: str) -> None:
        """Flag the job canceled; a worker running it drops it at its next step."""
        self.redis.set(self.keys.cancel(job_id), reason, ex=self.settings.job_ttl_s)

    def record_end(self, job: Job) -> None:
        """Give a canceled job its end time (RQ's cancel records none), once: the job view's finished_at."""
        if job.ended_at is None:
            job.ended_at = datetime.now(timezone.utc).replace(tzinfo=None)
            self.redis.hset(job.key, "ended_at", utcformat(job.ended_at))

    def cancel_requested(self, job_ids: list[str]) -> list[bool]:
        return [flag is not None for flag in self.redis.mget([self.keys.cancel(job_id) for job_id in job_ids])]

    def rename_old_callbacks(self) -> int:
        """Point jobs queued by an earlier release at today's failure callback. RQ resolves a job's callback
        by its dotted name when the job's worker dies, and a name that no longer resolves stops the worker
        cleaning up (every restart, until the job expires); the callback moved from app/jobs.py to here.
        Returns how many records were changed."""
        queue = self.queue
        job_ids = set(queue.get_job_ids()) | {i.decode() for i in self.redis.lrange(queue.intermediate_queue_key, 0, -1)}
        for registry in (queue.started_job_registry, queue.scheduled_job_registry, queue.deferred_job_registry):
            job_ids.update(registry.get_job_ids(cleanup=False))  # a cleanup would resolve the names first
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in sorted(job_ids):
                for old, new in OLD_CALLBACKS.items():
                    pipe.eval(_RENAME_CALLBACK, 1, Job.key_for(job_id), old, new)
            renamed = sum(pipe.execute())
        if renamed:
            log.info("renamed the failure callback of jobs from an earlier release", extra={"jobs": renamed})
        return renamed

    def forget(self, job_id: str) -> None:
        """Drop the job's progress and cancel flag (its RQ record is the caller's)."""
        self.redis.delete(self.keys.progress(job_id), self.keys.cancel(job_id))

    # ---- what clients see: the API's answers and the webhook bodies -------------------------------------------
    def view(self, job_id: str, job: Optional[Job] = None, tenant: Optional[str] = None) -> JobView:
        """The job as its owner sees it; another tenant gets JobNotFound (None = internal caller)."""
        job = job or self.fetch(job_id)
        meta = job.meta or {}
        if tenant is not None and meta.get("tenant") != tenant:
            raise JobNotFound(job_id)
        status = self.status(job, refresh=False)
        view = JobView(
            id=job.id,
            task=meta.get("task", ""),
            status=status,
            queue_position=self.queue.get_job_position(job.id) if status == "queued" else None,
            created_at=meta.get("created_at") or iso_time(job.created_at),
            started_at=iso_time(job.started_at) if status != "queued" else None,
            finished_at=iso_time(job.ended_at) if status in TERMINAL else None,
            warnings=list(meta.get("warnings", [])),
            attempts=int(meta.get("attempts", 0)),
            batch_id=meta.get("batch_id"),
            priority=int(meta.get("priority") or 0),
            urls={
                "self": self.url(f"/v1/jobs/{job.id}"),
                "cancel": self.url(f"/v1/jobs/{job.id}/cancel"),
                "events": self.url(f"/v1/jobs/{job.id}/events"),
            },
            input=self._input_echo(job, meta),
        )
        progress = self.redis.hgetall(self.keys.progress(job.id))
        if progress:
            step, total = int(progress[b"step"]), int(progress[b"total"])
            view.progress = Progress(step=step, total=total, fraction=round(step / max(total, 1), 4))
            if status == "running" and b"step_s" in progress:
                view.eta_s = round(max(0, total - step) * float(progress[b"step_s"]), 2)
        if status == "queued" and view.queue_position is not None:
            view.eta_s = self._queued_eta(job, meta, view.queue_position)
        if status == "succeeded":
            result = self._result(job, meta)
            view.outputs = [self._output(job.id, f, meta.get("output_format", "png")) for f in result.get("outputs", [])]
            view.data = result.get("data", {})
            view.warnings = result.get("warnings", view.warnings)
            view.timings = dict(result.get("timings", {}))
        if status == "failed":
            view.error = self._failure(job, meta)
        if status == "canceled":
            view.error = ErrorView(type="canceled", message=meta.get("cancel_reason", "the job was canceled"))
        if view.started_at and view.finished_at:
            view.timings.setdefault("run_s", round((job.ended_at - job.started_at).total_seconds(), 3))
        return view

    def _input_echo(self, job: Job, meta: dict) -> dict:
        """What the client sent, images by summary: in the queued plan (core/plan.py), read from the result
        store when the plan was stored there; in the meta of a job queued before plans existed. {} when a
        stored plan cannot be read (expired with the inputs, or the store is down): the view still answers."""
        if "input" in meta:
            return meta["input"] or {}
        try:
            payload = job.args[1]
        except Exception:  # a record without arguments: nothing to show
            return {}
        if is_stored_plan(payload):
            try:
                payload = resolve_payload(payload, self.files.load_input)
            except Exception as exc:
                log.warning("the input echo of a job is not available: its queued plan %s could not be read (%s)",
                            payload.get(STORED), exc, extra={"job_id": job.id})
                return {}
        return payload.get("input") or {} if is_queued_plan(payload) else {}

    def _queued_eta(self, job: Job, meta: dict, position: int) -> Optional[float]:
        """Seconds until a queued job ends, from its shape's measured step time: the jobs ahead of it run
        MAX_BATCH at a time on each ready worker, taken to be as long as it is (an estimate)."""
        shape = token_shape(meta.get("bucket", ""))
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.step_seconds, shape)
            pipe.zcount(self.keys.workers, time.time() - self.settings.heartbeat_ttl_s, "+inf")
            step_s, workers = pipe.execute()
        parts = meta.get("bucket", "").split("x")  # height x width x frames x steps [x rope]
        steps = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else None
        if step_s is None or not steps:
            return None
        slots = self.settings.max_batch * max(1, int(workers))
        return round((position // slots + 1) * int(steps) * float(step_s), 2)

    def _output(self, job_id: str, output: dict, fmt: str) -> OutputView:
        # Named and labelled by the format they are served in: `image.jpeg`, image/jpeg. 16-bit depth
        # stays PNG (8-bit formats would change its values' meaning).
        name, media_type = output["name"], output["media_type"]
        if fmt != "png" and output["kind"] != "depth16" and name.endswith(".png"):
            name, media_type = converted_name(name, fmt), FORMATS[fmt][1]
        path = f"/v1/files/{job_id}/{name}"
        # Object storage: a presigned URL of the bucket (the bytes never pass through the API); a local
        # folder: the API's own signed URL.
        signed = self.files.presigned_url(job_id, name, self.settings.signed_url_ttl_s)
        if signed is None:
            signed = self.url(path) + "?" + self.signer.query(job_id, name, self.settings.signed_url_ttl_s)
        return OutputView(name=name, url=self.url(path), signed_url=signed, kind=output["kind"],
                          media_type=media_type, width=output["width"], height=output["height"])

    def _moved_outcome(self, job: Job, name: str):
        """meta[`name`] as Redis has it now: RQ's result stream is read after the record, and the outcome
        may have moved from one to the other in between (keep_outcome_in_record)."""
        raw = self.redis.hget(job.key, "meta")
        return (job.serializer.loads(raw) or {}).get(name) if raw else None

    def _result(self, job: Job, meta: dict) -> dict:
        if "result" in meta:
            return meta["result"] or {}
        value = job.return_value()
        if value is None:
            value = self._moved_outcome(job, "result")
        return value or {}

    def _failure(self, job: Job, meta: dict) -> ErrorView:
        error = meta.get("error")
        latest = job.latest_result() if error is None else None
        if error is None and latest is None:
            error = self._moved_outcome(job, "error")
        if error is not None:
            return ErrorView(type=error["type"], message=error["message"])
        text = (latest.exc_string or "") if latest else ""
        if "AbandonedJobError" in text or "stuck" in text:
            return ErrorView(type="worker_lost", message="the worker running this job stopped and the job's retries are used up")
        return ErrorView(type="internal", message="the job failed inside the worker; see the worker's log for this job id")

    def batch_view(self, batch_id: str, tenant: Optional[str] = None) -> BatchView:
        record = self.batch_record(batch_id, tenant)
        jobs = []
        for job_id in json.loads(record[b"job_ids"]):
            try:
                jobs.append(self.view(job_id))
            except JobNotFound:
                continue
        counts = {s: 0 for s in ("queued", "running", "succeeded", "failed", "canceled")}
        for job in jobs:
            counts[job.status] += 1
        return BatchView(
            id=batch_id,
            status="completed" if all(j.status in TERMINAL for j in jobs) else "running",
            created_at=record[b"created_at"].decode(),
            counts=counts,
            jobs=jobs,
            urls={"self": self.url(f"/v1/batches/{batch_id}")},
        )

    # ---- end of a job (called by workers, by the gateway for jobs canceled while queued, and after RQ fails one) --
    def keep_outcome_in_record(self, job: Job) -> None:
        """Move what the job's view needs of its end (the result, or the error) from RQ's result stream
        into the job's record, and drop the stream. A Redis stream holds about 4.7 KB however small its
        entry (its first node is allocated whole), more than all the job's other records together."""
        meta = job.meta if job.meta is not None else {}
        status = self.status(job, refresh=False)
        if status == "succeeded" and "result" not in meta:
            meta["result"] = job.return_value() or {}
        elif status == "failed" and "error" not in meta:
            meta["error"] = self._failure(job, meta).model_dump()
        elif not self.redis.exists(Result.get_key(job.id)):
            return
        job.meta = meta
        # one step, so a reader finds the outcome in one place or the other; a record deleted meanwhile
        # (DELETE /v1/jobs/{id}) is not brought back without its expiry
        self.redis.eval(_KEEP_OUTCOME, 2, job.key, Result.get_key(job.id), job.serializer.dumps(meta))

    def job_ended(self, job_id: str) -> None:
        """Keep the job's outcome in its record, release its quota slot, count it and queue its webhook
        calls (its own, its batch item's and the batch's last)."""
        job = self.fetch(job_id)
        if self.status(job, refresh=False) == "canceled":
            self.record_end(job)
        if self.status(job) in TERMINAL:
            self.keep_outcome_in_record(job)
        view = self.view(job_id, job)
        meta = job.meta or {}
        if view.status == "canceled" and isinstance(self.queue, FairQueue):
            self.queue.line.remove(job_id)  # canceled while queued: out of the line at once
        if meta.get("tenant"):
            self.redis.srem(self.keys.active_jobs(meta["tenant"]), job_id)
        self.metrics.inc("jobs_total", {"task": view.task, "status": view.status})
        if meta.get("tenant"):
            Usage(self.redis, self.keys.prefix).record(
                job_id, meta["tenant"], meta.get("key_id", ""), view.task, view.status, len(view.outputs),
                float(view.timings.get("run_s", 0) or 0), meta.get("bucket", ""))
        if view.created_at and view.status == "succeeded":
            created = datetime.fromisoformat(view.created_at.replace("Z", "+00:00"))
            self.metrics.observe("job_latency_seconds", {"task": view.task}, (datetime.now(timezone.utc) - created).total_seconds())
        body = {"event": f"job.{view.status}", "job": view.model_dump(mode="json")}
        self.__dict__.get("_running_hooks", {}).pop(job_id, None)
        if wants(meta.get("webhook"), "completed"):
            self.enqueue_webhook("job", job_id, body)
        batch_id = meta.get("batch_id")
        if batch_id:
            self._batch_item_ended(batch_id, job_id, body)

    def _batch_item_ended(self, batch_id: str, job_id: str, body: dict) -> None:
        record = self.redis.hgetall(self.keys.batch(batch_id))
        if not record:
            return
        webhook = json.loads(record.get(b"webhook", b"null"))
        webhook = webhook if wants(webhook, "completed") else None  # started/progress only: no end calls
        total = len(json.loads(record[b"job_ids"]))
        with self.redis.pipeline() as pipe:
            pipe.sadd(self.keys.batch_ended(batch_id), job_id)
            pipe.expire(self.keys.batch_ended(batch_id), self.settings.job_ttl_s)
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

    # ---- webhooks ----------------------------------------------------------------------------------------------
    @property
    def deliveries(self) -> DeliveryLog:
        return DeliveryLog(self.redis, self.keys.prefix, self.settings.job_ttl_s)

    def enqueue_webhook(self, owner: str, owner_id: str, body: dict, delivery_id: Optional[str] = None) -> str:
        """Queue one signed delivery; the deliverer process sends it and retries with backoff.

        One delivery per event: its id is derived from the owner, the event and the job, and a second
        call for the same event (a job that ran twice after its worker was killed) queues nothing, so
        receivers get the event once, under the same delivery id (webhook-id) in every retry. A given
        `delivery_id` sends an earlier delivery again (a redelivery: the same id, so receivers de-duplicate)."""
        if delivery_id is None:
            event_job = (body.get("job") or {}).get("id", "") if isinstance(body.get("job"), dict) else ""
            if body.get("event", "").endswith(".progress"):  # progress calls are many per job, each its own
                event_job = f"{event_job}:{((body.get('job') or {}).get('progress') or {}).get('step', '')}"
            delivery_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{owner}:{owner_id}:{body.get('event')}:{event_job}").hex
            if not self.deliveries.claim(delivery_id):
                return delivery_id  # this event was queued already
        text = json.dumps(body, separators=(",", ":"), sort_keys=True)
        kept = self._keep_delivery_body(owner_id, delivery_id, text)
        self.deliveries.queued(owner, owner_id, delivery_id, str(body.get("event", "")), None if kept else text)
        intervals = [self.settings.webhook_backoff_s * 2**i for i in range(self.settings.webhook_retries)]
        if owner == "batch" and str(body.get("event", "")).startswith("batch.item."):
            pending = self.keys.batch_webhooks_pending(owner_id)
            with self.redis.pipeline() as pipe:  # batch.completed waits for these (deliveries run concurrently)
                pipe.sadd(pending, delivery_id)
                pipe.expire(pending, self.settings.job_ttl_s)
                pipe.execute()
        self.webhook_queue.enqueue(
            "worker.webhooks.deliver",
            owner,
            owner_id,
            delivery_id,
            text,
            job_id=f"wh-{delivery_id}" + (f"-r{uuid.uuid4().hex[:8]}" if self.redis.exists(Job.key_for(f"wh-{delivery_id}")) else ""),
            retry=Retry(max=len(intervals), interval=[max(1, int(round(i))) for i in intervals]) if intervals else None,
            result_ttl=0,  # a delivery done is forgotten at once (nothing reads it); one that failed stays to be looked at
            failure_ttl=self.settings.job_ttl_s,
            description=f"webhook {body.get('event')} for {owner} {owner_id}",
        )
        return delivery_id

    def _keep_delivery_body(self, owner_id: str, delivery_id: str, text: str) -> bool:
        """The body in the blob store, for a redelivery; False (kept in Redis instead) when the store refuses."""
        try:
            self.files.save(owner_id, body_name(delivery_id), text.encode())
            return True
        except Exception as exc:  # the delivery goes out all the same
            log.warning("webhook body kept in Redis: the blob store refused it (%s)", exc, extra={"delivery_id": delivery_id})
            return False

    def delivery_body(self, owner_id: str, delivery_id: str, record: dict) -> Optional[str]:
        """The body a delivery sent; None when it is gone (expired with the job's files)."""
        if record.get("body"):
            return record["body"]
        data = self.files.read(owner_id, body_name(delivery_id))
        return data.decode() if data is not None else None

    def item_deliveries_pending(self, batch_id: str) -> int:
        """How many of the batch's item deliveries are not done yet."""
        return self.redis.scard(self.keys.batch_webhooks_pending(batch_id))

    def item_delivery_done(self, batch_id: str, delivery_id: str) -> None:
        """An item delivery was delivered, refused or ran out of retries."""
        self.redis.srem(self.keys.batch_webhooks_pending(batch_id), delivery_id)

    def webhook_of(self, owner: str, owner_id: str) -> Optional[dict]:
        """The webhook (url, secret) of job or batch `owner_id`; None when it has none or is gone."""
        if owner == "job":
            try:
                return self.fetch(owner_id).meta.get("webhook")
            except JobNotFound:  # deleted by its owner meanwhile: nothing left to tell
                return None
        record = self.redis.hgetall(self.keys.batch(owner_id))
        return json.loads(record.get(b"webhook", b"null")) if record else None


def on_rq_failure(job: Job, connection: Redis, exc_type, exc_value, tb) -> None:
    """RQ failure callback. Our worker reports its own failures; this catches the ones RQ decides, i.e. a
    job whose worker died. RQ calls it before it marks the job failed, so when no retry is left the
    end-of-job hooks are queued to run once the failure is recorded (on the webhook queue)."""
    if job.retries_left:
        return
    try:
        _, webhook_queue = queues(connection, get_settings())
        webhook_queue.enqueue("core.job_store.run_job_ended", job.id, job_id=f"ended-{job.id}", description=f"end of {job.id}")
    except Exception:  # never break RQ's cleanup
        log.exception("could not queue the end-of-job hooks", extra={"job_id": job.id})


def run_job_ended(job_id: str) -> None:
    """RQ job: run the end-of-job hooks of a job that RQ failed (see on_rq_failure)."""
    JobStore(get_current_job().connection, get_settings()).job_ended(job_id)
