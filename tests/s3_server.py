"""A real S3 server for tests: moto's standalone server (`moto[server]`) as a subprocess speaking the S3 API
over HTTP on a free loopback port. The service under test reaches it as it would reach MinIO or AWS: through
STORAGE_URL and the standard AWS environment variables (`env()`).

moto accepts any presigned URL, expired or forged; S3, MinIO and R2 refuse both. So the server runs moto's
application behind `PresignedUrlCheck`, which answers a presigned (SigV4 query) request as S3 does: 403
`AccessDenied` when it has expired, 403 `SignatureDoesNotMatch` when its signature is wrong. It can also be
told to refuse every write with 403 `AccessDenied` (`refuse_writes()`), as a bucket policy or a read-only
key does. Run it alone with `python -m tests.s3_server PORT`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import httpx
import pytest

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"
REGION = "us-east-1"
ROOT = Path(__file__).resolve().parents[1]
CONTROL = "/_test/refuse-writes"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """`moto_server` on 127.0.0.1:<free port>; `kill()` ends it (its buckets go with it: moto keeps them in
    memory), `start()` brings up an empty one on the same port."""

    def __init__(self, log_dir: Path):
        self.port = _free_port()
        self.log_path = Path(log_dir) / "moto_server.log"
        self.process: Optional[subprocess.Popen] = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables a process needs to reach this server (what a deployment sets for MinIO)."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
        }

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.s3_server", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "MOTO_PORT": str(self.port), "PYTHONPATH": str(ROOT)},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited; see {self.log_path}")
            try:
                httpx.get(self.endpoint + "/moto-api/", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError("moto_server did not answer within 30 s")

    def kill(self) -> None:
        """SIGKILL: the storage server vanishes mid-request, as a crashed or partitioned one does."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def refuse_writes(self, refuse: bool = True) -> None:
        """From now on answer PUT, POST and DELETE with 403 AccessDenied (or, with False, no longer)."""
        httpx.post(f"{self.endpoint}{CONTROL}", params={"refuse": "1" if refuse else "0"}).raise_for_status()

    def client(self):
        """A boto3 S3 client of this server, for a test's own look at the bucket."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def delete_bucket(self, name: str) -> None:
        """Empty the bucket, then remove it (writes to it then fail with NoSuchBucket)."""
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=item["Key"])
        client.delete_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One moto S3 server for the test session (tests make their own buckets)."""
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh, empty bucket on the session's S3 server; its name."""
    name = "od-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40] + f"-{os.getpid() % 10000}"
    try:
        s3_server.create_bucket(name)
    except Exception:  # a restarted server in a chaos test of the same name: make it anew
        s3_server.delete_bucket(name)
        s3_server.create_bucket(name)
    return name


class PresignedUrlCheck:
    """WSGI middleware: refuse expired or wrongly signed presigned URLs the way S3 does (moto checks neither)."""

    def __init__(self, app):
        self.app = app
        self.refusing_writes = False

    def __call__(self, environ, start_response):
        from urllib.parse import parse_qsl

        query = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        if environ.get("PATH_INFO") == CONTROL:
            self.refusing_writes = query.get("refuse") == "1"
            start_response("204 No Content", [])
            return [b""]
        if self.refusing_writes and environ["REQUEST_METHOD"] in ("PUT", "POST", "DELETE"):
            return self._refuse(start_response, "AccessDenied", "Access Denied")
        if query.get("X-Amz-Algorithm") == "AWS4-HMAC-SHA256" and "X-Amz-Signature" in query:
            problem = self._problem(environ, query)
            if problem:
                return self._refuse(start_response, *problem)
        return self.app(environ, start_response)

    @staticmethod
    def _refuse(start_response, code: str, message: str):
        body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>"
                f"<Message>{message}</Message></Error>").encode()
        start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        return [body]

    @staticmethod
    def _problem(environ, query: dict) -> Optional[tuple[str, str]]:
        from datetime import datetime, timezone
        from urllib.parse import parse_qsl, quote, urlencode

        from botocore.auth import S3SigV4QueryAuth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        signed_at = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        if time.time() > signed_at.timestamp() + int(query.get("X-Amz-Expires", "0")):
            return "AccessDenied", "Request has expired"
        access_key, _, region, service, _ = query["X-Amz-Credential"].split("/")
        if access_key != ACCESS_KEY:
            return "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."
        raw = environ.get("REQUEST_URI") or environ.get("RAW_URI") or environ.get("PATH_INFO", "/")
        path = raw.split("?", 1)[0]
        pairs = [(k, v) for k, v in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
                 if k != "X-Amz-Signature"]
        host = environ.get("HTTP_HOST", "")
        request = AWSRequest(method=environ["REQUEST_METHOD"], url=f"http://{host}{path}?{urlencode(pairs, quote_via=quote)}",
                             headers={"host": host})
        request.context["timestamp"] = query["X-Amz-Date"]
        auth = S3SigV4QueryAuth(Credentials(access_key, SECRET_KEY), service, region, expires=int(query["X-Amz-Expires"]))
        expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
        if expected != query["X-Amz-Signature"]:
            return "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided."
        return None


def main(port: int) -> None:
    """moto's server application (as `moto_server` builds it) behind the presigned URL check."""
    from moto.moto_server.threaded_moto_server import MotoRequestHandler
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, PresignedUrlCheck(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main(int(sys.argv[1]))
