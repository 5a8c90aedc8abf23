"""ONEDIFFUSION_MODEL as s3://bucket/prefix (a real moto S3 server) and hf://owner/name[@revision] (a
pre-filled huggingface_hub cache, offline): fetched once into the node-local cache, verified, shared by
workers that start together, and served by a real worker."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.checkpoint_source import (
    MANIFEST, CheckpointFetchError, HubLocation, S3Location, list_checkpoint, resolve_checkpoint, verify_object,
)
from tests.paths import ROOT
from tests.service.harness import free_port, wait_until

pytestmark = pytest.mark.slow  # an S3 server process and checkpoint fetches

boto3 = pytest.importorskip("boto3")
BUCKET = "onediffusion-models"
PREFIX = "releases/onediffusion"
SMALL_JOB = {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 1}


# ---- a real S3 server (moto_server as a subprocess) --------------------------------------------------
class MotoS3:
    """moto's S3 server on a free loopback port; `env` is what a process needs to reach it."""

    def __init__(self):
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        binary = Path(sys.executable).with_name("moto_server")
        command = [str(binary)] if binary.exists() else [sys.executable, "-m", "moto.server"]
        self.process = subprocess.Popen(command + ["-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.env = {"AWS_ENDPOINT_URL_S3": self.endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}
        wait_until(self._answers, 30, 0.2, "moto_server")

    def _answers(self) -> bool:
        try:
            self.client().list_buckets()
            return True
        except Exception:
            return False

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def s3_server():
    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


def upload_checkpoint(client, folder: Path, bucket: str, prefix: str) -> None:
    """Every file of `folder` under `prefix`; the transformer's weights as a multipart upload, so both
    ETag kinds (MD5 and MD5-of-parts) are checked."""
    from boto3.s3.transfer import TransferConfig

    if bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=bucket)
    multipart = TransferConfig(multipart_threshold=1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(folder).as_posix()}"
        config = multipart if path.suffix == ".safetensors" and path.parent.name == "transformer" else None
        client.upload_file(str(path), bucket, key, Config=config)


@pytest.fixture(scope="module")
def s3_checkpoint(s3_server, demo_checkpoint) -> str:
    upload_checkpoint(s3_server.client(), demo_checkpoint, BUCKET, PREFIX)
    return f"s3://{BUCKET}/{PREFIX}"


def same_files(a: Path, b: Path) -> bool:
    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST}

    return files(a) == files(b)


# ---- S3 ----------------------------------------------------------------------------------------------
def test_locations_parse():
    assert S3Location.parse("s3://bucket/a/b/") == S3Location("bucket", "a/b")
    assert S3Location.parse("s3://bucket").key_prefix == ""
    assert HubLocation.parse("hf://owner/name@v1.0") == HubLocation("owner/name", "v1.0")
    assert HubLocation.parse("hf://owner/name") == HubLocation("owner/name", None)
    for bad in ("hf://name", "hf://a/b/c", "s3:///prefix"):
        with pytest.raises(CheckpointFetchError, match="expected"):
            resolve_checkpoint(bad, "/nonexistent")


def test_s3_checkpoint_is_fetched_once_verified_and_loads(s3_env, s3_checkpoint, demo_checkpoint, tmp_path, caplog):
    from model.loading import load_components

    caplog.set_level(logging.INFO, logger="model.checkpoint_source")
    path = resolve_checkpoint(s3_checkpoint, tmp_path / "cache")
    assert path.is_relative_to(tmp_path / "cache") and (path / MANIFEST).is_file()
    assert same_files(path, demo_checkpoint)
    assert not list(path.parent.glob("*.partial"))
    components = load_components(path, device="cpu")
    assert components.is_demo and components.path == path
    fetched = [r for r in caplog.records if r.getMessage().startswith("fetching ")]
    assert len(fetched) == 1
    caplog.clear()
    assert resolve_checkpoint(s3_checkpoint, tmp_path / "cache") == path  # the second start: from the cache
    assert not [r for r in caplog.records if r.getMessage().startswith("fetching ")]


def test_two_workers_on_one_node_fetch_once(s3_server, s3_checkpoint, tmp_path):
    cache = tmp_path / "node-cache"
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr);"
            "from model.checkpoint_source import resolve_checkpoint;"
            f"print(resolve_checkpoint({s3_checkpoint!r}, {str(cache)!r}))")
    env = {**os.environ, **s3_server.env, "PYTHONPATH": str(ROOT)}
    starts = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in starts]
    assert all(p.returncode == 0 for p in starts), results
    paths = {out.strip() for out, _ in results}
    assert len(paths) == 1, paths
    logs = "".join(err for _, err in results)
    assert logs.count(":fetching s3://") == 1, logs  # one fetched; the other waited for it, or found it complete


def test_a_changed_checkpoint_is_fetched_into_a_new_folder(s3_env, s3_server, demo_checkpoint, tmp_path):
    client = s3_server.client()
    upload_checkpoint(client, demo_checkpoint, BUCKET, "changing/onediffusion")
    uri = f"s3://{BUCKET}/changing/onediffusion"
    first = resolve_checkpoint(uri, tmp_path)
    changed = (demo_checkpoint / "scheduler" / "scheduler_config.json").read_bytes() + b"\n"
    client.put_object(Bucket=BUCKET, Key="changing/onediffusion/scheduler/scheduler_config.json", Body=changed)
    second = resolve_checkpoint(uri, tmp_path)
    assert second != first and same_files(first, demo_checkpoint)  # a worker loading the old copy is not disturbed
    assert (second / "scheduler" / "scheduler_config.json").read_bytes() == changed


def test_a_file_that_does_not_match_its_object_is_refused(s3_server, s3_checkpoint, tmp_path):
    client = s3_server.client()
    location = S3Location.parse(s3_checkpoint)
    objects = {o.path: o for o in list_checkpoint(client, location)}
    weights = next(o for p, o in objects.items() if p.startswith("transformer/") and p.endswith(".safetensors"))
    config = objects["scheduler/scheduler_config.json"]
    assert "-" in weights.etag and "-" not in config.etag  # a multipart ETag and a plain MD5 one
    for obj in (weights, config):
        good = tmp_path / f"good-{Path(obj.path).name}"
        client.download_file(BUCKET, obj.key, str(good))
        verify_object(client, location, obj, good)
        data = bytearray(good.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
        bad = tmp_path / f"bad-{Path(obj.path).name}"
        bad.write_bytes(bytes(data))
        with pytest.raises(CheckpointFetchError, match="does not match its ETag"):
            verify_object(client, location, obj, bad)
        bad.write_bytes(bytes(data[:-1]))
        with pytest.raises(CheckpointFetchError, match="bytes, the bucket lists"):
            verify_object(client, location, obj, bad)


def test_s3_away_uses_the_copy_fetched_before(s3_env, s3_checkpoint, tmp_path, monkeypatch, caplog):
    fetched = resolve_checkpoint(s3_checkpoint, tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert resolve_checkpoint(s3_checkpoint, tmp_path) == fetched
    assert "loading the copy fetched before" in caplog.text
    with pytest.raises(CheckpointFetchError, match=f"cannot list {s3_checkpoint}"):
        resolve_checkpoint(s3_checkpoint, tmp_path / "empty")


def test_an_empty_prefix_says_so(s3_env, s3_checkpoint, tmp_path):
    with pytest.raises(CheckpointFetchError, match="holds no objects"):
        resolve_checkpoint(f"s3://{BUCKET}/no/such/prefix", tmp_path)


# ---- the Hugging Face Hub ----------------------------------------------------------------------------
COMMIT = hashlib.sha1(b"onediffusion demo").hexdigest()


def fill_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT, ref: str = "main") -> Path:
    """huggingface_hub's documented cache layout: content in blobs/ (named by their SHA-256, as LFS files
    are), snapshots/COMMIT/ of relative symlinks to them, refs/REF holding the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    snapshot = repo / "snapshots" / commit
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, demo_checkpoint) -> Path:
    from huggingface_hub import scan_cache_dir

    cache_dir = tmp_path_factory.mktemp("node-cache")
    fill_hub_cache(cache_dir / "hub", "onediffusion/demo", demo_checkpoint)
    (repo,) = scan_cache_dir(cache_dir / "hub").repos  # huggingface_hub reads the layout as its own
    assert repo.repo_id == "onediffusion/demo" and {r.commit_hash for r in repo.revisions} == {COMMIT}
    return cache_dir


REVISIONS = ["", "@main", f"@{COMMIT}"]
OFFLINE_SPECS = [*(f"hf://onediffusion/demo{revision}" for revision in REVISIONS), "hf://onediffusion/other"]

# Offline (HF_HUB_OFFLINE is read when huggingface_hub is imported): each spec resolved and loaded in a process
# of its own, forked from one that has imported the model's modules once (torch, diffusers and transformers
# take seconds to import on two cores).
RESOLVE_OFFLINE = """
import json, sys
from model.checkpoint_source import resolve_checkpoint
from model.loading import load_components
from tests.forked_each import each_in_a_fork
specs, cache_dir = json.loads(sys.argv[1]), sys.argv[2]

def resolved(spec):
    path = resolve_checkpoint(spec, cache_dir)
    load_components(path, device="cpu")
    return {"path": str(path)}

print(json.dumps(each_in_a_fork(specs, resolved)))
"""


@pytest.fixture(scope="module")
def resolved_offline(hub_cache) -> dict[str, dict]:
    """spec -> {"path": the folder it resolved to and loaded from} or {"error": the traceback}."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", RESOLVE_OFFLINE, json.dumps(OFFLINE_SPECS), str(hub_cache)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("revision", REVISIONS)
def test_hub_checkpoint_loads_from_the_node_cache_offline(resolved_offline, hub_cache, revision):
    done = resolved_offline[f"hf://onediffusion/demo{revision}"]
    assert "path" in done, done.get("error")
    assert Path(done["path"]) == hub_cache / "hub" / "models--onediffusion--demo" / "snapshots" / COMMIT


def test_hub_checkpoint_missing_from_an_offline_cache_says_which(resolved_offline):
    done = resolved_offline["hf://onediffusion/other"]
    assert "error" in done, done
    assert "cannot fetch hf://onediffusion/other" in done["error"]


# ---- a real worker -----------------------------------------------------------------------------------
def test_worker_serves_from_an_s3_checkpoint(make_service, s3_server, s3_checkpoint, tmp_path):
    cache = tmp_path / "worker-cache"
    service = make_service(deliverer=False, onediffusion_model=s3_checkpoint, model_cache_dir=cache, **s3_server.env)
    job = service.submit("text-to-image", SMALL_JOB, headers={"Prefer": "wait=60"}).json()
    assert job["status"] == "succeeded", job
    (snapshot,) = (cache / "s3" / BUCKET / PREFIX).glob("*/" + MANIFEST)
    assert "fetching s3://" in service.logs(full=True)


def test_worker_serves_from_a_hub_checkpoint_offline(make_service, hub_cache):
    service = make_service(deliverer=False, onediffusion_model="hf://onediffusion/demo", model_cache_dir=hub_cache,
                           hf_hub_offline=1)
    job = service.submit("text-to-image", SMALL_JOB, headers={"Prefer": "wait=60"}).json()
    assert job["status"] == "succeeded", job
