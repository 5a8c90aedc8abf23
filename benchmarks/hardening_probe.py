"""The outside probes of issue 12, as figures: memory and seconds a request costs before it is refused,
how many submissions a queue bound lets through, how late a webhook arrives behind a stalled receiver,
how long a cancel takes to free the worker, and job lookups while many event streams are open.

Starts its own Redis and service processes (tests/service/harness.py) on the demo checkpoint:

    python -m benchmarks.hardening_probe [--only decode,queue,cost,cancel,webhooks,streams,streams_unlimited] [--streams 200]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from PIL import Image

from tests.service.harness import RedisServer, Service, StalledReceiver, WebhookReceiver, free_port, wait_until


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def bomb_png(width: int = 6300, height: int = 6300) -> str:
    """A 1-bit PNG of ~39.7 megapixels: a few KB on the wire, 119 MB as RGB."""
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def new_key(service: Service, tenant: str) -> str:
    return service.cli("keys", "create", "--tenant", tenant).strip().splitlines()[-1]


def timed(call):
    started = time.monotonic()
    result = call()
    return result, round(time.monotonic() - started, 2)


def probe_decode(tmp: Path, redis: str, checkpoint: Path) -> dict:
    service = Service(tmp / "decode", redis, checkpoint, workers=0, deliverer=False, auth_disabled="false",
                      rate_limit_per_minute=3)
    try:
        api = service.processes["api"].pid
        key = new_key(service, "probe")
        image = bomb_png()
        figures = {"bomb_b64_kb": round(len(image) / 1024, 1)}
        for frames in (17, 3):
            body = {"prompt": "x", "frames": [{"generate": True}] + [{"generate": False, "image": image}] * frames}
            before = rss_mb(api)
            response, seconds = timed(lambda: service.client.post("/v1/generate", json=body, headers=bearer(key), timeout=300))
            figures[f"generate_{frames}_bomb_frames"] = {
                "status": response.status_code, "seconds": seconds,
                "api_peak_rss_mb": round(rss_mb(api, "VmHWM"), 1), "api_rss_before_mb": round(before, 1),
                "message": (response.json().get("error") or {}).get("message", "")[:100],
            }
        # over its rate: do 422s count, and does a limited key still cost a decode?
        codes = []
        for _ in range(4):
            r, s = timed(lambda: service.client.post("/v1/generate", json={"prompt": "x", "frames": [{"generate": True}] + [{"generate": False, "image": image}] * 17}, headers=bearer(key), timeout=300))
            codes.append((r.status_code, s))
        figures["rate_limit_3_then_bad_requests"] = codes
        big = b'{"items":[' + b",".join([b'{"task":"text-to-image","prompt":"x"}'] * 1_200_000) + b"]}"
        figures["batch_body_mb"] = round(len(big) / 1e6, 1)
        before = rss_mb(api)
        r, s = timed(lambda: service.client.post("/v1/batches", content=big, headers={"content-type": "application/json"}, timeout=300))
        figures["batch_no_key"] = {"status": r.status_code, "seconds": s, "rss_growth_mb": round(rss_mb(api) - before, 1),
                                   "peak_rss_mb": round(rss_mb(api, "VmHWM"), 1)}
        key2 = new_key(service, "probe2")
        r, s = timed(lambda: service.client.post("/v1/batches", content=big, headers={"content-type": "application/json", **bearer(key2)}, timeout=300))
        figures["batch_1.2M_items_with_key"] = {"status": r.status_code, "seconds": s, "peak_rss_mb": round(rss_mb(api, "VmHWM"), 1),
                                                "message": (r.json().get("error") or {}).get("message", "")[:100]}
        return figures
    finally:
        service.stop()


def probe_queue(tmp: Path, redis: str, checkpoint: Path) -> dict:
    service = Service(tmp / "queue", redis, checkpoint, workers=0, deliverer=False, auth_disabled="false", max_queue_depth=20,
                      rate_limit_per_minute=1000, max_active_jobs_per_tenant=1000)
    try:
        keys = [new_key(service, f"t{i}") for i in range(3)]
        body = {"prompt": "x", "width": 64, "height": 64, "num_inference_steps": 2}

        def one(i):
            with httpx.Client(base_url=service.url, timeout=60) as client:
                return client.post("/v1/text-to-image", json=body, headers=bearer(keys[i % 3])).status_code

        with ThreadPoolExecutor(90) as pool:
            codes = list(pool.map(one, range(90)))
        from rq import Queue

        return {"submitted": 90, "accepted": codes.count(202), "refused_429": codes.count(429),
                "queue_length": Queue(service.prefix, connection=service.redis()).count, "bound": 20}
    finally:
        service.stop()


def probe_cost(tmp: Path, redis: str, checkpoint: Path) -> dict:
    service = Service(tmp / "cost", redis, checkpoint, workers=0, deliverer=False)
    try:
        huge = {"prompt": "x", "frames": [{"generate": True}] * 16, "width": 2048, "height": 2048, "num_inference_steps": 200}
        r = service.submit("generate", huge)
        if r.status_code == 202:
            service.client.post(f"/v1/jobs/{r.json()['id']}/cancel")
        return {"16x2048x2048x200": {"status": r.status_code, "message": (r.json().get("error") or {}).get("message", "")[:120]}}
    finally:
        service.stop()


def probe_cancel(tmp: Path, redis: str, checkpoint: Path) -> dict:
    """A job with long steps, canceled while it runs: how long until the worker starts the next job."""
    service = Service(tmp / "cancel", redis, checkpoint, workers=1, deliverer=False)
    try:
        slow = service.submit("generate", {"prompt": "x", "frames": [{"generate": True}] * 6, "width": 512, "height": 512,
                                           "num_inference_steps": 3, "guidance_scale": 1.0}).json()["id"]
        wait_until(lambda: service.job(slow)["status"] == "running", 120, what="running")
        time.sleep(1.0)
        canceled_at = time.monotonic()
        answer, answer_s = timed(lambda: service.client.post(f"/v1/jobs/{slow}/cancel"))
        nxt = service.submit("text-to-image", {"prompt": "y", "width": 64, "height": 64, "num_inference_steps": 1}).json()["id"]
        wait_until(lambda: service.job(nxt)["status"] != "queued", 600, interval=0.1, what="next job to start")
        return {"cancel_answer": answer.json()["status"], "cancel_answered_s": answer_s,
                "cancel_to_next_job_start_s": round(time.monotonic() - canceled_at, 2)}
    finally:
        service.stop()


def probe_webhooks(tmp: Path, redis: str, checkpoint: Path) -> dict:
    service = Service(tmp / "webhooks", redis, checkpoint, workers=1, webhook_timeout_s=60)
    stalled, receiver = StalledReceiver(), WebhookReceiver()
    receiver.up()
    try:
        small = {"prompt": "x", "width": 64, "height": 64, "num_inference_steps": 1}
        first = service.submit("text-to-image", {**small, "webhook": {"url": stalled.url}}).json()["id"]
        service.wait_job(first)
        time.sleep(0.5)  # the stalled delivery is in flight
        second = service.submit("text-to-image", {**small, "webhook": {"url": receiver.url}}).json()["id"]
        done = service.wait_job(second)
        ended = time.monotonic()
        wait_until(lambda: receiver.calls, 120, what="the other webhook")
        return {"other_webhook_late_s": round(time.monotonic() - ended, 2), "job_status": done["status"]}
    finally:
        receiver.down()
        stalled.close()
        service.stop()


def probe_streams(tmp: Path, redis: str, checkpoint: Path, streams: int, unlimited: bool = False) -> dict:
    """Job lookups while `streams` event streams are asked for by one key (`unlimited`: with the stream
    limits off, to see what the streams themselves cost)."""
    limits = {"max_streams_per_key": 0, "max_streams_per_tenant": 0} if unlimited else {}
    service = Service(tmp / f"streams{int(unlimited)}", redis, checkpoint, workers=0, deliverer=False, auth_disabled="false",
                      rate_limit_per_minute=0, max_active_jobs_per_tenant=0, **limits)
    try:
        key = new_key(service, "streamer")
        job = service.client.post("/v1/text-to-image", json={"prompt": "x", "width": 64, "height": 64}, headers=bearer(key)).json()["id"]

        def lookups(n=30):
            times = []
            for _ in range(n):
                started = time.monotonic()
                service.client.get(f"/v1/jobs/{job}", headers=bearer(key))
                times.append(time.monotonic() - started)
            return round(statistics.median(times) * 1000, 1)

        figures = {"lookup_ms_idle": lookups()}
        stop = threading.Event()
        codes: list[int] = []

        def hold():
            try:
                with httpx.Client(base_url=service.url, timeout=None) as client:
                    with client.stream("GET", f"/v1/jobs/{job}/events", headers=bearer(key)) as response:
                        codes.append(response.status_code)
                        if response.status_code == 200:
                            lines = response.iter_lines()  # kept open: a dropped iterator closes the connection
                            next(lines)
                            stop.wait(120)
            except httpx.HTTPError:
                codes.append(-1)

        threads = [threading.Thread(target=hold, daemon=True) for _ in range(streams)]
        for t in threads:
            t.start()
        wait_until(lambda: len(codes) >= streams, 120, what="streams to open")
        time.sleep(2)
        figures.update({"streams_asked": streams, "streams_open": codes.count(200), "streams_429": codes.count(429),
                        f"lookup_ms_with_streams": lookups()})
        stop.set()
        return figures
    finally:
        service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="decode,queue,cost,cancel,webhooks,streams")
    parser.add_argument("--streams", type=int, default=200)
    args = parser.parse_args()
    from model.demo_checkpoint import make_demo_checkpoint

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        checkpoint = make_demo_checkpoint(tmp / "checkpoint")
        redis = RedisServer(tmp / "redis")
        redis.start()
        try:
            results = {}
            for name in args.only.split(","):
                started = time.monotonic()
                if name in ("streams", "streams_unlimited"):
                    results[name] = probe_streams(tmp, redis.url, checkpoint, args.streams, name == "streams_unlimited")
                else:
                    results[name] = globals()[f"probe_{name}"](tmp, redis.url, checkpoint)
                results[name]["probe_s"] = round(time.monotonic() - started, 1)
                print(json.dumps({name: results[name]}), flush=True)
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
