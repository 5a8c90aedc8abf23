"""Service metrics kept in one Redis hash (so every process adds to the same counters) and rendered in
the Prometheus text format by the gateway's `/metrics`."""

from __future__ import annotations

import math
from typing import Iterable, Optional

from redis import Redis

BUCKETS = {
    "batch_size": (1, 2, 4, 8, 16, 32, 64),
    "step_seconds": (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    "job_latency_seconds": (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
}
HELP = {
    "jobs_submitted_total": ("counter", "Jobs accepted by the gateway, by task"),
    "jobs_total": ("counter", "Jobs that ended, by task and final status"),
    "unreplicated_writes_total": (
        "counter", "Submissions answered, and job starts and ends recorded, before REDIS_WAIT_REPLICAS replicas held "
        "them (REDIS_WAIT_TIMEOUT_MS ran out), by what"),
    "batches_total": ("counter", "Batches whose items have all ended"),
    "batch_size": ("histogram", "Jobs sharing a denoising step of a worker (one observation per step)"),
    "step_seconds": ("histogram", "Wall time of one denoising step of a batch"),
    "job_latency_seconds": ("histogram", "Submission to result of succeeded jobs"),
}
PREFIX = "onediffusion_"


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v).replace(chr(34), "")}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    def __init__(self, redis: Redis, keys):
        self.redis = redis
        self.key = keys.metrics

    def inc(self, name: str, labels: dict, value: float = 1, pipe=None) -> None:
        (pipe if pipe is not None else self.redis).hincrbyfloat(self.key, name + _labels(labels), value)

    def observe(self, name: str, labels: dict, value: float, pipe=None) -> None:
        target = pipe if pipe is not None else self.redis.pipeline()
        for bound in BUCKETS[name]:
            if value <= bound:
                target.hincrbyfloat(self.key, f"{name}_bucket" + _labels({**labels, "le": _fmt(bound)}), 1)
        target.hincrbyfloat(self.key, f"{name}_bucket" + _labels({**labels, "le": "+Inf"}), 1)
        target.hincrbyfloat(self.key, f"{name}_sum" + _labels(labels), value)
        target.hincrbyfloat(self.key, f"{name}_count" + _labels(labels), 1)
        if pipe is None:
            target.execute()

    def observe_many(self, name: str, labels: dict, values: list[float], pipe) -> None:
        """Many observations of one histogram at once: at most one command per bucket, whatever their
        number (a worker adds its per-step times every few seconds, not per step)."""
        if not values:
            return
        for bound in BUCKETS[name]:
            count = sum(1 for v in values if v <= bound)
            if count:
                pipe.hincrbyfloat(self.key, f"{name}_bucket" + _labels({**labels, "le": _fmt(bound)}), count)
        pipe.hincrbyfloat(self.key, f"{name}_bucket" + _labels({**labels, "le": "+Inf"}), len(values))
        pipe.hincrbyfloat(self.key, f"{name}_sum" + _labels(labels), sum(values))
        pipe.hincrbyfloat(self.key, f"{name}_count" + _labels(labels), len(values))

    def render(self, gauges: Optional[Iterable[tuple[str, str, dict, float]]] = None) -> str:
        """All counters and histograms, plus `gauges` given as (name, help, labels, value)."""
        stored = {k.decode(): float(v) for k, v in self.redis.hgetall(self.key).items()}
        lines: list[str] = []
        for name, (kind, text) in HELP.items():
            series = sorted(k for k in stored if k.split("{")[0] in (name, f"{name}_bucket", f"{name}_sum", f"{name}_count"))
            lines += [f"# HELP {PREFIX}{name} {text}", f"# TYPE {PREFIX}{name} {kind}"]
            if kind == "histogram":
                series.sort(key=_histogram_order)
            lines += [f"{PREFIX}{k} {_fmt(stored[k])}" for k in series]
        for name, text, labels, value in gauges or ():
            lines += [f"# HELP {PREFIX}{name} {text}", f"# TYPE {PREFIX}{name} gauge", f"{PREFIX}{name}{_labels(labels)} {_fmt(value)}"]
        return "\n".join(lines) + "\n"


def _histogram_order(series: str):
    """Buckets in ascending `le` order (then +Inf), then sum and count, grouped by their other labels."""
    name, _, rest = series.partition("{")
    labels = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if "=" in part)
    le = labels.pop("le", None)
    bound = math.inf if le in (None, '"+Inf"') else float(le.strip('"'))
    kind = {"_bucket": 0, "_sum": 1, "_count": 2}.get(name[name.rfind("_"):], 3)
    return (sorted(labels.items()), kind, bound)
