"""PRECISION=bf16|fp8 on the CPU: the setting, the layer filter, the fallbacks, and FP8's numerics on
the tiny NextDiT (torchao's float8 tensors compute on the CPU; only its hardware check refuses)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from core.settings import Settings, SettingsError
from model import precision
from model.nextdit import NextDiT

BLOCK_LINEARS = ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
                 "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


@pytest.fixture(scope="module")
def tiny_bf16(demo_checkpoint) -> NextDiT:
    return NextDiT.from_pretrained(demo_checkpoint / "transformer", torch_dtype=torch.bfloat16).eval().requires_grad_(False)


def inputs(model: NextDiT, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2, 16, 16, 16, generator=g).bfloat16()
    t = torch.rand(2, 2, generator=g) * 1000
    y = torch.randn(2, 12, model.config.caption_channels, generator=g).bfloat16()
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, 5:] = 0
    return x, t, y, mask


def plain_weights(model: torch.nn.Module) -> bool:
    return all(type(p) in (torch.Tensor, torch.nn.Parameter) for p in model.parameters())


# ---- the setting ---------------------------------------------------------------------------------------------


def test_precision_setting():
    assert Settings.from_env({}).precision == "bf16"
    assert Settings.from_env({"PRECISION": "FP8"}).precision == "fp8"
    with pytest.raises(SettingsError, match="PRECISION must be 'bf16' or 'fp8', got 'fp16'"):
        Settings.from_env({"PRECISION": "fp16"})


# ---- which layers ---------------------------------------------------------------------------------------------


def test_filter_selects_the_block_matrices_only(tiny_bf16):
    expected = [f"layers.{i}.{name}" for i in range(tiny_bf16.config.depth) for name in BLOCK_LINEARS]
    assert precision.fp8_layer_names(tiny_bf16) == expected
    every_linear = [n for n, m in tiny_bf16.named_modules() if isinstance(m, torch.nn.Linear)]
    assert precision.fp8_layer_names(tiny_bf16, keep=()) == every_linear  # all tiny dims are multiples of 16
    kept = set(every_linear) - set(expected)
    assert all(set(name.split(".")) & set(precision.KEEP_BF16) for name in kept)
    assert {"x_embedder", "final_layer.linear", "layers.0.adaLN_modulation.1", "layers.0.attention.wk_y"} <= kept
    assert not precision.converts_to_fp8(torch.nn.Linear(40, 32), "layers.0.feed_forward.w1")  # 40: no FP8 matmul


# ---- falling back --------------------------------------------------------------------------------------------


def test_cpu_worker_keeps_its_precision_and_says_why(tiny_bf16, caplog):
    model = copy.deepcopy(tiny_bf16)
    with caplog.at_level(logging.WARNING, logger="model.precision"):
        choice = precision.apply_precision(model, "fp8", torch.device("cpu"))
    assert (choice.requested, choice.effective) == ("fp8", "bf16")
    assert "CUDA device of compute capability >= 8.9" in choice.reason and "cpu" in choice.reason
    assert "PRECISION=fp8 was asked but this worker runs bf16" in caplog.text and choice.reason in caplog.text
    assert plain_weights(model)
    fp32 = copy.deepcopy(tiny_bf16).float()
    assert precision.apply_precision(fp32, "fp8", torch.device("cpu")).effective == "fp32"
    assert precision.apply_precision(fp32, "bf16", torch.device("cpu")) == precision.PrecisionChoice("bf16", "fp32")


@pytest.mark.parametrize("capability, card", [((8, 0), "A100"), ((8, 6), "A10 / RTX 3090"), ((7, 5), "T4")])
def test_card_without_fp8_is_refused(tiny_bf16, capability, card):
    model = copy.deepcopy(tiny_bf16)
    choice = precision.apply_precision(model, "fp8", torch.device("cuda"), capability=capability)
    assert choice.effective == "bf16", card
    assert f"has {capability[0]}.{capability[1]}" in choice.reason and ">= 8.9" in choice.reason
    assert plain_weights(model) and choice.fp8_layers == []


def test_capable_card_without_torchao_is_refused():
    reason = precision.fp8_unavailable(torch.device("cuda"), (9, 0), torchao_error="torchao is not importable (x)")
    assert reason == "torchao is not importable (x)"
    assert precision.fp8_unavailable(torch.device("cuda"), (8, 9)) == precision.torchao_missing()


def test_conversion_that_fails_its_start_up_check_falls_back(tiny_bf16):
    """Claiming an H100 here gets past our check; torchao's own conversion then refuses this machine,
    and the worker keeps bf16 with the model untouched."""
    pytest.importorskip("torchao")
    model = copy.deepcopy(tiny_bf16)
    x, t, y, mask = inputs(model)
    with torch.no_grad():
        before = model(x, t, y, mask)
        choice = precision.apply_precision(model, "fp8", torch.device("cuda"), capability=(9, 0))
        after = model(x, t, y, mask)
    assert choice.effective == "bf16"
    assert "start-up check" in choice.reason and "compute capability" in choice.reason
    assert plain_weights(model) and torch.equal(before, after)


def test_probe_rejects_a_broken_conversion(tiny_bf16):
    def broken(module, keep):  # a conversion that garbles the weights
        with torch.no_grad():
            for name in precision.fp8_layer_names(module, keep):
                module.get_submodule(name).weight.mul_(-3.0)
        return precision.fp8_layer_names(module, keep)

    model = copy.deepcopy(tiny_bf16)
    choice = precision.apply_precision(model, "fp8", torch.device("cuda"), capability=(9, 0), convert=broken)
    assert choice.effective == "bf16" and "off by" in choice.reason
    assert torch.equal(model.layers[0].attention.wq.weight, tiny_bf16.layers[0].attention.wq.weight)


# ---- FP8 numerics on the CPU -----------------------------------------------------------------------------------


def test_emulated_fp8_stays_close_to_bf16(tiny_bf16):
    """torchao's row-wise dynamic float8 tensors (what the config builds on an H100), built here without
    its hardware check: the velocity stays within a few percent of bf16."""
    pytest.importorskip("torchao")
    model = copy.deepcopy(tiny_bf16)
    x, t, y, mask = inputs(model)
    with torch.no_grad():
        fp32 = copy.deepcopy(tiny_bf16).float()(x.float(), t, y.float(), mask)
        bf16 = model(x, t, y, mask)
        choice = precision.apply_precision(model, "fp8", torch.device("cuda"), capability=(9, 0), convert=precision.emulate_fp8)
        fp8 = model(x, t, y, mask)
    assert choice.effective == "fp8" and choice.fp8_layers == precision.fp8_layer_names(tiny_bf16)
    converted = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not plain_weights(m)}
    assert converted == set(choice.fp8_layers)
    error = precision.relative_error(fp8, bf16)
    assert 1e-3 < error < 0.1, error  # FP8 changes the output, by e4m3 rounding (about 4%), not more
    assert precision.relative_error(bf16, fp32) < error  # bf16 is the closer of the two to float32


def test_torchao_weight_only_fp8_converts_the_filtered_layers_on_cpu(tiny_bf16):
    """The public `quantize_` route with the same filter; weight-only float8 is what torchao runs on a CPU."""
    pytest.importorskip("torchao")
    from torchao.quantization import Float8WeightOnlyConfig

    model = copy.deepcopy(tiny_bf16)
    x, t, y, mask = inputs(model)
    with torch.no_grad():
        bf16 = model(x, t, y, mask)
        converted = precision.convert_to_fp8(model, config=Float8WeightOnlyConfig())
        fp8 = model(x, t, y, mask)
    assert converted == precision.fp8_layer_names(tiny_bf16)
    assert 1e-3 < precision.relative_error(fp8, bf16) < 0.1


def test_zero_activation_rows_stay_zero():
    """Padded text tokens are zero rows; row-wise FP8 without a floor on the scale turns them into NaN,
    which masked attention spreads to every token. Our config and its emulation keep them zero."""
    pytest.importorskip("torchao")
    assert precision.fp8_config().activation_value_lb == precision.ACTIVATION_FLOOR > 0
    layer = torch.nn.Sequential(torch.nn.Linear(64, 32)).bfloat16()
    precision.emulate_fp8(layer, keep=())
    x = torch.randn(3, 64).bfloat16()
    x[1] = 0
    with torch.no_grad():
        out = layer(x)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], layer[0].bias.expand(32))
