"""Loading a checkpoint folder in the released diffusers layout onto a device and dtype.

    transformer/   NextDiT config.json + safetensors
    vae/           diffusers AutoencoderKL (16 latent channels)
    text_encoder/  transformers T5EncoderModel
    tokenizer/     T5 tokenizer (spiece.model + tokenizer_config.json, or tokenizer.json)
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


def _load_text_encoder(folder: Path, dtype: torch.dtype):
    from transformers import T5EncoderModel

    try:
        model, info = T5EncoderModel.from_pretrained(folder, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot load the text encoder from {folder}: {exc}") from exc
    _check_info(folder, {k: v for k, v in info.items() if k != "unexpected_keys"})
    if info.get("unexpected_keys"):
        log.warning("%s: ignoring tensors the T5 encoder does not use: %s", folder, info["unexpected_keys"])
    return model


def load_components(path: str | Path, device: Optional[str] = None, dtype: Optional[torch.dtype] = None) -> Components:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer

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
    try:
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the tokenizer from {root / 'tokenizer'}: {exc}") from exc
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
