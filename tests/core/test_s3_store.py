"""The object storage backend against a real S3 server (moto's, over HTTP on a loopback port): inputs and
outputs round-trip, presigned URLs fetch the bytes until they expire, and a missing bucket or a dead server
is a StorageUnavailable that names the setting to check."""

from __future__ import annotations

import time

import httpx
import pytest

from core.settings import Settings
from core.storage import LocalStore, StorageGate, StorageUnavailable, open_store, parse_url
from tests.s3_server import S3Server, s3_bucket, s3_server  # noqa: F401  (fixtures)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


def s3_store(bucket: str, prefix: str = "outputs", **settings):
    return open_store(Settings(storage_url=f"s3://{bucket}/{prefix}", **settings))


def test_urls_name_bucket_and_prefix():
    assert parse_url("s3://my-bucket") == ("my-bucket", "")
    assert parse_url("s3://my-bucket/a/b/") == ("my-bucket", "a/b/")
    for bad in ("my-bucket", "http://x/y", "s3://UPPER", "s3://a"):
        with pytest.raises(ValueError, match="STORAGE_URL"):
            parse_url(bad)


def test_local_folder_stays_the_default(tmp_path):
    store = open_store(Settings(results_dir=str(tmp_path)))
    assert isinstance(store, LocalStore) and not store.redirects
    assert store.presigned_url("job1", "image.png", 60) is None


def test_outputs_and_inputs_round_trip(s3_env, s3_bucket):
    store = s3_store(s3_bucket)
    assert store.redirects
    store.save("job1", "image.png", b"\x89PNG fake")
    assert store.read("job1", "image.png") == b"\x89PNG fake"
    assert store.exists("job1", "image.png") and not store.exists("job1", "other.png")
    assert store.read("job1", "other.png") is None
    assert s3_env.keys(s3_bucket) == ["outputs/job1/image.png"]

    digest = store.save_input(b"input bytes")
    assert store.save_input(b"input bytes") == digest  # one blob per content
    assert store.load_input(digest) == b"input bytes"
    with pytest.raises(FileNotFoundError):
        store.load_input("0" * 64)
    with pytest.raises(ValueError):
        store.load_input("../../etc/passwd")
    with pytest.raises(ValueError):
        store.save("job1", "../escape.png", b"x")

    store.delete("job1")
    assert not store.exists("job1", "image.png")
    assert s3_env.keys(s3_bucket) == [f"outputs/_inputs/{digest}"]


@pytest.mark.slow  # waits for the URL to expire
def test_presigned_url_serves_the_object_until_it_expires(s3_env, s3_bucket):
    store = s3_store(s3_bucket)
    store.save("job2", "image.png", b"png bytes")
    url = store.presigned_url("job2", "image.png", ttl_s=2)
    assert url.startswith(s3_env.endpoint + f"/{s3_bucket}/outputs/job2/image.png?") and "X-Amz-Expires=2" in url
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.content == b"png bytes"
    assert fetched.headers["content-type"] == "image/png"
    forged = httpx.get(url.replace("image.png", "other.png"))
    assert forged.status_code == 403  # the signature covers the key
    time.sleep(3)
    expired = httpx.get(url)
    assert expired.status_code == 403 and "expired" in expired.text


def test_presigned_urls_name_the_public_endpoint(s3_env, s3_bucket):
    """Clients may reach the storage at another address than the service (compose: localhost vs minio)."""
    store = s3_store(s3_bucket, storage_public_endpoint="http://storage.example.com:9000")
    assert store.presigned_url("job3", "image.png", 60).startswith(f"http://storage.example.com:9000/{s3_bucket}/")


def test_missing_bucket_is_unavailable_and_names_the_setting(s3_env):
    store = s3_store("no-such-bucket")
    for action in (store.check, lambda: store.save("job1", "image.png", b"x"), lambda: store.save_input(b"x"),
                   lambda: store.load_input("0" * 64), lambda: store.read("job1", "image.png")):
        with pytest.raises(StorageUnavailable, match="STORAGE_URL=s3://no-such-bucket/outputs.*does not exist"):
            action()


def test_refused_writes_are_unavailable_and_name_the_credentials(tmp_path, monkeypatch):
    server = S3Server(tmp_path)
    server.start()
    try:
        server.create_bucket("read-only")
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        store = s3_store("read-only")
        store.save("job1", "image.png", b"x")
        server.refuse_writes()
        for action in (store.check, lambda: store.save("job1", "image.png", b"y"), lambda: store.save_input(b"x")):
            with pytest.raises(StorageUnavailable, match="STORAGE_URL=s3://read-only/outputs.*refused it .AccessDenied.*AWS_ACCESS_KEY_ID"):
                action()
        assert store.read("job1", "image.png") == b"x"  # reads still work; nothing was changed
        server.refuse_writes(False)
        store.check()
    finally:
        server.stop()


def test_dead_server_is_unavailable_and_names_the_endpoint(tmp_path, monkeypatch):
    server = S3Server(tmp_path)
    server.start()
    server.create_bucket("short-lived")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    store = s3_store("short-lived", storage_timeout_s=2)
    store.check()
    gate = StorageGate(store, ok_ttl_s=0, fail_ttl_s=60)
    assert gate.held() is False  # never asked: the submission asks (off the event loop)
    gate.ensure()
    assert gate.held() is False  # ok_ttl_s=0: asked again each time
    server.kill()
    with pytest.raises(StorageUnavailable, match="unreachable.*AWS_ENDPOINT_URL_S3"):
        store.save("job1", "image.png", b"x")
    with pytest.raises(StorageUnavailable):
        gate.ensure()
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):  # the answer is remembered: no new attempt within fail_ttl_s
        gate.ensure()
    with pytest.raises(StorageUnavailable):  # held without asking
        gate.held()
    assert time.monotonic() - started < 0.1


def test_sweep_leaves_the_bucket_to_its_lifecycle_rule(s3_env, s3_bucket):
    """Workers sweep a local folder every minute; a bucket is never listed (its lifecycle rule expires it)."""
    store = s3_store(s3_bucket)
    store.save("old", "a.png", b"1")
    requests_before = s3_env.log_path.read_text().count(f"/{s3_bucket}")
    assert store.sweep(ttl_s=0, now=time.time() + 10**6) == 0
    assert s3_env.log_path.read_text().count(f"/{s3_bucket}") == requests_before
    assert store.exists("old", "a.png")


def test_client_benchmark_runs(capsys):
    from benchmarks import storage_clients

    rows = storage_clients.main(["--size", "1024", "--repeat", "2"])
    assert [row["client"] for row in rows] == ["boto3", "obstore"]
    assert all(row[c] > 0 for row in rows for c in ("put_ms", "get_ms", "head_ms", "presign_ms"))
    assert "(obstore / boto3)" in capsys.readouterr().out


def test_documented_lifecycle_rule_is_accepted_by_s3(s3_server, s3_bucket):
    """deploy/s3-lifecycle.json, as docs/operations.md tells to apply it (put-bucket-lifecycle-configuration)."""
    import json

    from tests.paths import ROOT

    rule = json.loads((ROOT / "deploy" / "s3-lifecycle.json").read_text())
    client = s3_server.client()
    client.put_bucket_lifecycle_configuration(Bucket=s3_bucket, LifecycleConfiguration=rule)
    (stored,) = client.get_bucket_lifecycle_configuration(Bucket=s3_bucket)["Rules"]
    assert stored["Expiration"] == {"Days": 7} and stored["Status"] == "Enabled"


def test_the_gate_holds_a_yes_without_asking(tmp_path):
    asked = []

    class Store:
        def check(self):
            asked.append(1)

    gate = StorageGate(Store(), ok_ttl_s=60)
    assert gate.held() is False and not asked
    gate.ensure()
    assert gate.held() is True and gate.held() is True and len(asked) == 1
