"""A client generated from the served OpenAPI document by openapi-python-client works: it generates
without warnings, every module imports, a text-to-image job runs to success through its typed functions
(JSON body), a multipart form with an image file is accepted, and the output downloads as image bytes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "clients" / "openapi-python-client.yaml"
GENERATOR = Path(sys.executable).with_name("openapi-python-client")

# Runs in a subprocess with the generated package `od_generated` on its path; prints one JSON line.
SCRIPT = textwrap.dedent('''
    import importlib, io, json, pkgutil, sys, time
    import od_generated
    from od_generated import AuthenticatedClient
    from od_generated.api.files import get_file
    from od_generated.api.jobs import cancel_job, get_job
    from od_generated.api.tasks import camera_pose_estimation, depth_estimation, segmentation, text_to_image
    from od_generated.models import (CameraPoseEstimationForm, ClassSpec, DepthEstimationForm, JobView,
                                     SegmentationForm, TextToImageRequest)
    from od_generated.types import File

    modules = [m.name for m in pkgutil.walk_packages(od_generated.__path__, "od_generated.")]
    for name in modules:
        importlib.import_module(name)
    url, png = sys.argv[1], open(sys.argv[2], "rb").read()
    client = AuthenticatedClient(base_url=url, token="unused", raise_on_unexpected_status=True, timeout=30)

    body = TextToImageRequest(prompt="a red bicycle", width=64, height=64, num_inference_steps=2, seed=3)
    submitted = text_to_image.sync_detailed(client=client, body=body)
    assert submitted.status_code == 202, submitted.content
    job = submitted.parsed
    deadline = time.monotonic() + 30
    while job.status.value not in ("succeeded", "failed", "canceled") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = get_job.sync(job.id, client=client)
    assert isinstance(job, JobView), job
    output = job.outputs[0]
    downloaded = get_file.sync_detailed(job.id, output.name, client=client)

    def file():
        return File(payload=io.BytesIO(png), file_name="in.png", mime_type="image/png")

    form = DepthEstimationForm(image=file(), num_inference_steps=1)
    uploaded = depth_estimation.sync_detailed(client=client, body=form)
    # lists of files and of objects (one part each), submitted and canceled at once
    forms = [
        (segmentation, SegmentationForm(image=file(), classes=[ClassSpec(name="cat"), ClassSpec(name="dog", colour="red")])),
        (camera_pose_estimation, CameraPoseEstimationForm(images=[file(), file()])),
    ]
    more = [module.sync_detailed(client=client, body=body) for module, body in forms]
    for answer in [uploaded, *more]:
        if answer.status_code == 202:
            cancel_job.sync_detailed(answer.parsed.id, client=client)
    print(json.dumps({
        "modules": len(modules), "status": job.status.value, "media_type": downloaded.headers["content-type"],
        "file_head": downloaded.parsed.payload.read(8).hex(), "form_status": int(uploaded.status_code),
        "form_input": uploaded.parsed.input_.to_dict() if uploaded.status_code == 202 else uploaded.content.decode(),
        "more": [(int(a.status_code), a.parsed.input_.to_dict() if a.status_code == 202 else a.content.decode())
                 for a in more],
    }))
''')


@pytest.fixture(scope="module")
def generated(shared_service, tmp_path_factory) -> Path:
    if not GENERATOR.exists():
        pytest.fail("openapi-python-client is not installed: pip install -e '.[dev]'")
    tmp = tmp_path_factory.mktemp("generated")
    document = tmp / "openapi.json"
    document.write_text(shared_service.client.get("/openapi.json").text)
    result = subprocess.run(
        [str(GENERATOR), "generate", "--path", str(document), "--config", str(CONFIG), "--meta", "none",
         "--output-path", str(tmp / "od_generated")],
        capture_output=True, text=True, timeout=120, cwd=tmp,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # the generator reports what it could not use (a body, a response, a content type) and carries on
    assert "Warning" not in output and "Unable to" not in output and "Unsupported" not in output, output
    return tmp


def test_generated_client_runs_a_job_and_downloads_its_output(generated, shared_service):
    from tests.conftest import make_image

    image = generated / "input.png"
    image.write_bytes(make_image(64, 64))
    result = subprocess.run([sys.executable, "-c", SCRIPT, shared_service.url, str(image)], capture_output=True,
                            text=True, timeout=90, cwd=generated, env={"PYTHONPATH": str(generated), "PATH": ""})
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["modules"] > 50  # the api and models packages, all imported
    assert report["status"] == "succeeded"
    assert report["media_type"] == "image/png" and bytes.fromhex(report["file_head"]) == b"\x89PNG\r\n\x1a\n"
    assert report["form_status"] == 202, report["form_input"]
    assert report["form_input"]["image"]["width"] == 64, report["form_input"]
    (seg_status, seg), (poses_status, poses) = report["more"]
    assert seg_status == 202 and [c["name"] for c in seg["classes"]] == ["cat", "dog"], seg
    assert poses_status == 202 and len(poses["images"]) == 2, poses
