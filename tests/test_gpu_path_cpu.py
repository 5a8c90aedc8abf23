"""CPU proofs of the GPU path: the attention op's fake kernel agrees with the real one on the layouts the
model passes (opcheck), and the model compiled by inductor equals eager through the Triton kernel (run by
Triton's interpreter) and through the math path.

Before this, an op whose fake kernel gave other strides than the real one passed every test and failed
every compiled forward on the H100. Triton's interpreter must be switched on before triton is imported,
so the checks run in one child process (one import of torch and one compile per backend) whose report the
tests read."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

CHECKS = r"""
import json, sys
import torch
from benchmarks.denoiser import TINY, Workload, build, inputs
from model.attention import use_backend
from model.triton_attention import softcap_attention_op

report = {"opcheck": {}, "compiled": {}}
g = torch.Generator().manual_seed(0)
# the model's layouts: q, k, v are transposed views of (B, L, H, D); grouped and ungrouped heads, odd lengths
for b, length, h, hkv, d in [(1, 37, 4, 2, 120), (2, 20, 2, 2, 48)]:
    q = (torch.randn(b, length, h, d, generator=g) * 3).transpose(1, 2)
    k = (torch.randn(b, length, hkv, d, generator=g) * 3).transpose(1, 2)
    v = torch.randn(b, length, hkv, d, generator=g).transpose(1, 2)
    name = f"B{b} L{length} H{h}/{hkv} D{d}"
    try:
        torch.library.opcheck(softcap_attention_op, (q, k, v, 30.0, False))
        out = softcap_attention_op(q, k, v, 30.0, False)
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fake = softcap_attention_op(*(mode.from_tensor(t) for t in (q, k, v)), 30.0, False)
        report["opcheck"][name] = {"passed": True, "real": [list(out.shape), list(out.stride()), str(out.dtype)],
                                   "fake": [list(fake.shape), list(fake.stride()), str(fake.dtype)]}
    except Exception as exc:
        report["opcheck"][name] = {"passed": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}

config = dict(TINY, depth=1, hidden_size=96, num_heads=2, num_kv_heads=1, multiple_of=32, caption_channels=32)
model = build(config, torch.device("cpu"), torch.float32)
x, t, y, mask = inputs(Workload("probe", 1, 64, 1), config, torch.device("cpu"), torch.float32)
mask[0, 12:] = 0
with torch.no_grad():
    use_backend("math")
    eager = model(x, t, y, mask)
    for backend in sys.argv[1:]:
        torch._dynamo.reset()
        use_backend(backend)
        try:
            compiled = torch.compile(model, dynamic=False)(x, t, y, mask)
            report["compiled"][backend] = {"max_abs_err": float((compiled - eager).abs().max()),
                                           "scale": float(eager.abs().max())}
        except Exception as exc:
            report["compiled"][backend] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def report() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", CHECKS, "math", "triton"], env=env, capture_output=True, text=True,
                            timeout=900, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    return json.loads(lines[-1][len("REPORT "):])


def test_opcheck_passes_on_the_models_layouts(report):
    assert len(report["opcheck"]) == 2
    for name, case in report["opcheck"].items():
        assert case["passed"], f"{name}: {case.get('error')}"
        assert case["fake"] == case["real"], name  # same shape, strides and dtype


@pytest.mark.parametrize("backend", ["triton", "math"])
def test_compiled_model_equals_eager(report, backend):
    case = report["compiled"][backend]
    assert "error" not in case, case.get("error")
    assert case["scale"] > 0.1  # the output is not trivially zero
    assert case["max_abs_err"] < 1e-3, case
