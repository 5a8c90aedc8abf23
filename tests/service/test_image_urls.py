"""Input images by URL: fetched by the gateway through the SSRF guard, with a byte limit and a deadline."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.cases import CASES, IMG
from tests.service.harness import local_address

PNG = base64.b64decode(IMG)


class _Files(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/photo.png":
            self._send(200, PNG)
        elif self.path == "/big.png":
            self._send(200, PNG + b"\0" * 5000)
        elif self.path == "/slow.png":
            time.sleep(3)
            self._send(200, PNG)
        elif self.path == "/moved.png":
            self.send_response(302)
            self.send_header("Location", "/photo.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def files():
    address = local_address()  # a loopback address the harness names in IMAGE_URL_ALLOWLIST
    server = ThreadingHTTPServer((address, 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{address}:{server.server_address[1]}"
    server.shutdown()


def test_images_by_url_are_fetched_through_the_guard(make_service, files):
    service = make_service(workers=0, deliverer=False, image_url_max_bytes=len(PNG) + 1000, image_url_timeout_s=1)
    payload = CASES["depth-estimation"][0]

    job = service.submit("depth-estimation", {**payload, "image": f"{files}/photo.png"})
    assert job.status_code == 202, job.text
    echoed = job.json()["input"]["image"]
    assert echoed["sha256"] == hashlib.sha256(PNG).hexdigest() and echoed["bytes"] == len(PNG)

    batch = service.client.post("/v1/batches", json={"items": [{"task": "depth-estimation", **payload,
                                                                  "image": f"{files}/photo.png"}]})
    assert batch.status_code == 202, batch.text

    def refused(url: str, *words: str) -> None:
        got = service.submit("depth-estimation", {**payload, "image": url})
        assert got.status_code == 422, got.text
        message = got.json()["error"]["message"]
        assert message.startswith("image: ") and all(w in message for w in words), message
        return message

    # one answer whatever went wrong: it does not tell sizes, status codes or contents apart
    for path in ("big.png", "missing.png", "moved.png"):
        refused(f"{files}/{path}", "could not be fetched from this URL", "without redirects")
    refused(f"{files}/slow.png", "longer than 1 s")
    refused("http://169.254.169.254/latest/meta-data", "public addresses")  # link-local: never fetched
    assert "10.1.2.3" not in refused("http://10.1.2.3/photo.png", "public addresses")  # what it resolves to is not told
    assert len(service.client.get("/v1/jobs").json()["data"]) == 2  # only the two accepted jobs exist
    assert f"{files}/photo.png" not in service.logs(full=True)  # URLs may carry tokens: not logged
