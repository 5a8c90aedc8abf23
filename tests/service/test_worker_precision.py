"""A worker asked for PRECISION=fp8 where FP8 cannot run (here: the CPU) serves jobs in its own precision,
says why in its log, and shows both in /readyz and /metrics."""

from __future__ import annotations

from tests.service.harness import wait_until


def test_fp8_worker_on_cpu_reports_its_fallback(make_service):
    service = make_service(precision="fp8", deliverer=False)
    ready = service.client.get("/readyz").json()
    (name,) = ready["workers"]
    info = ready["worker_info"][name]
    assert (info["precision"], info["precision_requested"]) == ("fp32", "fp8")
    assert "FP8 needs a CUDA device of compute capability >= 8.9" in info["precision_reason"]
    log = wait_until(lambda: (lambda text: text if "PRECISION=fp8 was asked" in text else None)(service.logs(full=True)), 10)
    assert "this worker runs fp32" in log and "runs on cpu" in log
    metrics = service.client.get("/metrics").text
    assert 'onediffusion_workers_ready_by_precision{precision="fp32"} 1' in metrics
    job = service.submit("text-to-image", {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 2},
                         headers={"Prefer": "wait=60"}).json()
    assert job["status"] == "succeeded", job
