"""Precision of the denoiser's linear layers: bf16, or FP8 through torchao's float8 inference.

FP8 here is torchao's `Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`: weights are
quantized to float8 e4m3 once, with one scale per output row; activations are quantized on the fly with
one scale per token row; the matrix product runs in FP8 (`torch._scaled_mm`) with bf16 output. It needs
a CUDA card of compute capability >= 8.9 (Ada, Hopper or newer) and torchao (the `fp8` extra). A worker
asked for FP8 on anything else keeps the precision it loaded in (bf16 on CUDA, fp32 on the CPU) and
says why (`fp8_unavailable`), and so does one whose conversion fails its start-up check
(`apply_precision`): jobs never fail for the precision.

Which layers are converted is `converts_to_fp8`: the big per-token matrices of every block (q, k, v, o,
the SwiGLU FFN), which carry almost all of the FLOPs. `KEEP_BF16` lists what stays in bf16; it is a
first choice, to be confirmed or narrowed by measurement on a GPU (`python -m benchmarks.fp8` reports
the velocity error with this list, with each listed kind converted in turn, and with every linear
layer converted).

torchao is imported lazily, so the service runs without it.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

PRECISIONS = ("bf16", "fp8")
FP8_MIN_CAPABILITY = (8, 9)
# A converted block whose output drifts further than this from bf16 on the start-up probe is broken
# (FP8 on random inputs gives a few percent), so the worker falls back to bf16.
PROBE_MAX_REL_ERROR = 0.25
# Floor of an activation row's absolute maximum when its FP8 scale is chosen. Without it an all-zero
# row (padded text tokens are zeros) gets scale 0 and comes out NaN, which masked attention then
# spreads to every token (0 * NaN). With it a zero row stays zero; other rows are unaffected.
ACTIVATION_FLOOR = 1e-12

# Module names (any component of a layer's dotted name) kept in bf16, and why. Candidates to be
# decided by measurement on a GPU: none of them carries a noticeable share of the FLOPs.
KEEP_BF16: dict[str, str] = {
    "x_embedder": "patch embedding: the first layer, its input is the raw latent (64 features)",
    "t_embedder": "timestep MLP: one row per frame, negligible FLOPs",
    "y_embedder": "pooled-caption projection: one row per sample",
    "adaLN_modulation": "scales and gates of every block: one row per frame, errors multiply every token",
    "final_layer": "the velocity itself: its error goes straight into the sampler's update",
    "wk_y": "text key projection: 300 text tokens, small next to the image tokens; padded rows are zeros",
    "wv_y": "text value projection: 300 text tokens, small next to the image tokens; padded rows are zeros",
}


@dataclass(frozen=True)
class PrecisionChoice:
    """What a worker was asked for (`PRECISION`), what its denoiser runs (fp8, or the dtype it was loaded
    in: bf16 on CUDA, fp32 on the CPU), and why FP8 was not used when it was asked for."""

    requested: str
    effective: str
    reason: str = ""
    fp8_layers: list[str] = field(default_factory=list)

    def as_info(self) -> dict[str, str]:
        """Flat string fields for the worker's readiness entry."""
        return {"precision": self.effective, "precision_requested": self.requested, "precision_reason": self.reason}


# ---- which layers ---------------------------------------------------------------------------------------


def converts_to_fp8(module: nn.Module, name: str, keep: Iterable[str] = tuple(KEEP_BF16)) -> bool:
    """The layer filter: a linear layer not under a `keep` name, whose two dimensions are multiples of
    16 (`torch._scaled_mm` needs that; torchao would skip the layer silently otherwise)."""
    if not isinstance(module, nn.Linear):
        return False
    if set(name.split(".")) & set(keep):
        return False
    out_features, in_features = module.weight.shape
    return out_features % 16 == 0 and in_features % 16 == 0


def layer_filter(keep: Iterable[str] = tuple(KEEP_BF16)) -> Callable[[nn.Module, str], bool]:
    keep = tuple(keep)
    return lambda module, name: converts_to_fp8(module, name, keep)


def fp8_layer_names(model: nn.Module, keep: Iterable[str] = tuple(KEEP_BF16)) -> list[str]:
    """Dotted names of the linear layers the filter selects."""
    keep = tuple(keep)
    return [name for name, module in model.named_modules() if converts_to_fp8(module, name, keep)]


# ---- can this worker run it -------------------------------------------------------------------------------


def torchao_missing() -> Optional[str]:
    """Why torchao's float8 inference cannot be imported, or None."""
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_  # noqa: F401
    except Exception as exc:  # ImportError, or a torchao built for another torch
        return f"torchao is not importable ({type(exc).__name__}: {exc}); install the 'fp8' extra"
    return None


def fp8_unavailable(
    device: torch.device, capability: Optional[tuple[int, int]] = None, torchao_error: Optional[str] = None
) -> Optional[str]:
    """Why FP8 cannot run on `device`, or None when it can.

    `capability` is the card's compute capability (asked from CUDA when not given, so tests can name
    any card); `torchao_error` defaults to `torchao_missing()`."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"FP8 needs a CUDA device of compute capability >= 8.9; this worker runs on {device.type}"
    card = str(device)
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
        card = f"{torch.cuda.get_device_name(device)} ({device})"
    if tuple(capability) < FP8_MIN_CAPABILITY:
        return (
            f"FP8 needs compute capability >= {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} (Ada, Hopper or newer); "
            f"{card} has {capability[0]}.{capability[1]}"
        )
    return torchao_error if torchao_error is not None else torchao_missing()


# ---- conversion ----------------------------------------------------------------------------------------------


def fp8_config():
    """torchao's float8 inference: dynamic row-wise scales for activations and weights (an all-zero
    activation row stays zero, see ACTIVATION_FLOOR)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    return Float8DynamicActivationFloat8WeightConfig(
        granularity=PerRow(), activation_value_lb=ACTIVATION_FLOOR,
        # torchao would otherwise switch on inductor's coordinate-descent tuning for the whole process:
        # longer compiles at start, and bf16 and fp8 workers compiled differently. Whether it pays off is
        # for `benchmarks/fp8.py --inductor-tuning` to show on a GPU.
        set_inductor_config=False,
    )


def _converted(model: nn.Module) -> list[str]:
    return [
        name for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and type(module.weight) not in (torch.Tensor, nn.Parameter)
    ]


def convert_to_fp8(model: nn.Module, keep: Iterable[str] = tuple(KEEP_BF16), config=None) -> list[str]:
    """Convert the selected linear layers of `model` in place with torchao's `quantize_` (`config`
    defaults to `fp8_config()`); returns the names of the converted layers."""
    from torchao.quantization import quantize_

    quantize_(model, config if config is not None else fp8_config(), filter_fn=layer_filter(keep))
    return _converted(model)


def emulate_fp8(model: nn.Module, keep: Iterable[str] = tuple(KEEP_BF16)) -> list[str]:
    """The same conversion without torchao's hardware check, for numerics on a CPU.

    `Float8DynamicActivationFloat8WeightConfig` refuses a device without FP8 matrix units, but the
    tensors it builds (torchao `Float8Tensor` weights with row-wise scales that quantize their
    activations row-wise on the fly) compute on the CPU too. This builds exactly those tensors, so a
    CPU run shows FP8's rounding; it says nothing about speed, and the GPU kernel's fast accumulation
    adds a little error this does not model. Weights must be bf16."""
    from torchao.quantization import Float8MMConfig, Float8Tensor, PerRow
    from torchao.quantization.quantize_.workflows import QuantizeTensorToFloat8Kwargs

    e4m3 = torch.float8_e4m3fn
    for name, module in list(model.named_modules()):
        if not converts_to_fp8(module, name, tuple(keep)):
            continue
        weight = Float8Tensor.from_hp(
            module.weight.detach(), float8_dtype=e4m3, granularity=PerRow(),
            mm_config=Float8MMConfig(use_fast_accum=True),
            act_quant_kwargs=QuantizeTensorToFloat8Kwargs(e4m3, PerRow(), hp_value_lb=ACTIVATION_FLOOR),
        )
        module.weight = nn.Parameter(weight, requires_grad=False)
    return _converted(model)


def dtype_name(dtype: torch.dtype) -> str:
    """bf16 / fp32 / fp16: what a worker that does not use FP8 runs in."""
    return {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}.get(dtype, str(dtype).replace("torch.", ""))


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    reference = reference.float()
    return float((value.float() - reference).norm() / reference.norm().clamp_min(1e-12))


@torch.no_grad()
def probe_block(model: nn.Module, keep: Iterable[str] = tuple(KEEP_BF16), convert=convert_to_fp8) -> float:
    """Convert a copy of the first transformer block and return the relative error of its residual
    update against bf16 on a small random input. Raises what the conversion or the forward raises."""
    block = model.layers[0]
    device = next(block.parameters()).device
    dtype = next(block.parameters()).dtype
    cfg = model.config
    generator = torch.Generator(device="cpu").manual_seed(0)
    tokens, frames = 256, 1  # 16x16 patches of one frame
    x = torch.randn(1, tokens, cfg.hidden_size, generator=generator).to(device, dtype)
    cond = torch.randn(1, frames, min(cfg.hidden_size, 1024), generator=generator).to(device, dtype)
    y = torch.randn(1, 32, cfg.caption_channels, generator=generator).to(device, dtype)
    y_mask = torch.ones(1, 32, dtype=torch.long, device=device)
    rope = model.rotary(frames, 16, 16, device)
    expected = block(x, cond, rope, y, y_mask) - x
    trial = copy.deepcopy(block)
    converted = convert(trial, keep)
    if not converted:
        raise RuntimeError("no layer of the block was converted")
    return relative_error(trial(x, cond, rope, y, y_mask) - x, expected)


def apply_precision(
    model: nn.Module,
    requested: str,
    device: torch.device,
    capability: Optional[tuple[int, int]] = None,
    keep: Iterable[str] = tuple(KEEP_BF16),
    convert=convert_to_fp8,
) -> PrecisionChoice:
    """Put the denoiser in the requested precision, or leave it as loaded (bf16 on CUDA, fp32 on the
    CPU) and say why.

    FP8 is used only when the device can (`fp8_unavailable`, `capability` as there), the weights are
    bf16, and a converted copy of one block passes the start-up probe; then the whole model is converted
    in place. Every fallback is logged as a warning with its reason."""
    if requested not in PRECISIONS:
        raise ValueError(f"PRECISION must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    dtype = next(model.parameters()).dtype
    plain = dtype_name(dtype)  # bf16 on CUDA, fp32 on the CPU
    if requested == "bf16":
        return PrecisionChoice("bf16", plain)
    keep = tuple(keep)
    reason = fp8_unavailable(device, capability)
    if reason is None and dtype != torch.bfloat16:
        reason = f"FP8 conversion starts from bf16 weights; the denoiser is {plain}"
    if reason is None:
        try:
            error = probe_block(model, keep, convert)
        except Exception as exc:
            reason = f"torchao's float8 conversion failed its start-up check ({type(exc).__name__}: {exc})"
        else:
            if not error <= PROBE_MAX_REL_ERROR:
                reason = f"a converted block is off by {error:.3g} (relative) from bf16, more than {PROBE_MAX_REL_ERROR}"
    if reason is not None:
        log.warning("PRECISION=fp8 was asked but this worker runs %s: %s", plain, reason)
        return PrecisionChoice("fp8", plain, reason)
    layers = convert(model, keep)
    log.info(
        "denoiser in FP8: %d linear layers converted (probe error %.3g); kept in bf16: %s",
        len(layers), error, ", ".join(keep),
    )
    return PrecisionChoice("fp8", "fp8", "", layers)
