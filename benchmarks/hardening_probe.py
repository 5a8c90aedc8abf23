"""The outside probes, as figures: memory and seconds a request costs before it is refused, how many
submissions a queue bound lets through, how late a webhook arrives behind a stalled receiver, how long a
cancel takes to free the worker, and job lookups while many event streams are open; and the second
probe's cases: decode memory by format (webp_decode), another tenant's reads while one floods slow image
URLs (slow_urls), idle and slow connections (connections), webhooks under many names for one address
(webhook_names), the small 4xx/5xx findings (lows), deliveries after deliverers are killed mid-delivery
(deliverer_kills), and a Redis at its memory limit or set to evict keys (redis_full). Run it on a commit
before the fixes for the "before" figures; the figures first reported are quoted in each case's
`before_probe`.

Starts its own Redis and service processes (tests/service/harness.py) on the demo checkpoint:

    python -m benchmarks.hardening_probe [--only decode,queue,cost,cancel,webhooks,streams,streams_unlimited,
                                                 webp_decode,slow_urls,connections,webhook_names,lows,
                                                 deliverer_kills,redis_full] [--streams 200]
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


# ---- the second probe -------------------------------------------------------------------------------------
def lossless_webp(side: int = 6300) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (40, 90, 160)).save(buffer, format="WEBP", lossless=True)
    return base64.b64encode(buffer.getvalue()).decode()


def probe_webp_decode(tmp: Path, redis: str, checkpoint: Path) -> dict:
    """Four camera-pose requests at once, each with two 1.6 KB lossless WebPs of 6300x6300."""
    service = Service(tmp / "webp", redis, checkpoint, workers=0, deliverer=False, decode_wait_s=240)
    try:
        api = service.processes["api"].pid
        image = lossless_webp()
        body = {"images": [image, image], "num_inference_steps": 1}
        before = rss_mb(api)

        def post(_):
            with httpx.Client(base_url=service.url, timeout=300) as client:
                return client.post("/v1/camera-pose-estimation", json=body).status_code

        (codes, seconds) = timed(lambda: list(ThreadPoolExecutor(4).map(post, range(4))))
        time.sleep(1)
        return {"before_probe": "8 parallel: peak +9.6 GB, 2.8 GB held after; one request of two: +1.2 GB",
                "codes": codes, "seconds": seconds, "api_peak_growth_mb": round(rss_mb(api, "VmHWM") - before, 1),
                "api_held_after_mb": round(rss_mb(api) - before, 1), "bound_mb": 600}
    finally:
        service.stop()


def probe_slow_urls(tmp: Path, redis: str, checkpoint: Path) -> dict:
    """One tenant: 40 requests x 4 image URLs on a server answering in 3 s; another tenant polls a job."""
    from tests.service.test_hardening_second import SlowImages, _png

    service = Service(tmp / "slow", redis, checkpoint, workers=0, deliverer=False, auth_disabled="false",
                      image_url_timeout_s=5, rate_limit_per_minute=0, max_active_jobs_per_tenant=0)
    slow = SlowImages(3, _png())
    try:
        flood_key, other_key = new_key(service, "flood"), new_key(service, "other")
        job = service.client.post("/v1/text-to-image", json={"prompt": "x", "width": 64, "height": 64},
                                  headers=bearer(other_key)).json()["id"]
        views = service.client.post("/v1/camera-pose-estimation", headers=bearer(flood_key),
                                    json={"images": [f"{slow.url}/{i}.png" for i in range(16)]})
        fetched_for_16 = slow.requests
        body = {"images": [f"{slow.url}/{i}.png" for i in range(4)], "num_inference_steps": 1}

        def post(_):
            with httpx.Client(base_url=service.url, timeout=300) as client:
                return client.post("/v1/camera-pose-estimation", json=body, headers=bearer(flood_key)).status_code

        latencies = []
        with ThreadPoolExecutor(40) as pool:
            flood = [pool.submit(post, i) for i in range(40)]
            while not all(f.done() for f in flood):
                started = time.monotonic()
                service.client.get(f"/v1/jobs/{job}", headers=bearer(other_key))
                latencies.append(time.monotonic() - started)
                time.sleep(0.02)
        latencies.sort()
        return {"before_probe": "40 x 16 URLs at 8.5 s: workers held 141 s, another tenant's GET timed out at 120 s",
                "16_urls_status": views.status_code, "fetches_for_a_16_view_request": fetched_for_16,
                "other_get_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
                "other_get_p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 1),
                "flood_codes": {c: [f.result() for f in flood].count(c) for c in {f.result() for f in flood}},
                "most_fetches_in_flight": slow.most}
    finally:
        slow.close()
        service.stop()


def probe_connections(tmp: Path, redis: str, checkpoint: Path) -> dict:
    """300 idle connections, a trickled header and a slow upload, with HEADER_TIMEOUT_S=2, BODY_TIMEOUT_S=4."""
    import socket

    service = Service(tmp / "conn", redis, checkpoint, workers=0, deliverer=False, header_timeout_s=2, body_timeout_s=4,
                      max_connections=200)
    try:
        address = ("127.0.0.1", service.port)
        idle = [socket.create_connection(address) for _ in range(300)]
        get, get_s = timed(lambda: httpx.get(service.url + "/healthz", timeout=60).status_code)
        started = time.monotonic()
        for sock in idle:
            sock.settimeout(10)
            try:
                sock.recv(4096)
            except OSError:
                pass
        closed_s = round(time.monotonic() - started, 2)
        for sock in idle:
            sock.close()
        upload = socket.create_connection(address)
        upload.sendall(b"POST /v1/text-to-image HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        upload.settimeout(30)
        _, upload_s = timed(lambda: upload.recv(4096))
        upload.close()
        return {"before_probe": "1,100 idle connections: a GET waited 41.6 s, 68,686 error lines; slow uploads open past 60 s",
                "get_with_300_idle_status": get, "get_with_300_idle_s": get_s, "idle_all_closed_after_s": closed_s,
                "slow_upload_closed_after_s": upload_s, "api_log_lines": len(service.logs(full=True).splitlines())}
    finally:
        service.stop()


def probe_webhook_names(tmp: Path, redis: str, checkpoint: Path) -> dict:
    """Tenant A: 12 stalled deliveries over 3 names of one address (WEBHOOK_PER_HOST=4); tenant B's webhook."""
    service = Service(tmp / "names", redis, checkpoint, workers=1, webhook_timeout_s=30, auth_disabled="false",
                      webhook_allowlist="127.0.0.0/8,::1", webhook_concurrency=8, rate_limit_per_minute=0)
    stalled, receiver = StalledReceiver(), WebhookReceiver("127.0.0.2")
    receiver.up()
    try:
        a, b = bearer(new_key(service, "stalls")), bearer(new_key(service, "other"))

        def wait(job_id, headers):
            wait_until(lambda: service.client.get(f"/v1/jobs/{job_id}", headers=headers).json()["status"]
                       in ("succeeded", "failed", "canceled"), 120, what="job")

        small = {"prompt": "x", "width": 64, "height": 64, "num_inference_steps": 1}
        names = ["127.0.0.1", "localhost", "127.1"]
        ids = [service.client.post("/v1/text-to-image", headers=a, json={
            **small, "seed": i, "webhook": {"url": stalled.url.replace("127.0.0.1", names[i % 3])}}).json()["id"] for i in range(12)]
        for job_id in ids:
            wait(job_id, a)
        time.sleep(1)
        second = service.client.post("/v1/text-to-image", headers=b, json={**small, "webhook": {"url": receiver.url}}).json()["id"]
        wait(second, b)
        ended = time.monotonic()
        wait_until(lambda: receiver.calls or None, 120, what="the other webhook")
        return {"before_probe": "60 stalled over 20 names delayed another tenant's webhook 93.6 s (baseline 0.7 s)",
                "stalled_connections_at_once": stalled.connections, "other_webhook_late_s": round(time.monotonic() - ended, 2)}
    finally:
        receiver.down()
        stalled.close()
        service.stop()


def probe_lows(tmp: Path, redis: str, checkpoint: Path) -> dict:
    """Status codes of the low findings (each was a 5xx, a silent acceptance or a wrong answer)."""
    service = Service(tmp / "lows", redis, checkpoint, workers=0, deliverer=False, max_wait_s=1)
    try:
        post = lambda text, **h: service.client.post("/v1/text-to-image", content=text, headers={"content-type": "application/json", **h}).status_code
        small = '{"prompt": "x", "width": 64, "height": 64}'
        nan = base64.urlsafe_b64encode(b'[NaN, "x"]').decode().rstrip("=")
        return {
            "json_int_5000_digits": post('{"prompt": "x", "seed": ' + "9" * 5000 + "}"),
            "prefer_wait_5000_digits": post(small, prefer="wait=" + "9" * 5000),
            "nan_cursor": service.client.get("/v1/jobs", params={"cursor": nan}).status_code,
            "zero_width_prompt": post(json.dumps({"prompt": "\u200b" * 10})),
            "multipart_without_closing_boundary": service.client.post(
                "/v1/text-to-image", content=b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n',
                headers={"content-type": "multipart/form-data; boundary=b"}).status_code,
            "guard_168.63.129.16": service.submit("text-to-image", {"prompt": "x", "webhook": {"url": "http://168.63.129.16/"}}).status_code,
            "before_probe": "500, 500, 503, 202, 202 (partial form), 202",
        }
    finally:
        service.stop()



# ---- 6: killed deliverers ---------------------------------------------------------------------------------------
class HeldUntilReleased:
    """A webhook receiver that holds every call open (never answers) until `release()`, then answers 200 to
    each new call and notes, per job, when its completion webhook first arrived."""

    def __init__(self):
        import socket

        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.connections, self.held_calls, self.held, self.released = 0, 0, [], False
        self.arrived: dict[str, float] = {}  # job id -> when its webhook first arrived
        self.duplicates, self.last_call = 0, 0.0
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                if not self.released:
                    self.held_calls += 1
                    self.held.append(conn)
                    continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn) -> None:
        try:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            job_id = json.loads(body)["job"]["id"]
            with self.lock:
                self.last_call = time.monotonic()
                if job_id in self.arrived:
                    self.duplicates += 1
                else:
                    self.arrived[job_id] = time.monotonic()
        except (OSError, ValueError, KeyError):
            pass
        finally:
            conn.close()

    def release(self) -> None:
        """Answer from now on; the calls held so far (of killed deliverers) are cut."""
        with self.lock:
            self.released = True
            held, self.held = self.held, []
        for conn in held:
            conn.close()

    def close(self) -> None:
        self.sock.close()
        self.release()


def probe_deliverer_kills(tmp: Path, redis: str, checkpoint: Path, jobs: int = 12) -> dict:
    """`jobs` jobs with webhooks to a receiver that holds every call; the deliverer SIGKILLed three times,
    each time with calls in flight (and, the third time, its scheduler's lock left behind, as when a
    deliverer dies between taking the lock and forking the scheduler), restarted each time; the receiver
    answers from the last restart on. HEARTBEAT_TTL_S=4, WEBHOOK_TIMEOUT_S=3, WEBHOOK_BACKOFF_S=0.5,
    MAINTENANCE_INTERVAL_S=1 (the harness's)."""
    from rq.scheduler import RQScheduler

    from core.connection import keys_for
    from tests.service.test_hardening_second import _alive, _children

    ttl_s, timeout_s = 4, 3
    service = Service(tmp / "kills", redis, checkpoint, workers=1, heartbeat_ttl_s=ttl_s, webhook_timeout_s=timeout_s)
    hook = HeldUntilReleased()
    try:
        small = {"prompt": "x", "width": 64, "height": 64, "num_inference_steps": 1}
        ids = [service.submit("text-to-image", {**small, "seed": i, "webhook": {"url": hook.url}}).json()["id"]
               for i in range(jobs)]
        for job_id in ids:
            service.wait_job(job_id)
        killed_children: list[int] = []
        orphans_after_3s, seen = 0, 0
        for round_ in range(3):
            deliverer = service.processes["webhooks"]
            wait_until(lambda pid=deliverer.pid: len(_children(pid)) >= 2, 30, what="the scheduler and helper processes")
            wait_until(lambda seen=seen: hook.connections > seen, 60, interval=0.05, what="a call of this deliverer in flight")
            time.sleep(0.5)  # the other free slots take their calls too
            children = _children(deliverer.pid)
            service.kill("webhooks")
            killed_children += children
            time.sleep(3)
            orphans_after_3s += sum(_alive(pid) for pid in children)
            if round_ == 2:
                service.redis().set(RQScheduler.get_locking_key(keys_for(service.prefix).webhook_queue),
                                    "a-killed-scheduler", ex=ttl_s)
                hook.release()
            seen = hook.connections
            service.start("webhooks", "webhooks")
        restarted = time.monotonic()
        try:
            wait_until(lambda: len(hook.arrived) >= jobs, 120, interval=0.1, what="every delivery")
        except TimeoutError:
            pass
        late = sorted(hook.arrived[j] - restarted for j in ids if j in hook.arrived)
        # the same deliveries sent again: watch until the receiver has heard nothing for 10 s (90 s at most)
        quiet_by = time.monotonic() + 90
        while time.monotonic() < quiet_by and time.monotonic() - hook.last_call < 10:
            time.sleep(0.5)
        return {"before_probe": "17 deliveries waited, the last 15 min 20 s late; 1 orphan of a killed deliverer",
                "deliveries": jobs, "calls_held_while_killing": hook.held_calls,
                "after_last_restart_max_s": round(late[-1], 1) if late else None,
                "after_last_restart_p50_s": round(statistics.median(late), 1) if late else None,
                "deliveries_lost": jobs - len(late), "delivered_again_after_a_200": hook.duplicates,
                "last_repeat_after_last_restart_s": round(hook.last_call - restarted, 1) if hook.duplicates else None,
                "orphans_alive_3s_after_a_kill": orphans_after_3s,
                "orphans_alive_at_end": sum(_alive(pid) for pid in killed_children),
                "bound_s": f"{ttl_s + timeout_s + 5 + 5} (HEARTBEAT_TTL_S {ttl_s} + WEBHOOK_TIMEOUT_S {timeout_s} "
                           "+ 5 backoff + 5 slack, as the suite asserts)"}
    finally:
        hook.close()
        service.stop()


# ---- 7: Redis at its memory limit -------------------------------------------------------------------------------
def _refused_start(url: str, tmp: Path, checkpoint: Path, roles=("serve", "worker")) -> dict:
    """Start each role against `url`; its exit code (-9: still running after 120 s, killed) and the line that
    says why."""
    import os
    import subprocess

    from tests.service.harness import CLI

    env = {**{k: v for k, v in os.environ.items() if k != "ONEDIFFUSION_MODEL"}, "REDIS_URL": url,
           "DEMO_CHECKPOINT_DIR": str(checkpoint), "PORT": str(free_port()), "RESULTS_DIR": str(tmp / "results"),
           "ONEDIFFUSION_ATTENTION": "math"}
    tmp.mkdir(parents=True, exist_ok=True)
    started = {role: subprocess.Popen(CLI + [role], env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True) for role in roles}
    found = {}
    for role, process in started.items():
        try:
            out, _ = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
        line = next((l for l in out.splitlines() if "maxmemory-policy" in l), out.strip()[-200:])
        try:
            line = json.loads(line)["msg"]  # a JSON log line
        except (ValueError, KeyError, TypeError):
            pass
        found[role] = {"exit_code": process.returncode, "message": line.strip()[:180]}
    return found


def probe_redis_full(tmp: Path, redis: str, checkpoint: Path, headroom_kb: int = 256, per_tenant: int = 150) -> dict:
    """A Redis of its own whose maxmemory (noeviction) is what it uses plus `headroom_kb`, one worker; two
    tenants (keys on) submit at once until each has been refused 5 times (`per_tenant` at most); then, with
    maxmemory at 1 byte, a second API started on the full store reads a job that finished before; then room
    comes back and every accepted job is read by its tenant. Last, an API and a worker started against a Redis with
    maxmemory-policy allkeys-lru."""
    import re

    from redis import Redis
    from redis.exceptions import OutOfMemoryError

    server, evicting = RedisServer(tmp / "redis-full"), RedisServer(tmp / "redis-evicting")
    server.start()
    service = None
    try:
        store = Redis.from_url(server.url)
        service = Service(tmp / "full", server.url, checkpoint, workers=1, auth_disabled="false",
                          rate_limit_per_minute=0, max_active_jobs_per_tenant=0)
        keys = {t: new_key(service, t) for t in ("acme", "globex")}
        small = {"prompt": "full store", "width": 64, "height": 64, "num_inference_steps": 1}
        finished = service.client.post("/v1/text-to-image", json=small, timeout=90,
                                       headers={**bearer(keys["acme"]), "Prefer": "wait=60"}).json()
        limit = int(store.info("memory")["used_memory"]) + headroom_kb * 1024
        store.config_set("maxmemory", limit)  # the default policy: noeviction
        answers: dict[str, list[httpx.Response]] = {t: [] for t in keys}

        def flood(tenant: str) -> None:
            with httpx.Client(base_url=service.url, timeout=60) as client:
                for i in range(per_tenant):
                    answers[tenant].append(client.post("/v1/text-to-image", json={**small, "seed": i},
                                                       headers=bearer(keys[tenant])))
                    if sum(a.status_code == 503 for a in answers[tenant]) >= 5:
                        return

        flooding = [threading.Thread(target=flood, args=(t,)) for t in keys]
        for thread in flooding:
            thread.start()
        for thread in flooding:
            thread.join()
        # finished jobs give room back as the worker records them: from here the store is kept full (every
        # write that needs memory refused) while a second API starts and the worker's jobs end
        store.config_set("maxmemory", 1)
        try:
            store.set("probe:room", b"x" * 4096)
            full_at_fresh_start = False
        except OutOfMemoryError:
            full_at_fresh_start = True
        fresh_port = free_port()
        service.start("api2", "serve", port=fresh_port)
        fresh = f"http://127.0.0.1:{fresh_port}"

        def fresh_up():
            try:
                return httpx.get(f"{fresh}/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(fresh_up, 60, what="the API started while the store is full")
        fresh_get = httpx.get(f"{fresh}/v1/jobs/{finished['id']}", headers=bearer(keys["acme"]), timeout=30)
        fresh_post = httpx.post(f"{fresh}/v1/text-to-image", json=small, headers=bearer(keys["globex"]), timeout=30)
        time.sleep(5)  # the worker's jobs that end now wait for room
        store.config_set("maxmemory", 0)  # room again

        ids = {t: [a.json()["id"] for a in answers[t] if a.status_code == 202] for t in keys}
        ended: dict[str, dict] = {}

        def end_of(job_id: str, key: str):
            job = service.client.get(f"/v1/jobs/{job_id}", headers=bearer(key)).json()
            return job if job["status"] in ("succeeded", "failed", "canceled") else None

        for tenant, job_ids in ids.items():
            for job_id in job_ids:
                ended[job_id] = wait_until(lambda job_id=job_id, key=keys[tenant]: end_of(job_id, key), 300, 0.2,
                                           f"job {job_id}")
        hex_ids = re.compile(r"[0-9a-f]{32}")
        others = {t: {i for u in keys if u != t for i in ids[u]} for t in keys}
        leaks = 0
        for tenant in keys:
            for answer in answers[tenant]:
                leaks += bool(others[tenant] & set(hex_ids.findall(answer.text)))
            for job_id in ids[tenant]:
                leaks += bool(others[tenant] & set(hex_ids.findall(json.dumps(ended[job_id]))))
        every = [a for t in keys for a in answers[t]]
        full = [a for a in every if a.status_code == 503 and a.json()["error"]["type"] == "store_full"]
        statuses = [job["status"] for job in ended.values()]
        worker_log = (service.tmp / "worker1.log").read_text(errors="replace")
        fresh_post_error = (fresh_post.json().get("error") or {}).get("type", "")
        figures = {
            "before_probe": "2 of 300 jobs failed as model_error naming another tenant's job id; every Redis error a 503 "
                            "'unreachable'; GET of a finished job on a fresh API: 503; allkeys-lru dropped 488 finished jobs",
            "maxmemory_kb_while_submitting": limit // 1024,
            "codes": {"202": sum(a.status_code == 202 for a in every), "503_store_full": len(full),
                      "other": len(every) - len(full) - sum(a.status_code == 202 for a in every)},
            "retry_after": sorted({a.headers.get("retry-after") for a in full}),
            "store_full_message": full[0].json()["error"]["message"] if full else None,
            "accepted_jobs": {s: statuses.count(s) for s in sorted(set(statuses))},
            "failed_model_error": sum((job.get("error") or {}).get("type") == "model_error" for job in ended.values()),
            "bodies_naming_another_tenants_job": leaks,
            "full_when_fresh_api_started": full_at_fresh_start,
            "fresh_api_get_finished_job": fresh_get.status_code,
            "worker_waits_to_record_a_job": worker_log.count("while finishing job"),
            "fresh_api_post_while_full": f"{fresh_post.status_code} {fresh_post_error}".strip(),
        }
        service.stop()
        service = None
        evicting.start()
        Redis.from_url(evicting.url).config_set("maxmemory-policy", "allkeys-lru")
        figures["start_on_allkeys_lru"] = _refused_start(evicting.url, tmp / "evicting", checkpoint)
        return figures
    finally:
        if service is not None:
            service.stop()
        server.stop()
        evicting.stop()


CASES = ("decode", "queue", "cost", "cancel", "webhooks", "streams", "streams_unlimited", "webp_decode", "slow_urls",
         "connections", "webhook_names", "lows", "deliverer_kills", "redis_full")


def case_list(text: str) -> list[str]:
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in CASES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown case(s) {', '.join(unknown)}; the cases: {', '.join(CASES)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=case_list, default="decode,queue,cost,cancel,webhooks,streams",
                        help=f"comma-separated cases, of: {','.join(CASES)}")
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
            for name in args.only:
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
