"""Running a batch of job payloads through the model and storing what comes out.

This is the model-facing half of the worker (RQ bookkeeping lives in `batch_worker`): payloads ->
validated tasks -> frame plans -> one `OneDiffusion.run` -> files in the result store + a result dict
per job. Every job gets its own outcome; one bad job never fails the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from pydantic import ValidationError

from core.provenance import input_echo, parameter_texts, with_text_chunks
from core.settings import Settings
from core.storage import ResultStore
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
    payload: dict


class Executor:
    def __init__(self, model: OneDiffusion, store: ResultStore, settings: Settings):
        self.model = model
        self.store = store
        self.settings = settings

    def plan(self, item: WorkItem) -> FramePlan:
        return TASKS[item.task].model_validate(item.payload).plan(self.settings.task_limits())

    def save(self, job_id: str, result: TaskResult, texts: Optional[dict[str, str]] = None) -> dict:
        """Store the files (PNGs with `texts` as text chunks: the parameters that made them)."""
        outputs = []
        for file in result.files:
            data = with_text_chunks(file.data, texts) if texts and file.media_type == "image/png" else file.data
            self.store.save(job_id, file.name, data)
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
            try:
                plans.append(self.plan(item))
                positions.append(i)
            except (TaskInputError, ValidationError, KeyError) as exc:
                outcomes[i] = Outcome(error={"type": "invalid_request", "message": str(exc)})

        def dropped() -> set[int]:
            wanted = canceled()
            return {k for k, i in enumerate(positions) if i in wanted}

        if plans:
            results = self._run_isolated(plans, on_step, dropped if canceled else None)
            for i, result in zip(positions, results):
                outcomes[i] = self._outcome(items[i], result)
        return outcomes  # type: ignore[return-value]

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
            return parameter_texts(item.task, input_echo(TASKS[item.task].model_validate(item.payload)))
        except Exception:  # provenance is a courtesy: never fail a finished job over it
            log.warning("could not describe the parameters of job %s", item.job_id)
            return None

    def _outcome(self, item: WorkItem, result) -> Outcome:
        if isinstance(result, Canceled):
            return Outcome(canceled=True)
        if isinstance(result, BaseException):
            return Outcome(error={"type": "model_error", "message": f"{type(result).__name__}: {result}"})
        try:
            return Outcome(result=self.save(item.job_id, result, self._texts(item)))
        except OSError as exc:
            log.exception("could not store outputs", extra={"job_id": item.job_id})
            return Outcome(error={"type": "storage_error", "message": f"could not store the outputs: {exc.strerror}"})
