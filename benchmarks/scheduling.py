"""Scheduling benchmark: a replayed trace through the worker's batching loop, static vs step-level, and
a fairness check of the fair line, in one run.

    python -m benchmarks.scheduling                    # demo checkpoint on the CPU, about a minute
    python -m benchmarks.scheduling --jobs 60 --rate 6 --json out.json
    ONEDIFFUSION_MODEL=/models/onediffusion python -m benchmarks.scheduling --size 1024 --device cuda

1. Trace replay. Jobs of one token shape, short (4 steps) and long (24 steps) mixed, arriving as a Poisson
   process, replayed on the wall clock against the real model through `worker.scheduler.StepScheduler`,
   side by side in two processes started on the same second (so both see the same load on a shared
   machine; `--sequential` for one after the other): one with static batching (as before: a batch is
   formed once from queued jobs of the same size, frames and steps, after a 50 ms window, and runs to its
   end), one with step-level batching (jobs of the shape join at the next step whatever their step count; no window). Prints latency (arrival to result,
   decode and PNG encoding included) of short and long jobs, and throughput.
2. Fairness. Tenant A queues 24 jobs, then tenant B queues one; the same loop runs them, taking jobs from
   one FIFO (as before) and from the fair line in a real Redis (core/queueing.py). Prints the rank at
   which B's job finished (goal: within the first 2 x MAX_BATCH) and its wait.
3. Redis commands (`--redis-commands`): through a real stack (API, one worker), a batch of MAX_BATCH jobs at
   two step counts; Redis's own command counts (INFO commandstats, while nothing else runs) give the
   commands per step of a batch (the slope) and per job (the rest).
Run from the repository root."""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from worker.scheduler import Entry, StepReport, StepScheduler


@dataclass
class Arrival:
    key: str
    at: float  # seconds after the start
    steps: int
    seed: int
    tenant: str = "a"
    done_at: Optional[float] = None


def trace(jobs: int, rate: float, short: int, long: int, long_share: float, seed: int) -> list[Arrival]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(jobs):
        t += rng.expovariate(rate)
        out.append(Arrival(f"j{i}", t, long if rng.random() < long_share else short, seed=i))
    return out


class ReplayHost:
    """Jobs arrive on the wall clock; the queue is a FIFO (`fair` None) or the fair line in Redis."""

    def __init__(self, arrivals: list[Arrival], plan_of, continuous: bool, max_batch: int, window_s: float,
                 fair=None, redis=None):
        self.pending = sorted(arrivals, key=lambda a: a.at)
        self.by_key = {a.key: a for a in arrivals}
        self.queue: list[Arrival] = []
        self.plan_of = plan_of
        self.continuous = continuous
        self.max_batch = max_batch
        self.window_s = window_s
        self.fair, self.redis = fair, redis
        self.t0 = time.perf_counter()
        self.finished_order: list[str] = []

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def release(self) -> None:
        while self.pending and self.pending[0].at <= self.now():
            arrival = self.pending.pop(0)
            if self.fair is not None:
                self.redis.hset(f"rq:job:{arrival.key}", "status", "queued")
                self.fair.add(arrival.key, arrival.tenant, "shape")
            else:
                self.queue.append(arrival)

    def group(self, arrival: Arrival):
        return "shape" if self.continuous else arrival.steps  # static: same size, frames and steps

    def entry(self, arrival: Arrival) -> Entry:
        return Entry(arrival.key, plan=self.plan_of(arrival), shape="shape")

    def take(self, limit: int, group=None) -> list[Arrival]:
        if self.fair is not None:
            ids, _ = self.fair.claim(limit, self.fair.key("inter"), shape=None if group is None else "shape")
            return [self.by_key[i] for i in ids]
        if not self.queue:
            return []
        group = self.group(self.queue[0]) if group is None else group
        taken = [a for a in self.queue if self.group(a) == group][:limit]
        for a in taken:
            self.queue.remove(a)
        return taken

    def next_batch(self) -> list[Entry]:
        """Wait for a job; static batching then waits the window for companions, as the old worker did."""
        while True:
            self.release()
            first = self.take(1)
            if first:
                break
            if not self.pending:
                return []
            time.sleep(max(0.0, min(0.01, self.pending[0].at - self.now())))
        group = self.group(first[0])
        taken = first
        deadline = time.perf_counter() + (0 if self.continuous else self.window_s)
        while True:
            self.release()
            taken += self.take(self.max_batch - len(taken), group)
            if len(taken) >= self.max_batch or time.perf_counter() >= deadline:
                return [self.entry(a) for a in taken]
            time.sleep(0.002)

    # ---- the scheduler's host ----
    def after_step(self, rows, step_s, want, shape) -> StepReport:
        self.release()
        return StepReport(joiners=[self.entry(a) for a in self.take(want, "shape")] if want else [])

    def drops(self, keys):
        return {}

    def finished(self, entry, result, reason) -> None:
        assert not isinstance(result, BaseException), result
        self.by_key[entry.key].done_at = self.now()
        self.finished_order.append(entry.key)

    def stopping(self) -> bool:
        return False

    def run(self, scheduler: StepScheduler) -> None:
        while True:
            first = self.next_batch()
            if not first:
                return
            scheduler.run(self, first)


def summary(arrivals: list[Arrival], short: int) -> dict:
    lat = {kind: [a.done_at - a.at for a in arrivals if (a.steps == short) == (kind == "short")] for kind in ("short", "long")}
    span = max(a.done_at for a in arrivals) - min(a.at for a in arrivals)
    out = {"jobs": len(arrivals), "throughput_jobs_per_s": round(len(arrivals) / span, 3), "makespan_s": round(span, 2)}
    for kind, values in lat.items():
        if values:
            out[f"{kind}_mean_s"] = round(statistics.mean(values), 3)
            out[f"{kind}_p90_s"] = round(sorted(values)[int(0.9 * (len(values) - 1))], 3)
    return out


def replay(model, plan_of, arrivals: list[Arrival], continuous: bool, max_batch: int, window_s: float,
           fair=None, redis=None) -> ReplayHost:
    for a in arrivals:
        a.done_at = None
    host = ReplayHost(arrivals, plan_of, continuous, max_batch, window_s, fair, redis)
    host.run(StepScheduler(model.live_batch, max_batch, continuous=continuous))
    return host


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--rate", type=float, default=0.0, help="arrivals per second (0: sized to keep the worker ~busy)")
    parser.add_argument("--short", type=int, default=4)
    parser.add_argument("--long", type=int, default=24)
    parser.add_argument("--long-share", type=float, default=0.3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--window-ms", type=float, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--redis-commands", action="store_true", help="only the Redis command count, through a real stack")
    parser.add_argument("--sequential", action="store_true",
                        help="the two modes one after the other in one process (default: side by side in two processes, "
                             "so that both see the same load on a shared machine)")
    parser.add_argument("--no-fairness", action="store_true")
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["static", "continuous"], help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.redis_commands:
        figures = redis_commands(args.max_batch)
        print("redis", json.dumps(figures))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        return

    import os
    import subprocess
    import sys

    import torch

    from model.pipeline import OneDiffusion
    from model.tasks import TASKS

    torch.set_num_threads(1 if args.device == "cpu" else torch.get_num_threads())
    checkpoint = args.checkpoint or os.environ.get("ONEDIFFUSION_MODEL")
    if not checkpoint:
        from model.demo_checkpoint import make_demo_checkpoint

        checkpoint = str(make_demo_checkpoint(Path(tempfile.mkdtemp()) / "checkpoint"))
    model = OneDiffusion.load(checkpoint, device=args.device)

    def plan_of(a: Arrival):
        return TASKS["text-to-image"].model_validate(
            {"prompt": f"job {a.key}", "width": args.size, "height": args.size, "num_inference_steps": a.steps,
             "seed": a.seed}).plan()

    replay(model, plan_of, [Arrival("w0", 0, args.short, 0)], True, 1, 0)  # warm up
    if args.mode:  # one side of a side-by-side run: start on the agreed second, print the figures
        arrivals = trace(args.jobs, args.rate, args.short, args.long, args.long_share, args.seed)
        time.sleep(max(0.0, args.start_at - time.time()))
        replay(model, plan_of, arrivals, args.mode == "continuous", args.max_batch, args.window_ms / 1000)
        print("RESULT " + json.dumps(summary(arrivals, args.short)), flush=True)
        return

    # measure a job alone, to size the arrival rate when not given
    t0 = time.perf_counter()
    replay(model, plan_of, [Arrival("w1", 0, args.long, 1)], True, 1, 0)
    step_s = (time.perf_counter() - t0) / args.long
    mean_steps = args.short * (1 - args.long_share) + args.long * args.long_share
    rate = args.rate or round(0.8 / (mean_steps * step_s), 3)  # ~80 % of what a one-row worker serves
    results: dict = {"settings": {**{k: v for k, v in vars(args).items() if k not in ("json", "mode", "start_at")},
                                  "rate": rate, "step_s_alone": round(step_s, 4)}}
    modes = (("static", False), ("continuous", True))
    if args.sequential:
        arrivals = trace(args.jobs, rate, args.short, args.long, args.long_share, args.seed)
        for name, continuous in modes:
            replay(model, plan_of, arrivals, continuous, args.max_batch, args.window_ms / 1000)
            results[name] = summary(arrivals, args.short)
    else:  # side by side: both modes at once in two processes, so both see the same machine load
        start_at = time.time() + 90
        common = [sys.executable, "-m", "benchmarks.scheduling", "--checkpoint", checkpoint, "--rate", str(rate),
                  "--start-at", str(start_at)] + [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in (
                      "jobs", "short", "long", "long_share", "size", "max_batch", "window_ms", "device", "seed")]
        procs = {name: subprocess.Popen(common + ["--mode", name], stdout=subprocess.PIPE, text=True) for name, _ in modes}
        for name, proc in procs.items():
            out, _ = proc.communicate()
            line = next(l for l in out.splitlines() if l.startswith("RESULT "))
            results[name] = json.loads(line[len("RESULT "):])
    for name, _ in modes:
        print(name, json.dumps(results[name]))
    s, c = results["static"], results["continuous"]
    results["short_mean_latency_change"] = round(c["short_mean_s"] / s["short_mean_s"] - 1, 3)
    results["throughput_change"] = round(c["throughput_jobs_per_s"] / s["throughput_jobs_per_s"] - 1, 3)
    print("short jobs' mean latency: {:+.0%}, throughput: {:+.0%}".format(results["short_mean_latency_change"],
                                                                           results["throughput_change"]))
    if not args.no_fairness:
        results["fairness"] = fairness(model, plan_of, args)
        print("fairness", json.dumps(results["fairness"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def fairness(model, plan_of, args) -> dict:
    """Tenant A queues 24 jobs, then B one: B's finishing rank, FIFO vs the fair line (real Redis)."""
    from redis import Redis

    from core.queueing import FairLine
    from tests.service.harness import RedisServer

    def arrivals():
        jobs = [Arrival(f"a{i}", 0.0, args.short, i, "a") for i in range(24)]
        return jobs + [Arrival("b0", 0.001, args.short, 99, "b")]

    out = {}
    server = RedisServer(Path(tempfile.mkdtemp()) / "redis")
    server.start()
    try:
        redis = Redis.from_url(server.url)
        for name in ("fifo", "fair"):
            jobs = arrivals()
            fair = FairLine(redis, "bench" + uuid.uuid4().hex[:6]) if name == "fair" else None
            host = replay(model, plan_of, jobs, True, args.max_batch, 0, fair, redis)
            b = next(a for a in jobs if a.tenant == "b")
            out[name] = {"b_finished_rank": host.finished_order.index("b0") + 1, "b_latency_s": round(b.done_at - b.at, 3),
                         "jobs": len(jobs)}
    finally:
        server.stop()
    out["goal_rank"] = 2 * args.max_batch
    return out


def redis_commands(max_batch: int, steps: tuple[int, int] = (4, 24)) -> dict:
    """Commands Redis ran (INFO commandstats) for a batch of `max_batch` jobs at two step counts, through a
    real stack (API, one worker; the jobs are awaited by reading Redis, and those reads are counted out).
    The difference between the two runs, per extra step, is what one step of the batch costs; the rest,
    per job, what a job costs besides its steps (the worker's idle loop and heartbeats included)."""
    from redis import Redis

    from model.demo_checkpoint import make_demo_checkpoint
    from tests.service.harness import RedisServer, Service, wait_until

    root = Path(tempfile.mkdtemp())
    server = RedisServer(root / "redis")
    server.start()
    redis = Redis.from_url(server.url)
    checkpoint = make_demo_checkpoint(root / "checkpoint")

    def stats() -> dict[str, int]:
        return {k[len("cmdstat_"):]: v["calls"] for k, v in redis.info("commandstats").items()
                if k.startswith("cmdstat_") and k != "cmdstat_info"}

    def delta(a: dict, b: dict) -> dict[str, int]:
        return {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b) if b.get(k, 0) != a.get(k, 0)}

    # heartbeats and maintenance (time-driven, not per step) rare, so that the difference is the steps'
    service = Service(root / "stack", server.url, checkpoint, deliverer=False, max_batch=max_batch,
                      heartbeat_ttl_s=240, maintenance_interval_s=60)
    out: dict = {"max_batch": max_batch}
    try:
        runs = {}
        for n in steps:
            items = [{"task": "text-to-image", "prompt": f"x{i}", "width": 64, "height": 64, "num_inference_steps": n,
                      "seed": i} for i in range(max_batch)]
            time.sleep(1.0)
            before, t0 = stats(), time.monotonic()
            ids = [j["id"] for j in service.client.post("/v1/batches", json={"items": items}).json()["jobs"]]
            submitted = stats()
            polled = [0]

            def ended() -> bool:
                polled[0] += len(ids)
                return all([redis.hget(f"rq:job:{i}", "status") in (b"finished", b"failed") for i in ids])

            wait_until(ended, 600, interval=0.5, what="the batch")
            after = stats()
            worker = delta(submitted, after)
            worker["hget"] = worker.get("hget", 0) - polled[0]
            runs[n] = {"submit": sum(delta(before, submitted).values()), "worker": worker,
                       "seconds": round(time.monotonic() - t0, 1)}
        a, b = steps
        extra = {k: (runs[b]["worker"].get(k, 0) - runs[a]["worker"].get(k, 0)) / (b - a)
                 for k in set(runs[a]["worker"]) | set(runs[b]["worker"])}
        per_step = {k: round(v, 2) for k, v in sorted(extra.items()) if abs(v) >= 0.05}
        total_a = sum(runs[a]["worker"].values())
        out.update({
            "runs": {n: {"submit": r["submit"], "worker_total": sum(r["worker"].values()), "seconds": r["seconds"]}
                     for n, r in runs.items()},
            "per_step_of_the_batch": per_step,
            "commands_per_step_per_batch": round(sum(extra.values()), 1),
            "worker_commands_per_job_besides_steps": round((total_a - sum(extra.values()) * a) / max_batch, 1),
            "gateway_commands_per_job_submitted_in_a_batch": round(runs[a]["submit"] / max_batch, 1),
        })
    finally:
        service.stop()
        server.stop()
    return out


if __name__ == "__main__":
    main()
