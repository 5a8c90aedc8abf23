"""The denoiser loads the reference checkpoint strictly and reproduces its golden outputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.nextdit import CheckpointError, NextDiT
from tests.model.golden import load_cases


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    return NextDiT.from_pretrained(fixtures_dir / "nextdit_tiny").eval()


@pytest.fixture(scope="module")
def cases(fixtures_dir):
    return load_cases(fixtures_dir / "nextdit_tiny" / "cases.safetensors")


@pytest.mark.parametrize("case", ["a", "b", "c"])
def test_reproduces_reference_outputs(tiny, cases, case):
    t, kwargs = cases[case]
    with torch.no_grad():
        out = tiny(t["samples"], t["timesteps"], t["encoder_hidden_states"], t["encoder_attention_mask"], **kwargs)
    assert out.shape == t["expected"].shape
    torch.testing.assert_close(out, t["expected"], atol=1e-4, rtol=0)


def test_soft_cap_is_what_makes_it_match(tiny, cases, monkeypatch):
    """Without the cap the outputs differ by more than the tolerance: the test can tell them apart."""
    import model.nextdit as nextdit
    from model.attention import attention_math

    monkeypatch.setattr(nextdit, "softcap_attention", lambda q, k, v: attention_math(q, k, v, cap=None))
    t, kwargs = cases["a"]
    with torch.no_grad():
        out = tiny(t["samples"], t["timesteps"], t["encoder_hidden_states"], t["encoder_attention_mask"], **kwargs)
    assert (out - t["expected"]).abs().max() > 1e-3


def test_per_frame_timesteps_equal_per_element(tiny, cases):
    """Case b gives a timestep per latent element, constant within each frame: the per-frame path
    (adaLN computed once per frame) must give the same result."""
    t, _ = cases["b"]
    per_frame = t["timesteps"][:, :, 0, 0, 0]
    assert torch.equal(t["timesteps"], per_frame[:, :, None, None, None].expand_as(t["timesteps"]))
    with torch.no_grad():
        out = tiny(t["samples"], per_frame, t["encoder_hidden_states"], t["encoder_attention_mask"])
    torch.testing.assert_close(out, t["expected"], atol=1e-4, rtol=0)


def test_fixture_config_carries_training_keys(fixtures_dir):
    """The strict load above succeeds although the config has keys the model does not take."""
    config = json.loads((fixtures_dir / "nextdit_tiny" / "config.json").read_text())
    assert {"decay", "forward_dtype", "remat_block"} <= set(config)


def test_tampered_checkpoint_fails_naming_the_tensor(fixtures_dir, tmp_path):
    folder = tmp_path / "transformer"
    shutil.copytree(fixtures_dir / "nextdit_tiny", folder)
    weights = load_file(folder / "diffusion_pytorch_model.safetensors")
    weights["layers.1.attention.wk_y.renamed"] = weights.pop("layers.1.attention.wk_y.weight")
    save_file(weights, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError) as err:
        NextDiT.from_pretrained(folder)
    message = str(err.value)
    assert str(folder) in message
    assert "layers.1.attention.wk_y.weight" in message and "layers.1.attention.wk_y.renamed" in message


def test_wrong_shape_fails(fixtures_dir, tmp_path):
    folder = tmp_path / "transformer"
    shutil.copytree(fixtures_dir / "nextdit_tiny", folder)
    weights = load_file(folder / "diffusion_pytorch_model.safetensors")
    weights["final_layer.linear.bias"] = torch.zeros(7)
    save_file(weights, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match="final_layer.linear.bias"):
        NextDiT.from_pretrained(folder)


def test_token_grid_past_rotary_range_is_refused(tiny):
    big = torch.zeros(1, 1, 16, 2 * 40, 8)  # 40 patch rows > rotary_max_length 32
    with pytest.raises(ValueError, match="rotary range"):
        tiny(big, torch.tensor([500.0]), torch.zeros(1, 4, 64), torch.ones(1, 4, dtype=torch.long))
