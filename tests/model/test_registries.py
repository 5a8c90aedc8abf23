"""The three extension points (attention backends, output kinds, storage backends): a new entry is one
registration and is then selectable, an unknown name fails with the registered ones listed, and the
attention selection policy goes pin > setting > measured > math fallback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from core.settings import Settings, SettingsError
from model import attention
from model import attention_registry as registry
from model.attention import attention_math, backend_for, run_backend, select_backend, softcap_attention, use_backend
from model.attention_registry import (
    candidates, get_attention_backend, register_attention_backend, unregister_attention_backend,
)

CPU = torch.device("cpu")


def qkv(heads: int = 4, kv_heads: int = 2, length: int = 33, dim: int = 16):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, heads, length, dim, generator=g) * 3, torch.randn(1, kv_heads, length, dim, generator=g) * 3,
            torch.randn(1, kv_heads, length, dim, generator=g))


# ---- attention backends ----------------------------------------------------------------------------------
@pytest.fixture
def clean_attention(monkeypatch):
    """No pin, no measured choice, `auto`; toy backends removed afterwards."""
    monkeypatch.setenv("ONEDIFFUSION_ATTENTION", "auto")
    monkeypatch.setattr(attention, "_selected", {})
    use_backend(None)
    before = set(registry.backend_names())
    yield
    use_backend(None)
    for name in set(registry.backend_names()) - before:
        unregister_attention_backend(name)


def test_a_toy_backend_is_one_registration(clean_attention):
    calls = []

    @register_attention_backend("toy", devices=("cpu",))
    def toy(q, k, v, cap):
        calls.append(cap)
        return attention_math(q, k, v, cap)

    assert "toy" in candidates(CPU) and candidates(CPU)[-1] == "math"
    assert "toy" not in candidates("cuda")  # its devices
    assert Settings(onediffusion_attention="toy").onediffusion_attention == "toy"
    q, k, v = qkv()
    use_backend("toy")
    torch.testing.assert_close(softcap_attention(q, k, v), attention_math(q, k, v))
    assert calls == [attention.SOFTCAP]


def test_unknown_names_fail_with_the_registered_ones():
    with pytest.raises(ValueError, match="unknown attention backend 'nope'; registered: math, triton-fast, triton, flex"):
        get_attention_backend("nope")
    with pytest.raises(ValueError, match="unknown attention backend"):
        use_backend("nope")
    with pytest.raises(SettingsError, match=r"ONEDIFFUSION_ATTENTION='nope'.*use auto or one of: math, triton-fast"):
        Settings.from_env({"ONEDIFFUSION_ATTENTION": "nope"})
    assert Settings.from_env({"ONEDIFFUSION_ATTENTION": "triton-fast"}).onediffusion_attention == "triton-fast"
    with pytest.raises(ValueError, match="cannot be called 'auto'"):
        register_attention_backend("auto", attention_math)


def test_selection_policy_pin_then_setting_then_measured_then_math(clean_attention, monkeypatch):
    def same(q, k, v, cap):
        return attention_math(q, k, v, cap)

    register_attention_backend("measured-toy", same, devices=("cpu", "cuda"))
    register_attention_backend("set-toy", same, devices=("gpu-only",))
    register_attention_backend("pinned-toy", same, devices=("gpu-only",))
    cuda, bf16, f32 = torch.device("cuda"), torch.bfloat16, torch.float32
    # measured: the first candidate of the device that passes the check against math
    assert select_backend(CPU, f32) == "measured-toy"
    attention._selected["cuda:torch.bfloat16"] = "measured-toy"  # as select_backend measures it on a GPU
    assert backend_for(cuda, bf16) == "measured-toy"
    assert backend_for(CPU, f32) == "math"  # off CUDA, outside a worker's start-up check: the fallback
    # the setting beats the measured choice
    monkeypatch.setenv("ONEDIFFUSION_ATTENTION", "set-toy")
    assert backend_for(cuda, bf16) == backend_for(CPU, f32) == "set-toy"
    # a pin beats the setting (the worker pins what its start-up check verified), whatever its devices
    use_backend("pinned-toy")
    assert backend_for(cuda, bf16) == backend_for(CPU, f32) == "pinned-toy"
    use_backend(None)
    assert backend_for(cuda, bf16) == "set-toy"
    # fallback: a candidate that gives wrong numbers is not chosen
    monkeypatch.setenv("ONEDIFFUSION_ATTENTION", "auto")
    monkeypatch.setattr(attention, "_selected", {})
    register_attention_backend("measured-toy", lambda q, k, v, cap: attention_math(q, k, v, cap) * 2, devices=("cpu",))
    assert select_backend(CPU, f32) == "math"


def test_a_bad_setting_in_the_environment_names_the_registered_backends(clean_attention, monkeypatch):
    monkeypatch.setenv("ONEDIFFUSION_ATTENTION", "nope")
    with pytest.raises(ValueError, match="use auto or one of: math"):
        backend_for(CPU, torch.float32)


def test_constraints_decide_the_candidates(clean_attention):
    register_attention_backend("no-cap", attention_math, softcap=False)
    register_attention_backend("needs-a-package", attention_math, requires=("no_such_package_for_attention",))
    register_attention_backend("half-only", attention_math, dtypes=("float16",))
    assert "no-cap" not in candidates(CPU) and "needs-a-package" not in candidates(CPU)
    assert "half-only" in candidates(CPU) and "half-only" not in candidates(CPU, torch.float32)
    assert "no_such_package_for_attention is not installed" in get_attention_backend("needs-a-package").unavailable("cpu")
    q, k, v = qkv()
    with pytest.raises(ValueError, match="no logit soft-cap"):
        run_backend("no-cap", q, k, v)
    torch.testing.assert_close(run_backend("no-cap", q, k, v, cap=None), attention_math(q, k, v, cap=None))


def test_a_backend_without_grouped_heads_gets_repeated_keys(clean_attention):
    seen = []

    def plain(q, k, v, cap):
        seen.append(k.shape[1])
        return attention_math(q, k, v, cap)

    register_attention_backend("plain", plain, grouped_kv=False)
    q, k, v = qkv(heads=4, kv_heads=2)
    torch.testing.assert_close(run_backend("plain", q, k, v), attention_math(q, k, v))
    assert seen == [4]


def test_a_backend_named_by_module_is_imported_when_pinned(clean_attention):
    register_attention_backend("lazy", "model.attention:attention_math")
    assert isinstance(get_attention_backend("lazy").fn, str)
    use_backend("lazy")
    assert get_attention_backend("lazy").fn is attention_math
    register_attention_backend("missing", "no_such_module_for_attention:kernel")
    with pytest.raises(ModuleNotFoundError):
        use_backend("missing")


def test_the_start_up_check_records_a_backend_that_cannot_load(clean_attention):
    """A candidate whose module is missing is a failed attempt with its reason, not a crashed worker."""
    from worker.fast_path import Attempt, try_candidate

    register_attention_backend("missing", "no_such_module_for_attention:kernel")
    model = torch.nn.Linear(2, 2)
    attempt = try_candidate(model, model, Attempt("missing", False), [(torch.ones(1, 2),)], [torch.ones(1, 2)], 0.1, 1)
    assert attempt.error and "no_such_module_for_attention" in attempt.error
    assert backend_for(CPU, torch.float32) == "math"  # unpinned again


@pytest.mark.parametrize("how", ["pinned", "set"])
def test_the_dispatch_traces_into_one_graph(clean_attention, monkeypatch, fixtures_dir, how):
    """torch.compile sees through the registry: no graph break for a pinned backend or a set one."""
    from model.nextdit import NextDiT
    from worker.fast_path import probe_inputs

    tiny = NextDiT.from_pretrained(fixtures_dir / "nextdit_tiny").eval()
    if how == "pinned":
        use_backend("math")
    else:
        monkeypatch.setenv("ONEDIFFUSION_ATTENTION", "math")
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(tiny)(*probe_inputs(tiny, (32, 32, 1)))
    torch._dynamo.reset()
    assert explained.graph_break_count == 0, explained.break_reasons[:2]


def test_the_gateway_checks_the_setting_without_torch():
    """The built-in backends are declared by module name, so the settings' check imports no torch."""
    code = ("import sys; from core.settings import Settings; Settings(onediffusion_attention='flex'); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- output kinds ----------------------------------------------------------------------------------------
def outputs_of(kind: str, pictures: dict, **plan):
    from model.postprocess import Outputs, TaskResult, postprocessor
    from model.tasks import FramePlan

    frame_plan = FramePlan(task="test", prompt="", negative_prompt="", width=8, height=8, frames=[], num_inference_steps=1,
                           guidance_scale=1.0, seed=0, postprocess=kind, **plan)
    result = TaskResult()
    postprocessor(kind)(Outputs(frame_plan, pictures, torch.zeros(0), result))
    return result


def test_every_task_output_kind_is_registered():
    from model.postprocess import postprocess_kinds
    from model.tasks import TASKS

    kinds = {getattr(cls, "postprocess", "images") for cls in TASKS.values()} | {"poses"}
    assert kinds <= set(postprocess_kinds()), kinds - set(postprocess_kinds())


def test_a_toy_output_kind_is_one_registration():
    from model.postprocess import register_postprocessor, unregister_postprocessor

    @register_postprocessor("brightness")
    def brightness(out):
        out.result.data["brightness"] = {name: float(p.mean()) for name, p in out.pictures.items()}

    try:
        result = outputs_of("brightness", {"image": np.full((8, 8, 3), 200, np.uint8)})
        assert result.data == {"brightness": {"image": 200.0}} and result.files == []
    finally:
        unregister_postprocessor("brightness")


def test_built_in_output_kinds():
    picture = np.zeros((8, 8, 3), np.uint8)
    picture[2:6, 2:6] = (255, 0, 0)
    result = outputs_of("segmentation", {"segmentation": picture}, classes=[{"name": "a", "colour": "red"}])
    assert [(f.name, f.kind) for f in result.files] == [("segmentation.png", "image"), ("mask_0.png", "mask")]
    assert result.data["classes"][0]["pixels"] == 16
    result = outputs_of("depth", {"depth": picture})
    assert [(f.name, f.kind) for f in result.files] == [("depth.png", "depth16"), ("depth_preview.png", "preview")]
    result = outputs_of("detection", {"detection": picture}, classes=[{"name": "a", "colour": "red"}])
    assert result.data["classes"][0]["boxes"] == [[2, 2, 6, 6]]


def test_an_unknown_output_kind_lists_the_registered_ones():
    from model.postprocess import postprocessor

    with pytest.raises(ValueError, match="unknown output kind 'hologram'; registered: depth, detection, images, poses, segmentation"):
        postprocessor("hologram")


# ---- storage backends ------------------------------------------------------------------------------------
def test_a_toy_storage_backend_is_one_registration(tmp_path):
    from core.storage import LocalStore, open_store, register_store_backend, store_schemes, unregister_store_backend

    opened = []

    def open_mem(url: str, settings):
        opened.append(url)
        return LocalStore(tmp_path / url.split("://", 1)[1])

    register_store_backend("mem", open_mem)
    try:
        assert "mem" in store_schemes()
        store = open_store(Settings(storage_url="mem://box"))
        store.save("job1", "a.png", b"x")
        assert opened == ["mem://box"] and (tmp_path / "box" / "job1" / "a.png").read_bytes() == b"x"
    finally:
        unregister_store_backend("mem")


def test_an_unknown_storage_scheme_lists_the_registered_ones():
    from core.storage import check_storage_url

    with pytest.raises(ValueError, match=r"unknown storage scheme 'gs'; registered: file://, s3://"):
        check_storage_url("gs://bucket/prefix")
    with pytest.raises(SettingsError, match="unknown storage scheme 'gs'"):
        Settings.from_env({"STORAGE_URL": "gs://bucket/prefix"})


def test_local_folders_by_path_or_file_url(tmp_path):
    from core.storage import LocalStore, open_store

    assert open_store(Settings(results_dir=str(tmp_path))).root == tmp_path
    store = open_store(Settings(storage_url=f"file://{tmp_path}/out"))
    assert isinstance(store, LocalStore) and store.root == tmp_path / "out"
    with pytest.raises(SettingsError, match="file:///path/to/folder"):
        Settings.from_env({"STORAGE_URL": "file://"})


def test_boto3_loads_only_where_s3_is_opened():
    code = """
import sys
from core.settings import Settings
from core.storage import open_store
open_store(Settings(results_dir="var/x"))
Settings(storage_url="s3://some-bucket/prefix")  # validated without the backend
assert "boto3" not in sys.modules and "core.s3_store" not in sys.modules, "boto3 was imported"
"""
    subprocess.run([sys.executable, "-c", code], check=True)
