"""A worker whose asked-for attention backend fails at start (the Triton kernel on a CPU without Triton's
interpreter: no GPU to launch on) does not go ready on it: it logs why, falls back (next backend compiled,
else eager math), serves jobs, and /readyz and /metrics say which backend and compile mode it runs."""

from __future__ import annotations

import pytest

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
    assert 'onediffusion_workers_ready_by_fast_path{attention="math",compile="off",fast_path="degraded"} 1' in metrics
    job = service.submit("text-to-image", {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 2},
                         headers={"Prefer": "wait=60"}).json()
    assert job["status"] == "succeeded", job


@pytest.mark.slow
def test_failing_backend_under_compile_falls_back_to_the_next_backend_compiled(make_service):
    """COMPILE_ON_CPU compiles the demo model with inductor: the Triton candidate fails, compiled math is kept
    (the next backend, still compiled) rather than dropping compilation."""
    service = make_service(onediffusion_attention="triton", compile_on_cpu="true", triton_interpret="0",
                           deliverer=False, workers=0)
    service.start_worker(wait_ready=False)
    service.wait_ready(1, timeout=400)
    _, info = _readiness_entry(service)
    assert (info["attention"], info["compile"], info["fast_path"]) == ("math", "inductor", "degraded")
    assert "triton compiled:" in info["fast_path_reason"]
    metrics = service.client.get("/metrics").text
    assert 'onediffusion_workers_ready_by_fast_path{attention="math",compile="inductor",fast_path="degraded"} 1' in metrics
