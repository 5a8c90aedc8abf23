"""Loading a checkpoint folder in the released diffusers layout onto a device and dtype.

    transformer/   NextDiT config.json + safetensors
    vae/           diffusers AutoencoderKL (16 latent channels)
    text_encoder/  transformers T5EncoderModel
    tokenizer/     T5 tokenizer (spiece.model + tokenizer_config.json, or tokenizer.json); a folder whose
                   config does not name its class (the released one may not) is loaded as T5's
    scheduler/     FlowMatchEulerDiscreteScheduler config

Every component is loaded strictly: a missing folder, a missing or unexpected tensor, or a shape that
does not fit fails here with a message naming the folder and the tensors, never later in a job.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .nextdit import CheckpointError, NextDiT

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
log = logging.getLogger(__name__)


@dataclass
class Components:
    transformer: NextDiT
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler: object
    device: torch.device
    dtype: torch.dtype
    path: Path
    is_demo: bool = False


def default_device_and_dtype(device: Optional[str] = None) -> tuple[torch.device, torch.dtype]:
    """bf16 on CUDA, float32 on the CPU."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return dev, (torch.bfloat16 if dev.type == "cuda" else torch.float32)


def _check_info(folder: Path, info: dict) -> None:
    problems = [
        f"{key.replace('_', ' ')}: {', '.join(map(str, info[key]))}"
        for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
        if info.get(key)
    ]
    if problems:
        raise CheckpointError(f"{folder} does not match its model: " + "; ".join(problems))


def _load_vae(folder: Path, dtype: torch.dtype):
    from diffusers import AutoencoderKL

    try:
        vae, info = AutoencoderKL.from_pretrained(folder, torch_dtype=dtype, output_loading_info=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot load the VAE from {folder}: {exc}") from exc
    _check_info(folder, info)
    return vae


# transformers renamed `torch_dtype=` to `dtype=` in 4.56 (and later versions drop the old name); the
# project supports both sides of that release (see pyproject's floor and tests/model/test_loading.py).
DTYPE_KEYWORD_SINCE = (4, 56)


def transformers_version() -> tuple[int, int]:
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def dtype_keyword(version: Optional[tuple[int, int]] = None) -> str:
    """The keyword `from_pretrained` of the installed transformers takes the dtype by."""
    return "dtype" if (version or transformers_version()) >= DTYPE_KEYWORD_SINCE else "torch_dtype"


def _load_text_encoder(folder: Path, dtype: torch.dtype):
    from transformers import T5EncoderModel

    try:
        model, info = T5EncoderModel.from_pretrained(folder, **{dtype_keyword(): dtype}, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot load the text encoder from {folder}: {exc}") from exc
    _check_info(folder, {k: v for k, v in info.items() if k != "unexpected_keys"})
    if info.get("unexpected_keys"):
        log.warning("%s: ignoring tensors the T5 encoder does not use: %s", folder, info["unexpected_keys"])
    return model


def load_tokenizer(folder: Path):
    """The tokenizer of `folder`: the class its `tokenizer_config.json` names, through `AutoTokenizer`;
    T5's tokenizer when the config names none (AutoTokenizer would need a model config to tell) or when
    AutoTokenizer cannot load it."""
    from transformers import AutoTokenizer, T5TokenizerFast

    config_file = folder / "tokenizer_config.json"
    try:
        names_class = bool(json.loads(config_file.read_text()).get("tokenizer_class")) if config_file.is_file() else False
    except (OSError, ValueError):
        names_class = False
    auto_error: Optional[Exception] = None
    if names_class:
        try:
            return AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError, KeyError) as exc:
            auto_error = exc
    vocabularies = ("spiece.model", "tokenizer.json")
    if not any((folder / name).is_file() for name in vocabularies):
        detail = f" (AutoTokenizer: {auto_error})" if auto_error else ""
        raise CheckpointError(f"cannot load the tokenizer from {folder}: it has neither {' nor '.join(vocabularies)}{detail}")
    try:
        tokenizer = T5TokenizerFast.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        detail = f"; AutoTokenizer: {auto_error}" if auto_error else ""
        raise CheckpointError(f"cannot load the tokenizer from {folder} as T5's tokenizer: {exc}{detail}") from exc
    log.info("%s names no tokenizer class AutoTokenizer can load; loaded it as T5's tokenizer", folder)
    return tokenizer


def load_components(path: str | Path, device: Optional[str] = None, dtype: Optional[torch.dtype] = None) -> Components:
    from diffusers import FlowMatchEulerDiscreteScheduler

    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint folder {root} does not exist")
    missing = [name for name in COMPONENTS if not (root / name).is_dir()]
    if missing:
        raise CheckpointError(
            f"checkpoint folder {root} lacks {', '.join(m + '/' for m in missing)} "
            f"(the released layout has {', '.join(c + '/' for c in COMPONENTS)})"
        )
    dev, default_dtype = default_device_and_dtype(device)
    dtype = dtype or default_dtype

    transformer = NextDiT.from_pretrained(root / "transformer", torch_dtype=dtype)
    vae = _load_vae(root / "vae", dtype)
    text_encoder = _load_text_encoder(root / "text_encoder", dtype)
    tokenizer = load_tokenizer(root / "tokenizer")
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(root / "scheduler")

    latent_channels = vae.config.latent_channels
    if latent_channels != transformer.config.in_channels:
        raise CheckpointError(
            f"{root / 'vae'} has {latent_channels} latent channels but the transformer takes {transformer.config.in_channels}"
        )
    if text_encoder.config.d_model != transformer.config.caption_channels:
        raise CheckpointError(
            f"{root / 'text_encoder'} outputs {text_encoder.config.d_model} channels "
            f"but the transformer's caption_channels is {transformer.config.caption_channels}"
        )

    for module in (transformer, vae, text_encoder):
        module.to(dev).eval().requires_grad_(False)
    index = root / "model_index.json"
    is_demo = index.is_file() and bool(json.loads(index.read_text()).get("_onediffusion_demo"))
    return Components(transformer, vae, text_encoder, tokenizer, scheduler, dev, dtype, root, is_demo)
