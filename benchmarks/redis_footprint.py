"""Redis footprint of one job: what a queued job holds and what a finished job leaves, in bytes.

    python -m benchmarks.redis_footprint                  # text and 3 MB image jobs, with and without a webhook
    python -m benchmarks.redis_footprint --png-mb 1 --keys  # smaller input; list every key that grew
    python -m benchmarks.redis_footprint --long-prompt     # also a text job with a 2000-character prompt

Starts its own Redis, API, worker and webhook deliverer (the test harness's) and a local webhook
receiver. For each case it first runs one unmeasured job of the same kind (so that shared keys such as
metric histograms and registries exist), then sums `MEMORY USAGE` over every key of the Redis:

- queued: after the submission returns, with no worker running (what each waiting job costs);
- left:   after a worker ran it and its webhook deliveries finished (what it keeps for its lifetime).

Each figure is the sum of (bytes after - bytes before) over all keys, so a job's share of a shared key
(a registry's sorted set, the tenant's listing) counts too; keys of processes (worker registrations and
heartbeats) are left out. Run from the repository root; prints a table (about a minute).
"""

from __future__ import annotations

import argparse
import base64
import io
import re
import signal
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from tests.service.harness import RedisServer, Service, WebhookReceiver, wait_until

ID = re.compile(r"[0-9a-f]{32}")


def noise_png(megabytes: float) -> bytes:
    """A PNG of random pixels (incompressible) of about `megabytes` MB."""
    import numpy as np
    from PIL import Image

    side = int((megabytes * 1e6 / 3) ** 0.5)
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def snapshot(redis) -> dict[bytes, int]:
    """key -> MEMORY USAGE (exact: SAMPLES 0) of every key."""
    keys = list(redis.scan_iter(count=1000))
    with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.memory_usage(key, samples=0)
        sizes = pipe.execute()
    return {key: size for key, size in zip(keys, sizes) if size is not None}


def growth(before: dict[bytes, int], after: dict[bytes, int]) -> dict[str, int]:
    """Bytes gained per key (ids shown as <id>), keys that grew or appeared only; process keys left out."""
    grown: dict[str, int] = defaultdict(int)
    for key, size in after.items():
        name = key.decode(errors="replace")
        delta = size - before.get(key, 0)
        if delta > 0 and not PROCESS_KEYS.match(name):
            grown[ID.sub("<id>", name)] += delta
    return dict(grown)


# Keys of processes, not of jobs: workers' registrations and heartbeats (a worker is restarted below).
PROCESS_KEYS = re.compile(r"^(rq:workers?\b|rq:scheduler|rq:suspended|[^:]+:workers?\b)")


def long_prompt(chars: int = 2000) -> str:
    """English-like text of `chars` characters (MAX_PROMPT_CHARS' default): words drawn at random, so it
    compresses as a real caption does, not as one word repeated."""
    import random

    words = ("a the of on in with and under light shadow red blue golden old small tall quiet river hill "
             "house tree sky cloud stone glass window street city forest painting photo detailed soft warm cold "
             "morning evening winter summer reflection portrait wide angle lens grain texture").split()
    rng, text = random.Random(0), ""
    while len(text) < chars:
        text += rng.choice(words) + " "
    return text[:chars].strip()


class Bench:
    def __init__(self, service: Service, receiver: WebhookReceiver):
        self.service = service
        self.receiver = receiver
        self.redis = service.redis()
        self.worker = "worker1"

    def run_job(self, task: str, payload: dict, webhook: bool) -> str:
        body = {**payload, **({"webhook": {"url": self.receiver.url}} if webhook else {})}
        response = self.service.submit(task, body)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def settle(self, job_id: str, webhook: bool, calls_before: int) -> dict:
        job = self.service.wait_job(job_id, timeout=300)
        assert job["status"] == "succeeded", job
        if webhook:
            wait_until(lambda: len(self.receiver.calls) > calls_before, 60, what="the webhook call")
        queue = self.service.prefix + "-webhooks"  # the delivery's own end is recorded after its POST
        wait_until(lambda: not self.redis.llen(f"rq:queue:{queue}") and not self.redis.zcard(f"rq:wip:{queue}"),
                   30, what="the webhook queue to drain")
        time.sleep(1.0)
        return job

    def measure(self, task: str, payload: dict, webhook: bool) -> dict:
        calls = len(self.receiver.calls)
        warm = self.run_job(task, payload, webhook)  # unmeasured: shared keys (metrics, registries) appear
        self.settle(warm, webhook, calls)
        self.service.kill(self.worker, signal.SIGTERM)  # so that the job waits in the queue
        start = snapshot(self.redis)
        calls = len(self.receiver.calls)
        job_id = self.run_job(task, payload, webhook)
        queued = growth(start, snapshot(self.redis))
        self.worker = self.service.start_worker(wait_ready=False)
        self.settle(job_id, webhook, calls)
        left = growth(start, snapshot(self.redis))
        fields = {k.decode(): len(v) for k, v in self.redis.hgetall(f"rq:job:{job_id}").items()}
        return {"queued": queued, "left": left, "job_fields": fields}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--png-mb", type=float, default=3.0, help="size of the image job's input PNG")
    parser.add_argument("--size", type=int, default=64, help="output width and height")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--keys", action="store_true", help="also list the keys that grew, per case")
    parser.add_argument("--long-prompt", action="store_true", help="also a text job with a prompt of MAX_PROMPT_CHARS")
    args = parser.parse_args()

    from model.demo_checkpoint import make_demo_checkpoint

    png = noise_png(args.png_mb)
    image = base64.b64encode(png).decode()
    common = {"width": args.size, "height": args.size, "num_inference_steps": args.steps, "seed": 1}
    cases = [
        ("text", "text-to-image", {"prompt": "a lighthouse on a cliff at sunset, oil painting", **common}),
        (f"image ({len(png) / 1e6:.1f} MB PNG)", "depth-estimation", {"image": image, **common}),
    ]
    if args.long_prompt:
        cases.append((f"text, {len(long_prompt())}-character prompt", "text-to-image", {"prompt": long_prompt(), **common}))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        root = Path(tmp)
        checkpoint = make_demo_checkpoint(root / "checkpoint")
        redis = RedisServer(root / "redis")
        redis.start()
        receiver = WebhookReceiver()
        receiver.up()
        service = Service(root / "stack", redis.url, checkpoint, max_batch=1)
        try:
            bench = Bench(service, receiver)
            for name, task, payload in cases:
                for webhook in (False, True):
                    figures = bench.measure(task, payload, webhook)
                    rows.append((name + (" + webhook" if webhook else ""), figures))
                    if args.keys:
                        for phase in ("queued", "left"):
                            print(f"# {rows[-1][0]}, {phase}")
                            for key, size in sorted(figures[phase].items(), key=lambda kv: -kv[1]):
                                print(f"  {size:>10,}  {key}")
                        print("  job record fields (bytes): " + ", ".join(
                            f"{k} {v}" for k, v in sorted(figures["job_fields"].items(), key=lambda kv: -kv[1])))
        finally:
            service.stop()
            receiver.down()
            redis.stop()
    print("| job | queued (bytes) | left after it ended (bytes) |")
    print("|---|---:|---:|")
    for name, figures in rows:
        print(f"| {name} | {sum(figures['queued'].values()):,} | {sum(figures['left'].values()):,} |")


if __name__ == "__main__":
    main()
