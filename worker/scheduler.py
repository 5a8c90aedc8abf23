"""Step-level continuous batching: the policy, apart from Redis, RQ and storage.

A worker runs one batch of one token shape at a time. A job that finds the worker idle starts at once
(with the jobs of its shape that are waiting then); after every denoising step, finished jobs leave (each
decoded and stored while the rest go on), canceled or timed-out jobs are dropped, and waiting jobs of the
same shape join, whatever their step count, guidance or arrival time, up to `max_batch` rows. When a job
of another shape is next in the fair order, the batch takes no more joiners and drains, so that job starts
next. Which job is next between tenants is the fair line's business (core/queueing.py); this module only
asks it (`Host.claim`).

`StepScheduler.run` is the loop; a `Host` gives it jobs and takes their outcomes: the RQ worker
(worker/batch_worker.py) and the trace-replay benchmark (benchmarks/scheduling.py) are the two hosts.
With `continuous=False` it is static batching (a batch is formed once and runs to its end), which the
benchmark compares against.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

from model.pipeline import LiveBatch, TaskResult
from model.sampler import Interrupted

log = logging.getLogger(__name__)


class RetryAlone(Exception):
    """Given as a job's result when it cannot finish in this batch (the batch broke, or the job could not
    join it): the host runs it again on its own (same seed: the same result)."""


@dataclass
class Entry:
    """A claimed job: its key, token shape and frame plan (None with `error`: it could not be planned)."""

    key: str
    plan: Any = None
    shape: Optional[str] = None
    error: Optional[dict] = None
    started: float = field(default_factory=time.monotonic)


@dataclass
class StepReport:
    """What the host learned in its one round trip after a step: jobs to drop (key -> reason: None for a
    cancel, an error dict for a time limit) and the joiners it claimed."""

    drop: dict[str, Optional[dict]] = field(default_factory=dict)
    joiners: list[Entry] = field(default_factory=list)


class Host(Protocol):
    def after_step(self, rows: dict[str, tuple[int, int]], step_s: float, want: int, shape: Optional[str]) -> StepReport:
        """Progress of every row (key -> (step, total)) and the step's wall time; claim up to `want` joiners
        of `shape` (0: none), already started in the host's books, and say which rows to drop. One round
        trip to the store."""

    def drops(self, keys: list[str]) -> dict[str, Optional[dict]]:
        """Which of `keys` to drop now (asked while a long step runs, at most every INTERRUPT_POLL_S)."""

    def finished(self, entry: Entry, result: "TaskResult | BaseException | None", reason: Optional[dict]) -> None:
        """A job left the batch: its result or the exception that failed it (RetryAlone: run it alone), or
        None for a dropped one (`reason` None: canceled, else the error, e.g. a time limit)."""

    def stopping(self) -> bool:
        """True once the worker is asked to stop: no more joiners; the rows in hand finish."""


@dataclass
class StepScheduler:
    make_batch: Callable[[Any], LiveBatch]  # first plan -> an empty LiveBatch of its token shape
    max_batch: int
    continuous: bool = True
    on_step: Optional[Callable[[], None]] = None  # called after every denoising step (liveness hooks go here)

    def run(self, host: Host, first: list[Entry]) -> int:
        """Run a batch that starts with `first` until no row is left; returns how many jobs went through it."""
        entries: dict[str, Entry] = {}
        batch: Optional[LiveBatch] = None
        shape: Optional[str] = None
        seen = 0

        def admit(new: list[Entry]) -> None:
            nonlocal batch, shape, seen
            for entry in new:
                seen += 1
                if entry.error is not None:
                    host.finished(entry, None, entry.error)
                    continue
                if batch is None:
                    batch, shape = self.make_batch(entry.plan), entry.shape
                if not batch.joinable(entry.plan):
                    host.finished(entry, RetryAlone("it cannot join this batch"), None)
                    continue
                try:
                    batch.join(entry.key, entry.plan)
                except Exception as exc:  # a bad input fails this job alone
                    log.warning("job %s could not join its batch: %s", entry.key, exc)
                    host.finished(entry, exc, None)
                    continue
                entries[entry.key] = entry

        def drop(reasons: dict[str, Optional[dict]]) -> None:
            for key, reason in reasons.items():
                if key in entries:
                    batch.drop(key)
                    host.finished(entries.pop(key), None, reason)

        def all_dropped() -> bool:
            asked = host.drops(list(entries))
            return bool(entries) and set(entries) <= set(asked)

        admit(first)
        while batch is not None and len(batch):
            t0 = time.perf_counter()
            try:
                done = batch.step(all_dropped)
            except Interrupted:
                drop(host.drops(list(entries)))
                continue
            except Exception as exc:  # the batch broke (out of memory, say): each job again, on its own
                log.warning("a batch of %d broke (%s); running its jobs one by one", len(batch), exc)
                for key in list(entries):
                    batch.drop(key)
                    host.finished(entries.pop(key), RetryAlone(str(exc)), None)
                break
            step_s = time.perf_counter() - t0
            if self.on_step is not None:
                self.on_step()
            for key in done:
                host.finished(entries.pop(key), batch.take(key), None)
            rows = {key: batch.progress(key) for key in entries}
            want = 0
            if self.continuous and batch.open and not host.stopping():
                want = max(0, self.max_batch - len(batch))
            report = host.after_step(rows, step_s, want, shape)
            drop(report.drop)
            admit(report.joiners)
        return seen
