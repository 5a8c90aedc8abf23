"""Running a batch of queued plans through the model and storing what comes out.

This is the model-facing half of the worker (RQ bookkeeping lives in `batch_worker`): queued plans
(core/plan.py; the gateway validated and planned the request) -> frame plans with their input images read
from the result store -> one `OneDiffusion.run` -> files in the result store + a result dict per job.
Every job gets its own outcome; one bad job never fails the others.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from pydantic import ValidationError
from redis.exceptions import RedisError

from core.plan import (PlanVersionError, QueuedPlan, StoredPlanUnreadable, is_queued_plan, is_stored_plan,
                       resolve_payload)
from core.provenance import input_echo, parameter_texts, with_text_chunks
from core.settings import Settings
from core.storage import FORMATS, BlobStore, StorageUnavailable, convert, converted_name
from model.pipeline import Canceled, OneDiffusion, TaskResult
from model.tasks import TASKS, FramePlan, TaskInputError

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    result: Optional[dict] = None
    error: Optional[dict] = None  # {"type", "message"}
    canceled: bool = False


@dataclass
class WorkItem:
    job_id: str
    task: str
    # a QueuedPlan's payload (a stored plan's reference until `Executor.resolve`); a raw request dict for
    # jobs queued before plans existed
    payload: dict
    output_format: str = "png"  # the format the job's output URLs name (object storage stores it too)


class InputUnavailable(Exception):
    """A queued plan, or one of its input images, cannot be read from the result store."""


class Executor:
    def __init__(self, model: OneDiffusion, store: BlobStore, settings: Settings):
        self.model = model
        self.store = store
        self.settings = settings

    def plan(self, item: WorkItem) -> FramePlan:
        """The model's plan of a queued job: the gateway's plan as queued, its images read by digest. A job
        queued by a release before plans existed carries its raw request, which is validated and planned
        here as that release's worker did."""
        if not is_queued_plan(item.payload):
            return TASKS[item.task].model_validate(item.payload).plan(self.settings.task_limits())
        self.resolve(item)
        return QueuedPlan.from_payload(item.payload).frame_plan(self._load_input)

    def resolve(self, item: WorkItem) -> None:
        """Replace a stored plan's reference in `item` by the plan (read from the result store once)."""
        if not is_stored_plan(item.payload):
            return
        try:
            item.payload = resolve_payload(item.payload, lambda digest: self._load(
                digest, "queued plan", "it is kept with the input images, RESULTS_TTL_S"))
        except StoredPlanUnreadable as exc:
            raise InputUnavailable(f"{exc}; submit the job again") from None

    def _load_input(self, digest: str) -> bytes:
        return self._load(digest, "input image", "inputs are kept RESULTS_TTL_S")

    def _load(self, digest: str, what: str, kept: str) -> bytes:
        """A blob of the job's inputs (`what`: which, for the message; `kept`: how long such blobs live)."""
        try:
            return self.store.load_input(digest)
        except StorageUnavailable:
            raise  # the storage is down, not the blob gone: retried (with_storage), then storage_unavailable
        except FileNotFoundError:
            raise InputUnavailable(
                f"the {what} {digest} of this job is no longer stored ({kept} "
                f"= {self.settings.results_ttl_s} s); submit the job again"
            ) from None
        except Exception as exc:
            raise InputUnavailable(f"could not read the {what} {digest} of this job from storage: {exc}") from exc

    def save(self, job_id: str, result: TaskResult, texts: Optional[dict[str, str]] = None, fmt: str = "png") -> dict:
        """Store the files (PNGs with `texts` as text chunks: the parameters that made them). A store that
        clients fetch from directly (object storage) also gets each image in the job's format `fmt`, the
        name its output URL carries (16-bit depth stays PNG only)."""
        outputs = []
        for file in result.files:
            data = with_text_chunks(file.data, texts) if texts and file.media_type == "image/png" else file.data
            self.store.save(job_id, file.name, data)
            if self.store.redirects and fmt in FORMATS and fmt != "png" and file.kind != "depth16" \
                    and file.name.endswith(".png"):
                self.store.save(job_id, converted_name(file.name, fmt), convert(data, fmt)[0])
            outputs.append(
                {"name": file.name, "kind": file.kind, "media_type": file.media_type, "width": file.width, "height": file.height}
            )
        return {"outputs": outputs, "data": result.data, "warnings": result.warnings, "timings": result.timings}

    def run(
        self,
        items: Sequence[WorkItem],
        on_step: Optional[Callable[[int, int], None]] = None,
        canceled: Optional[Callable[[], set[int]]] = None,
    ) -> list[Outcome]:
        """`canceled()` returns positions in `items` to drop; outcomes come back in `items` order."""
        outcomes: list[Optional[Outcome]] = [None] * len(items)
        plans, positions = [], []
        for i, item in enumerate(items):
            plan, error = self.plan_or_error(item)
            if error is not None:
                outcomes[i] = Outcome(error=error)
            else:
                plans.append(plan)
                positions.append(i)

        def dropped() -> set[int]:
            wanted = canceled()
            return {k for k, i in enumerate(positions) if i in wanted}

        if plans:
            results = self._run_isolated(plans, on_step, dropped if canceled else None)
            for i, result in zip(positions, results):
                outcomes[i] = self._outcome(items[i], result)
        return outcomes  # type: ignore[return-value]

    def plan_or_error(self, item: WorkItem) -> tuple[Optional[FramePlan], Optional[dict]]:
        """(the job's model plan, None), or (None, the error the job fails with): storage retried for
        STORAGE_RETRY_S; a Redis error never becomes a job's error text (it can name other jobs)."""
        try:
            return self.with_storage(lambda: self.plan(item)), None
        except (TaskInputError, ValidationError, KeyError, PlanVersionError) as exc:
            return None, {"type": "invalid_request", "message": str(exc)}
        except StorageUnavailable as exc:
            return None, {"type": "storage_unavailable", "message": str(exc)}
        except InputUnavailable as exc:
            return None, {"type": "input_unavailable", "message": str(exc)}
        except RedisError as exc:
            log.error("could not plan a job on a Redis error: %s", exc, extra={"job_id": item.job_id})
            return None, {"type": "internal", "message": "the job store (Redis) failed while this job started"}

    def _run_isolated(self, plans, on_step, canceled):
        """One batch; if the batch itself breaks (out of memory, say), each plan alone, so the one that
        breaks fails by itself."""
        try:
            return self.model.run(plans, on_step=on_step, canceled=canceled)
        except Exception as exc:
            if len(plans) == 1:
                log.exception("job failed in the model")
                return [exc]
            log.warning("batch of %d failed (%s); running its jobs one by one", len(plans), exc)
            results = []
            for k, plan in enumerate(plans):
                one = (lambda k=k: {0} if k in canceled() else set()) if canceled else None
                results.extend(self._run_isolated([plan], on_step, one))
            return results

    def outcome(self, item: WorkItem, result) -> Outcome:
        """A job's outcome from what the model gave for it (a TaskResult is stored; an exception fails it)."""
        return self._outcome(item, result)

    def _texts(self, item: WorkItem) -> Optional[dict[str, str]]:
        try:
            if is_queued_plan(item.payload):
                self.resolve(item)
                return parameter_texts(item.task, item.payload["input"])
            return parameter_texts(item.task, input_echo(TASKS[item.task].model_validate(item.payload)))
        except Exception:  # provenance is a courtesy: never fail a finished job over it
            log.warning("could not describe the parameters of job %s", item.job_id)
            return None

    def _outcome(self, item: WorkItem, result) -> Outcome:
        if isinstance(result, Canceled):
            return Outcome(canceled=True)
        if isinstance(result, RedisError):  # its text can name other jobs' keys: never in a job's error
            log.error("job failed on a Redis error: %s", result, extra={"job_id": item.job_id})
            return Outcome(error={"type": "internal", "message": "the job store (Redis) failed while this job ran"})
        if isinstance(result, BaseException):
            return Outcome(error={"type": "model_error", "message": f"{type(result).__name__}: {result}"})
        try:
            texts = self._texts(item)
            return Outcome(result=self.with_storage(lambda: self.save(item.job_id, result, texts, item.output_format)))
        except StorageUnavailable as exc:
            log.error("could not store outputs: %s", exc, extra={"job_id": item.job_id})
            return Outcome(error={"type": "storage_unavailable", "message": str(exc)})
        except OSError as exc:
            log.exception("could not store outputs", extra={"job_id": item.job_id})
            return Outcome(error={"type": "storage_error", "message": f"could not store the outputs: {exc.strerror}"})

    def with_storage(self, action):
        """`action()`, tried again while the storage is unavailable, for up to STORAGE_RETRY_S (a storage
        server restarting loses no job); then its StorageUnavailable (the job fails saying what to check)."""
        deadline = time.monotonic() + self.settings.storage_retry_s
        delay = 0.5
        while True:
            try:
                return action()
            except StorageUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("storage unavailable (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
