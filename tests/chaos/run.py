"""Longer chaos runs that print figures, e.g.

    python -m tests.chaos.run --scenario all --jobs 100 --kills 10 --restarts 5

Starts its own stack (API, workers, deliverer) and its own Redis (append-only, fsync always) on the
tiny demo checkpoint; the figures are JSON lines."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tests.chaos import scenarios
from tests.service.harness import RedisServer, Service, WebhookReceiver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["workers", "redis", "webhooks", "api", "all"], default="all")
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--down-s", type=float, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from model.demo_checkpoint import make_demo_checkpoint

    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        root = Path(tmp)
        checkpoint = make_demo_checkpoint(root / "checkpoint")
        redis = RedisServer(root / "redis")
        redis.start()
        chosen = ["workers", "redis", "webhooks", "api"] if args.scenario == "all" else [args.scenario]
        try:
            for i, name in enumerate(chosen):
                service = Service(root / f"stack-{name}", redis.url, checkpoint, workers=args.workers, job_retries=3)
                receiver = WebhookReceiver()
                try:
                    if name == "workers":
                        figures = scenarios.worker_kills(service, args.jobs, args.kills, args.seed, args.workers)
                    elif name == "redis":
                        figures = scenarios.redis_restarts(service, redis, args.jobs, args.restarts, args.seed)
                    elif name == "webhooks":
                        figures = scenarios.webhook_outage(service, receiver, args.jobs, args.down_s, args.seed)
                    else:
                        figures = scenarios.api_restart(service, args.jobs, args.seed)
                    print(json.dumps(figures), flush=True)
                finally:
                    receiver.down()
                    service.stop()
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
