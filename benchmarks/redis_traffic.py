"""Redis traffic of the service's processes: commands per second of an idle GPU worker and an idle webhook
deliverer (default settings), and commands per job through the whole stack.

Starts its own Redis, API, worker (demo checkpoint, CPU) and deliverer; counts with INFO commandstats
(commands run inside scripts included), one process at a time for the idle rates.

    python -m benchmarks.redis_traffic                 # 60 s windows, 16 jobs (about 3-4 min)
    python -m benchmarks.redis_traffic --window 30 --jobs 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tests.service.harness import RedisServer, Service, wait_until

SMALL = {"prompt": "a small test", "width": 64, "height": 64, "num_inference_steps": 2}


def counts(redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in redis.info("commandstats").items()
            if k not in ("cmdstat_info", "cmdstat_config|resetstat")}


def window(redis, seconds: float) -> dict[str, int]:
    redis.config_resetstat()
    time.sleep(seconds)
    return counts(redis)


def show(name: str, found: dict[str, int], per: float, unit: str) -> float:
    total = sum(found.values())
    top = ", ".join(f"{k} {v}" for k, v in sorted(found.items(), key=lambda kv: -kv[1])[:8])
    print(f"{name}: {total / per:.2f} commands/{unit} ({total} in all; {top})", flush=True)
    return total / per


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=float, default=60, help="seconds counted per idle process (default 60)")
    parser.add_argument("--jobs", type=int, default=16)
    args = parser.parse_args(argv)

    from model.demo_checkpoint import make_demo_checkpoint

    figures = {}
    with tempfile.TemporaryDirectory(prefix="redis-traffic-") as tmp:
        root = Path(tmp)
        checkpoint = make_demo_checkpoint(root / "checkpoint")
        server = RedisServer(root / "redis")
        server.start()
        # the defaults of these two, not the test harness's quick ones
        service = Service(root / "stack", server.url, checkpoint, workers=0, deliverer=False,
                          heartbeat_ttl_s=20, maintenance_interval_s=5)
        redis = service.redis()
        try:
            figures["api_idle"] = show("idle API", window(redis, 5), 5, "s")
            service.start_worker()
            time.sleep(10)  # past its start-up
            figures["worker_idle"] = show("idle GPU worker", window(redis, args.window), args.window, "s")
            service.kill("worker1")
            service.start("webhooks", "webhooks")
            wait_until(lambda: any(k.startswith(b"rq:worker:webhooks") for k in redis.keys("rq:worker:*")), 60,
                       what="the deliverer")
            time.sleep(10)
            figures["deliverer_idle"] = show("idle deliverer", window(redis, args.window), args.window, "s")
            service.start_worker(wait_ready=False)
            service.wait_ready(1, timeout=300)  # the first worker's entry lapsed during the deliverer's window
            time.sleep(5)
            redis.config_resetstat()
            started = time.monotonic()
            for i in range(args.jobs):
                assert service.submit("text-to-image", {**SMALL, "seed": i}).status_code == 202
            finished, polls = f"rq:finished:{service.prefix}", 0
            while redis.zcard(finished) < args.jobs:  # one command a second, taken off the count below
                polls += 1
                time.sleep(1)
            spent = time.monotonic() - started
            found = counts(redis)
            found["zcard"] -= polls + 1
            background = (figures["worker_idle"] + figures["deliverer_idle"]) * spent
            figures["per_job"] = show(f"{args.jobs} jobs through the API to the end ({spent:.0f} s)", found,
                                      args.jobs, "job")
            figures["per_job_less_idle"] = (sum(found.values()) - background) / args.jobs
            print(f"  less the idle worker and deliverer over those {spent:.0f} s: "
                  f"{figures['per_job_less_idle']:.0f} commands/job")
        except Exception:
            print(service.logs())
            raise
        finally:
            service.stop()
            server.stop()
    return figures


if __name__ == "__main__":
    main()
