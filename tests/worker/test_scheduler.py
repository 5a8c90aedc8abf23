"""The step-level batching loop on its own: an in-memory host, the demo model."""

from __future__ import annotations

from model.tasks import TASKS
from worker.scheduler import Entry, RetryAlone, StepReport, StepScheduler


def entry(key: str, steps: int, width: int = 64) -> Entry:
    plan = TASKS["text-to-image"].model_validate(
        {"prompt": key, "width": width, "height": 64, "num_inference_steps": steps, "seed": 1}).plan()
    return Entry(key, plan=plan, shape=f"64x{width}x1")


class Host:
    def __init__(self, arrivals: dict[int, list[Entry]], drop_at: dict[int, str] = {}):
        self.arrivals, self.drop_at = arrivals, drop_at
        self.steps = 0
        self.wants: list[int] = []
        self.rows: list[dict] = []
        self.ended: list[tuple[str, str]] = []

    def after_step(self, rows, step_s, want, shape):
        self.steps += 1
        self.wants.append(want)
        self.rows.append(dict(rows))
        joiners = [e for e in self.arrivals.pop(self.steps, [])][:want]
        drop = {self.drop_at[self.steps]: None} if self.steps in self.drop_at else {}
        return StepReport(drop=drop, joiners=joiners)

    def drops(self, keys):
        return {}

    def finished(self, entry, result, reason):
        kind = "dropped" if result is None else "retry" if isinstance(result, RetryAlone) else type(result).__name__
        self.ended.append((entry.key, kind))

    def stopping(self):
        return False


def test_jobs_join_between_steps_leave_when_done_and_may_be_dropped(demo_model):
    host = Host({1: [entry("short", 2), entry("other-shape", 2, width=128)], 2: [entry("late", 1)]}, drop_at={3: "long"})
    ran = StepScheduler(demo_model.live_batch, max_batch=3).run(host, [entry("long", 6)])
    assert ran == 4
    # short joined after step 1 and ends after step 3; late joins after step 2, ends after step 3; long is
    # dropped after step 3; the job of another shape could not join and goes back to its host to run alone
    assert host.ended == [("other-shape", "retry"), ("short", "TaskResult"), ("late", "TaskResult"), ("long", "dropped")]
    assert host.rows[0] == {"long": (1, 6)} and host.rows[1] == {"long": (2, 6), "short": (1, 2)}
    assert host.wants[:2] == [2, 1] and host.steps == 3


def test_static_batching_admits_nobody_after_the_start(demo_model):
    host = Host({1: [entry("short", 2)]})
    StepScheduler(demo_model.live_batch, max_batch=4, continuous=False).run(host, [entry("a", 2), entry("b", 3)])
    assert set(host.wants) == {0} and [k for k, _ in host.ended] == ["a", "b"]
