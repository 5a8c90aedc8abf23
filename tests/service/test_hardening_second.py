"""The second outside probe (keys on, two tenants), each finding reproduced against real processes: decode
cost by format, one tenant stalling the API with slow image URLs, image-URL SSRF through the webhook
allowlist, connections that never time out, webhooks held after deliverer kills, and the small 4xx/5xx
findings. The cheap cases run here; `python -m benchmarks.hardening_probe` gives the figures."""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from rq.scheduler import RQScheduler

from core.connection import keys_for

from tests.service.harness import wait_until


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def lossless_webp(side: int) -> str:
    """A flat lossless WebP: about 1.6 KB on the wire at 6300x6300, 159 MB as RGBA."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (40, 90, 160)).save(buffer, format="WEBP", lossless=True)
    return base64.b64encode(buffer.getvalue()).decode()


# ---- 1: what decoding costs, per request and per process, whatever the format ------------------------------
def test_four_requests_of_large_lossless_webps_grow_the_api_by_at_most_600_mb(make_service):
    service = make_service(workers=0, deliverer=False, decode_wait_s=240)  # queued, however loaded the machine
    api = service.processes["api"].pid
    image = lossless_webp(6300)  # 39.7 megapixels each: inside MAX_INPUT_PIXELS, two inside MAX_REQUEST_PIXELS
    body = {"images": [image, image], "num_inference_steps": 1}
    before_kb = status_kb(api, "VmRSS")

    def post(_):
        with httpx.Client(base_url=service.url, timeout=120) as client:
            return client.post("/v1/camera-pose-estimation", json=body).status_code

    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(post, range(4)))
    grown_mb = (status_kb(api, "VmHWM") - before_kb) / 1024
    assert codes == [202] * 4, codes
    assert grown_mb <= 600, f"the API grew by {grown_mb:.0f} MB"
    # and the memory goes back once the decodes are over
    wait_until(lambda: (status_kb(api, "VmRSS") - before_kb) / 1024 < 100, 10, what="decode memory given back")


def test_a_full_decode_budget_answers_503_with_retry_after(make_service):
    service = make_service(workers=0, deliverer=False, decode_budget_mb=64, decode_wait_s=0)
    image = lossless_webp(6300)
    body = {"images": [image, image], "num_inference_steps": 1}

    def post(_):
        with httpx.Client(base_url=service.url, timeout=120) as client:
            return client.post("/v1/camera-pose-estimation", json=body)

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(post, range(3)))
    busy = [a for a in answers if a.status_code == 503]
    assert busy and all(a.status_code in (202, 503) for a in answers), [a.text for a in answers]
    assert busy[0].headers["retry-after"] and "retry shortly" in busy[0].json()["error"]["message"]


# ---- 2: one tenant's slow image URLs stall nobody else -----------------------------------------------------
class SlowImages:
    """An image server on this machine's network address that answers after `delay` seconds, counting
    the requests it gets and the most it had in flight at once."""

    def __init__(self, delay: float, image: bytes, address: str = ""):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from tests.service.harness import local_address

        outer = self
        self.requests = self.in_flight = self.most = 0
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with outer.lock:
                    outer.requests += 1
                    outer.in_flight += 1
                    outer.most = max(outer.most, outer.in_flight)
                try:
                    import select

                    if select.select([self.connection], [], [], delay)[0]:
                        return  # the client gave up and closed the connection: no longer in flight
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(image)))
                    self.end_headers()
                    self.wfile.write(image)
                except OSError:
                    pass
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

            def log_message(self, *args):
                pass

        address = address or local_address()
        self.server = ThreadingHTTPServer((address, 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://{address}:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_job(service, job_id: str, headers: dict) -> dict:
    def ended():
        job = service.client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        return job if job["status"] in ("succeeded", "failed", "canceled") else None

    return wait_until(ended, 120, 0.2, f"job {job_id}")


def new_key(service, tenant: str) -> str:
    return service.cli("keys", "create", "--tenant", tenant).strip().splitlines()[-1]


def test_too_many_views_by_url_are_refused_before_anything_is_fetched(make_service):
    service = make_service(workers=0, deliverer=False, auth_disabled="false")
    key = new_key(service, "many")
    slow = SlowImages(3, _png())
    try:
        started = time.monotonic()
        response = service.client.post("/v1/camera-pose-estimation", json={"images": [f"{slow.url}/{i}.png" for i in range(16)]},
                                       headers={"Authorization": f"Bearer {key}"})
        took = time.monotonic() - started
        assert response.status_code == 422 and "16 views is more than the limit of 8" in response.text, response.text
        assert slow.requests == 0 and took < 3, (slow.requests, took)
    finally:
        slow.close()


def test_one_tenants_slow_image_urls_leave_other_tenants_reads_fast(make_service):
    service = make_service(workers=0, deliverer=False, auth_disabled="false", image_url_timeout_s=5,
                           image_url_per_tenant=4, rate_limit_per_minute=0, max_active_jobs_per_tenant=0)
    slow_key, other_key = new_key(service, "slow"), new_key(service, "other")
    other = {"Authorization": f"Bearer {other_key}"}
    job = service.client.post("/v1/text-to-image", json={"prompt": "x", "width": 64, "height": 64}, headers=other).json()["id"]
    slow = SlowImages(3, _png())
    try:
        body = {"images": [f"{slow.url}/{i}.png" for i in range(4)], "num_inference_steps": 1}

        def post(_):
            with httpx.Client(base_url=service.url, timeout=60) as client:
                return client.post("/v1/camera-pose-estimation", json=body, headers={"Authorization": f"Bearer {slow_key}"}).status_code

        with ThreadPoolExecutor(40) as pool:
            flood = [pool.submit(post, i) for i in range(40)]
            wait_until(lambda: slow.requests >= 1, 10, what="the first slow fetch")
            latencies = []
            with httpx.Client(base_url=service.url, timeout=60) as client:
                while not all(f.done() for f in flood) and len(latencies) < 200:
                    started = time.monotonic()
                    assert client.get(f"/v1/jobs/{job}", headers=other).status_code == 200
                    latencies.append(time.monotonic() - started)
                    time.sleep(0.02)
            codes = [f.result() for f in flood]
        latencies.sort()
        p99 = latencies[int(0.99 * (len(latencies) - 1))]
        assert p99 < 2.0, f"another tenant's GET took {p99:.2f} s at p99 ({len(latencies)} reads)"
        assert slow.most <= 4, f"{slow.most} fetches of one tenant in flight at once"
        assert set(codes) <= {202, 422}, codes  # fetched in time, or past the request's one deadline
    finally:
        slow.close()


# ---- 3: image URLs have their own allowlist and never reach loopback or link-local ------------------------
def test_image_urls_do_not_go_through_the_webhook_allowlist_nor_to_loopback(make_service):
    loopback = SlowImages(0, _png(), "127.0.0.1")  # an image server on loopback that counts what reaches it
    try:
        opened = make_service(workers=0, deliverer=False, webhook_allowlist="127.0.0.0/8", image_url_allowlist="")
        for allowed in (opened, make_service(workers=0, deliverer=False, image_url_allowlist="127.0.0.0/8,169.254.0.0/16,::/127")):
            for url in (f"{loopback.url}/x.png", "http://169.254.169.254/latest/meta-data", "http://[::1]:9/x.png"):
                response = allowed.submit("depth-estimation", {"image": url})
                assert response.status_code == 422, response.text
                assert "public addresses" in response.json()["error"]["message"], response.text
        assert loopback.requests == 0
    finally:
        loopback.close()


# ---- 4: webhook limits per resolved address and per tenant ------------------------------------------------
def test_webhook_limits_count_resolved_addresses_and_tenants(make_service):
    from tests.service.harness import StalledReceiver, WebhookReceiver, local_address

    service = make_service(auth_disabled="false", webhook_timeout_s=20, webhook_per_host=1, webhook_per_tenant=2,
                           webhook_allowlist=f"127.0.0.0/8,::1,{local_address()}", rate_limit_per_minute=0)
    a = {"Authorization": f"Bearer {new_key(service, 'stalls')}"}
    b = {"Authorization": f"Bearer {new_key(service, 'waits')}"}
    one, two = StalledReceiver("127.0.0.1"), StalledReceiver("127.0.0.3")  # `other` listens on 127.0.0.2
    other = WebhookReceiver(local_address())
    other.up()
    small = {"prompt": "x", "width": 64, "height": 64, "num_inference_steps": 1}
    try:
        port = one.port
        names = [f"http://127.0.0.1:{port}/a", f"http://localhost:{port}/b", f"http://127.1:{port}/c"]  # one address
        jobs = [service.client.post("/v1/text-to-image", json={**small, "seed": i, "webhook": {"url": url}}, headers=a).json()
                for i, url in enumerate(names + [two.url])]
        for job in jobs:
            wait_job(service, job["id"], a)
        wait_until(lambda: one.connections >= 1 and two.connections >= 1, 20, what="the stalled deliveries")
        late = service.client.post("/v1/text-to-image", json={**small, "webhook": {"url": other.url}}, headers=b).json()
        wait_job(service, late["id"], b)
        ended = time.monotonic()
        wait_until(lambda: other.calls, 30, interval=0.05, what="the other tenant's webhook")
        assert time.monotonic() - ended <= 2.0
        time.sleep(2)  # postponed deliveries of the stalling tenant keep being put back, not sent
        assert one.connections == 1, f"{one.connections} deliveries in flight to one address under three names"
        assert one.connections + two.connections <= 2
    finally:
        one.close()
        two.close()
        other.down()


# ---- 5: connections that never finish a request are closed; too many are answered 503 ----------------------
def _closed_within(sock, seconds: float) -> bytes | None:
    """What the server sent before closing the connection, or None if it was still open after `seconds`."""
    import socket as _socket

    sock.settimeout(0.2)
    got, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except _socket.timeout:
            continue
        except OSError:
            return got
        if not chunk:
            return got
        got += chunk
    return None


def test_idle_trickling_and_slow_connections_are_closed_and_extra_ones_get_503(make_service):
    import socket

    service = make_service(workers=0, deliverer=False, header_timeout_s=1, body_timeout_s=2, max_connections=30)
    address = ("127.0.0.1", service.port)
    idle = [socket.create_connection(address) for _ in range(50)]  # 20 over the limit
    try:
        answers = [_closed_within(s, 6) for s in idle]
        assert all(a is not None for a in answers), "some idle connections were still open after 6 s"
        busy = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        assert len(busy) >= 15 and b"too many open connections" in busy[0], answers[:3]
    finally:
        for s in idle:
            s.close()
    assert service.client.get("/healthz").status_code == 200  # reachable again

    trickle = socket.create_connection(address)
    started = time.monotonic()
    try:
        trickle.sendall(b"GET /healthz HTTP/1.1\r\n")
        for _ in range(20):  # a header byte every 0.3 s: never complete
            try:
                trickle.sendall(b"X")
            except OSError:
                break
            time.sleep(0.3)
        assert time.monotonic() - started < 4, "trickled headers kept the connection open"
    finally:
        trickle.close()

    upload = socket.create_connection(address)
    try:
        upload.sendall(b"POST /v1/text-to-image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        answer = _closed_within(upload, 6)
        assert answer is not None, "a slow upload kept its connection past the body deadline"
    finally:
        upload.close()
    time.sleep(0.5)
    logs = service.logs(full=True)
    assert "Traceback" not in logs and " 500 " not in logs, logs[-3000:]


def test_repeated_error_lines_are_rate_limited():
    import logging

    from app.connections import RateLimitedLog

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    log = logging.getLogger("test.ratelimited")
    log.propagate = False
    handler = Keep()
    handler.addFilter(RateLimitedLog(burst=5, window_s=0.5))
    log.addHandler(handler)
    for _ in range(1000):
        log.error("socket.accept() out of system resource")
    assert len(records) == 5
    time.sleep(0.6)
    log.error("socket.accept() out of system resource")
    assert len(records) == 6 and "995 more like this" in records[-1]


# ---- the low findings, against the real API -------------------------------------------------------------------
SMALL = {"prompt": "a small test", "width": 64, "height": 64, "num_inference_steps": 2}


def _raw_http(port: int, request: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return answer
            answer += chunk


def test_huge_numbers_are_4xx_and_logged_without_traceback(shared_service):
    body = '{"prompt": "x", "width": 64, "height": 64, "seed": ' + "9" * 5000 + "}"
    response = shared_service.client.post("/v1/text-to-image", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and "too many digits" in response.text, response.text
    waited = shared_service.client.post("/v1/text-to-image", json={**SMALL, "prompt": "does not wait long"},
                                        headers={"Prefer": "wait=" + "9" * 5000, "Idempotency-Key": f"huge-{time.time_ns()}"})
    assert waited.status_code in (200, 202), waited.text  # the longest wait the server allows, not a 500
    assert shared_service.client.get("/healthz").status_code == 200  # the kept-alive connection still works
    assert "Traceback" not in shared_service.logs(full=True).split("--- api.log")[-1]


def test_a_nan_cursor_is_422(shared_service):
    cursor = base64.urlsafe_b64encode(b'[NaN, "x"]').decode().rstrip("=")
    response = shared_service.client.get("/v1/jobs", params={"cursor": cursor})
    assert response.status_code == 422 and "cursor" in response.text, response.text


def test_multipart_without_its_closing_boundary_is_a_400(shared_service):
    boundary = "probe7d1"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na cat\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"width\"\r\n\r\n64\r\n")
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    cut = shared_service.client.post("/v1/text-to-image", content=part.encode(), headers=headers)
    assert cut.status_code == 400 and "closing boundary" in cut.text, cut.text
    whole = part + f"--{boundary}\r\nContent-Disposition: form-data; name=\"height\"\r\n\r\n64\r\n--{boundary}--\r\n"
    sent = shared_service.client.post("/v1/text-to-image", content=whole.encode(), headers=headers)
    assert sent.status_code == 202, sent.text
    shared_service.client.post(f"/v1/jobs/{sent.json()['id']}/cancel")


def test_content_length_with_transfer_encoding_is_a_400_and_closes(shared_service):
    body = b'{"prompt": "x"}'
    request = (b"POST /v1/text-to-image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), len(body), body))
    answer = _raw_http(shared_service.port, request)  # returns once the server closes the connection
    assert answer.startswith(b"HTTP/1.1 400") and b"not both" in answer, answer[:300]


def test_an_idempotency_key_of_a_job_cannot_be_reused_for_a_batch(shared_service):
    headers = {"Idempotency-Key": f"job-then-batch-{time.time_ns()}"}
    job = shared_service.submit("text-to-image", SMALL, headers=headers)
    assert job.status_code == 202, job.text
    batch = shared_service.client.post("/v1/batches", json={"items": [{"task": "text-to-image", **SMALL}]}, headers=headers)
    assert batch.status_code == 409 and "different request" in batch.text, batch.text
    headers = {"Idempotency-Key": f"batch-then-job-{time.time_ns()}"}
    first = shared_service.client.post("/v1/batches", json={"items": [{"task": "text-to-image", **SMALL}]}, headers=headers)
    assert first.status_code == 202 and shared_service.submit("text-to-image", SMALL, headers=headers).status_code == 409
    shared_service.client.post(f"/v1/jobs/{job.json()['id']}/cancel")


def test_a_prompt_of_zero_width_spaces_is_422(shared_service):
    response = shared_service.submit("text-to-image", {**SMALL, "prompt": "\u200b" * 20})
    assert response.status_code == 422 and "prompt" in response.text, response.text


def test_tenant_with_a_final_newline_is_refused_by_the_cli(shared_service):
    with pytest.raises(RuntimeError, match="tenant"):
        shared_service.cli("keys", "create", "--tenant", "acme\n")
    assert "acme" not in shared_service.cli("keys", "list")


def test_readyz_is_unavailable_when_the_results_disk_is_full(make_service):
    from tests.service.harness import free_port

    service = make_service(workers=1, deliverer=False)
    assert service.client.get("/readyz").status_code == 200
    port = free_port()  # a second API whose results disk has less free than it needs
    service.start("api-full", "serve", port=port, results_min_free_mb=10**9)
    url = f"http://127.0.0.1:{port}/readyz"
    wait_until(lambda: _answers(url), 30, what="the second API")
    response = httpx.get(url)
    assert response.status_code == 503 and "results disk" in response.json()["reason"], response.text


def _answers(url: str) -> bool:
    try:
        httpx.get(url)
        return True
    except httpx.HTTPError:
        return False


def test_the_playground_says_ready_when_keys_are_on(make_service):
    """With keys on /readyz gives worker_count and no names: the playground's pill reads the count."""
    import os
    import shutil

    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine")
    sync_api = pytest.importorskip("playwright.sync_api")
    service = make_service(workers=1, deliverer=False, auth_disabled="false")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"], headless=True)
        try:
            page = browser.new_page()
            page.goto(service.url + "/playground/")
            page.wait_for_function("document.querySelector('#service-status').textContent.includes('ready')", timeout=20_000)
            assert page.inner_text("#service-status") == "1 worker ready"
        finally:
            browser.close()


# ---- 6: killed deliverers: no orphans, deliveries resume within seconds ---------------------------------------
class FirstCallStalls:
    """A webhook receiver that holds its first call open (never answers it) and answers 200 to the others."""

    def __init__(self):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.connections, self.delivered, self.held = 0, [], []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.connections == 1:
                self.held.append(conn)
                continue
            data = conn.recv(65536)
            self.delivered.append((time.monotonic(), data))
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            conn.close()

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killed_deliverers_leave_no_orphans_and_deliveries_resume_within_seconds(make_service):
    service = make_service(workers=1, webhook_timeout_s=3)  # HEARTBEAT_TTL_S=4, MAINTENANCE_INTERVAL_S=1
    hook = FirstCallStalls()
    try:
        job = service.submit("text-to-image", {**SMALL, "num_inference_steps": 1, "webhook": {"url": hook.url}}).json()
        service.wait_job(job["id"])
        wait_until(lambda: hook.connections >= 1, 20, interval=0.02, what="the delivery in flight")
        orphans = []
        for round_ in range(3):  # killed mid-delivery, then twice more while starting up and cleaning
            deliverer = service.processes["webhooks"]
            wait_until(lambda: len(_children(deliverer.pid)) >= 2, 20, what="the scheduler and helper processes")
            children = _children(deliverer.pid)
            service.kill("webhooks")
            try:  # each child of the killed deliverer is to be gone within 3 s
                wait_until(lambda: not any(_alive(pid) for pid in children), 3, interval=0.05, what="its children")
            except TimeoutError:
                orphans += [pid for pid in children if _alive(pid)]
            if round_ == 2:  # the worst case, made certain: killed between taking the scheduler's lock and forking
                service.redis().set(RQScheduler.get_locking_key(keys_for(service.prefix).webhook_queue),
                                    "a-killed-scheduler", ex=4)  # its lifetime: HEARTBEAT_TTL_S
            service.start("webhooks", "webhooks")
            time.sleep(1.5 if round_ < 2 else 0)
        restarted = time.monotonic()
        wait_until(lambda: hook.delivered, 60, interval=0.1, what="the delivery after the restarts")
        late = hook.delivered[0][0] - restarted
        assert not orphans, f"processes of killed deliverers still running: {orphans}"
        assert late <= 4 + 3 + 5 + 5, f"the delivery came {late:.1f} s after the restart"  # TTL, deadline, backoff, slack
        assert hook.delivered[0][1].startswith(b"POST /hook")
        time.sleep(4 + 5)  # a heartbeat lifetime and a backoff: a delivery counted failed after its 200 comes again
        assert len(hook.delivered) == 1, f"delivered {len(hook.delivered)} times"
    finally:
        hook.close()
