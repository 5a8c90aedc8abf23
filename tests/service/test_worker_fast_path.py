"""A worker whose asked-for attention backend fails at start (the Triton kernel on a CPU without Triton's
interpreter: no GPU to launch on) with compilation off does not go ready on it: it logs why, falls back to
the last resort, eager math, serves jobs, and /readyz and /metrics say so. (The compiled tier's fallback in a
real worker: tests/model/test_gpu_path.py.)"""

from __future__ import annotations

from tests.service.harness import wait_until


def _readiness_entry(service) -> dict:
    ready = service.client.get("/readyz").json()
    (name,) = ready["workers"]
    return ready, ready["worker_info"][name]


def test_failing_backend_falls_back_to_eager_math(make_service):
    service = make_service(onediffusion_attention="triton", compile="false", triton_interpret="0", deliverer=False)
    ready, info = _readiness_entry(service)
    assert (info["attention"], info["compile"], info["fast_path"]) == ("math", "off", "degraded")
    assert "triton eager:" in info["fast_path_reason"]
    assert any("attention=math" in mode and "compile=off" in mode and "fast_path=degraded" in mode for mode in ready["worker_modes"])
    log = wait_until(lambda: (lambda text: text if "fast path triton eager not used" in text else None)(service.logs(full=True)), 10)
    assert "fast path" in log
    metrics = service.client.get("/metrics").text
    assert 'onediffusion_workers_ready_by_mode{attention="math",compile="off",fast_path="degraded"} 1' in metrics
    job = service.submit("text-to-image", {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 2},
                         headers={"Prefer": "wait=60"}).json()
    assert job["status"] == "succeeded", job
