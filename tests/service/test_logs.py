"""Logs: every line of the API (uvicorn's too) is JSON; one access line per request with its request id;
webhook bodies and signed URLs never reach a log, even when a receiver fails."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.cases import CASES
from tests.service.harness import free_port, wait_until

MARKER = "zebra-marker-4711"


class FailingReceiver:
    """Answers every POST with 500 and echoes nothing; counts calls."""

    def __init__(self):
        self.calls = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.calls += 1
                self.send_response(500)
                self.end_headers()
                self.wfile.write(b"boom")

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_logs_are_json_with_access_lines_and_no_secrets(make_service):
    receiver = FailingReceiver()
    try:
        service = make_service(webhook_retries=1)
        payload = {**CASES["text-to-image"][0], "prompt": MARKER,
                   "webhook": {"url": f"http://127.0.0.1:{receiver.port}/hook", "secret": "s3cret-value"}}
        response = service.submit("text-to-image", payload, headers={"X-Request-ID": "req-abc-123", "Prefer": "wait=60"})
        assert response.headers["x-request-id"] == "req-abc-123"
        job = response.json()
        assert job["status"] == "succeeded", job
        signed = job["outputs"][0]["signed_url"]
        assert service.client.get(signed).status_code == 200
        generated = service.client.get("/healthz").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        wait_until(lambda: receiver.calls >= 2, 60, what="the webhook call and its retry")
        wait_until(lambda: "the webhook answered 500" in service.logs(full=True), 30, what="the failure logged")
    finally:
        receiver.close()
    logs = service.logs(full=True)

    api = [line for line in (service.tmp / "api.log").read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in api]  # every line is JSON, uvicorn's included
    assert any(e["logger"].startswith("uvicorn") for e in entries)
    access = [e for e in entries if e["logger"] == "onediffusion.access"]
    submit = [e for e in access if e["request_id"] == "req-abc-123"]
    assert len(submit) == 1 and submit[0]["method"] == "POST" and submit[0]["status"] == 200
    assert any(e["request_id"] == generated and e["path"] == "/healthz" for e in access)

    signature = signed.split("sig=")[1]
    assert signature not in logs, "a signed URL reached a log"
    assert MARKER not in logs, "a webhook body (or the prompt) reached a log"
    assert "s3cret-value" not in logs
