"""Usage per tenant: what its jobs asked for and got, counted once when each job ends, by UTC day, task and
API key (GET /v1/usage sums it by task, day or key). Kept for USAGE_DAYS days."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Optional

from redis import Redis

USAGE_DAYS = 400
METRICS = ("jobs", "succeeded", "failed", "canceled", "images", "run_s", "token_steps")
GROUPS = ("task", "day", "key")


def token_steps(bucket: str) -> int:
    """What a job asked of the denoiser (tokens per frame x frames x steps) from its bucket `HxWxFxS...`."""
    try:
        h, w, frames, steps = (int(v) for v in bucket.split("x")[:4])
    except ValueError:
        return 0
    return (h // 16) * (w // 16) * frames * steps


class Usage:
    def __init__(self, redis: Redis, prefix: str):
        self.redis = redis
        self.prefix = prefix

    def _day_key(self, tenant: str, day: str) -> str:
        return f"{self.prefix}:usage:{tenant}:{day}"

    def record(self, job_id: str, tenant: str, key_id: str, task: str, status: str, images: int, run_s: float,
               bucket: str, when: Optional[datetime] = None) -> None:
        """Count an ended job once (a hook run again counts nothing)."""
        if not self.redis.set(f"{self.prefix}:usage-counted:{job_id}", 1, nx=True, ex=USAGE_DAYS * 86400):
            return
        day = (when or datetime.now(timezone.utc)).strftime("%Y-%m-%d")
        key = self._day_key(tenant, day)
        field = f"{task}|{key_id or '-'}|"
        with self.redis.pipeline() as pipe:
            pipe.hincrby(key, field + "jobs", 1)
            if status in ("succeeded", "failed", "canceled"):
                pipe.hincrby(key, field + status, 1)
            pipe.hincrby(key, field + "images", images)
            pipe.hincrbyfloat(key, field + "run_s", round(run_s, 3))
            pipe.hincrby(key, field + "token_steps", token_steps(bucket) if status == "succeeded" else 0)
            pipe.expire(key, USAGE_DAYS * 86400)
            pipe.execute()

    def summary(self, tenant: str, start: date, end: date, group_by: str) -> list[dict]:
        """Sums per group (task, day or key) over the days from `start` to `end` (inclusive), groups sorted."""
        days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
        with self.redis.pipeline() as pipe:
            for day in days:
                pipe.hgetall(self._day_key(tenant, day.isoformat()))
            found = pipe.execute()
        groups: dict[str, dict] = {}
        for day, fields in zip(days, found):
            for raw_field, raw_value in fields.items():
                task, key_id, metric = raw_field.decode().split("|")
                group = {"task": task, "day": day.isoformat(), "key": key_id}[group_by]
                sums = groups.setdefault(group, {m: 0 for m in METRICS})
                sums[metric] += float(raw_value) if metric == "run_s" else int(raw_value)
        return [{"group": name, **{m: (round(v, 3) if m == "run_s" else v) for m, v in sums.items()}}
                for name, sums in sorted(groups.items())]
