"""FP8 against bf16 for the denoiser, at the released size with random weights: speed and added error.

    python -m benchmarks.fp8 --json fp8.json          # on a card with FP8 (compute capability >= 8.9)
    python -m benchmarks.fp8 --tiny --device cpu      # toy size; FP8 emulated (numerics only, times meaningless)

It prints, and returns from `measure()` (for `benchmarks/gpu_check.py`):
- ms per guided step (one denoiser forward at batch 2 per prompt) of each reference workload (benchmarks/denoiser.py), bf16
  beside fp8 (both through torch.compile on CUDA);
- the relative error of fp8's velocity against bf16's at every step of a 50-step text-to-image 1024 run
  (both evaluated on the bf16 trajectory), with `model/precision.py`'s KEEP_BF16 list and, for
  comparison, with every linear layer in FP8, and with each listed layer kind converted in turn (these
  decide the list);
- the relative error of one converted block's residual update (what the worker's start-up probe checks),
  and how far the blocks move the residual stream with these weights (`block_update_ratio`: random
  weights move it little, which shrinks FP8's share of the velocity error);
- after 50 steps from the same seed: the relative error of fp8's final latents against bf16's, and the
  PSNR of the decoded images (a random-weight VAE of the released architecture);
- the wall time of the 50 fp8 steps and of the VAE decode (a 1024 image = those + ~34 ms of T5).

Random-weight errors check the code and the layer choice; they do not predict what the released weights
give (whose blocks move the residual stream far more than random ones: see `block_update_ratio`).
Check those with `python -m benchmarks.fp8_quality --checkpoint DIR`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from benchmarks import denoiser
from model import precision
from model.attention import select_backend
from model.sampler import FlowSampler, SampleRequest

GUIDANCE = 4.0
NOTE = ("random weights: these errors check the code and the layer choice; they do not predict real-weight quality "
        "(check that with benchmarks.fp8_quality)")


def scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )


def vae(tiny: bool, device, dtype):
    """A random-weight 16-channel AutoencoderKL: the released (SD3-style) architecture, or a toy one."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    if tiny:
        model = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=16, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 32, 32), layers_per_block=1,
            norm_num_groups=8, scaling_factor=1.5305, shift_factor=0.0609, mid_block_add_attention=False,
        )
    else:
        model = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=16, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
            scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
        )
    return nn.Module.to(model, device=device, dtype=dtype).eval().requires_grad_(False)


@torch.no_grad()
def decode(autoencoder, latents: torch.Tensor) -> np.ndarray:
    """Scaled latents (N, 16, h, w) -> uint8 (N, H, W, 3), as model/pipeline.py decodes."""
    pixels = autoencoder.decode((latents / autoencoder.config.scaling_factor).to(autoencoder.dtype)).sample
    pixels = (pixels.float() / 2 + 0.5).clamp(0, 1)
    return (pixels.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


class Paired(nn.Module):
    """Runs the reference model (whose output drives the sampler) and records how far each other model's
    output on the same input is from it, per call."""

    def __init__(self, reference: nn.Module, others: dict[str, nn.Module]):
        super().__init__()
        self.reference = reference
        self.others = others  # plain dict: not submodules, so parameters() is the reference's
        self.errors: dict[str, list[float]] = {name: [] for name in others}

    def forward(self, *args, **kwargs):
        v = self.reference(*args, **kwargs)
        for name, model in self.others.items():
            self.errors[name].append(precision.relative_error(model(*args, **kwargs), v))
        return v


@torch.no_grad()
def ablation(bf16: nn.Module, convert, w: denoiser.Workload, config: dict, device, timesteps=(900.0, 500.0, 100.0)) -> dict:
    """Velocity error (mean over `timesteps`) when each KEEP_BF16 candidate is converted too, one at a
    time: the measurement that settles the list. Eager, one converted copy at a time."""
    x, _, y, mask = denoiser.inputs(w, config, device, torch.bfloat16)
    inputs = [(x, torch.full(x.shape[:2], t, device=device), y, mask) for t in timesteps]
    expected = [bf16(*args) for args in inputs]

    def error(keep) -> float:
        model = copy.deepcopy(bf16)
        convert(model, keep=tuple(keep))
        values = [precision.relative_error(model(*args), ref) for args, ref in zip(inputs, expected)]
        del model
        return round(float(np.mean(values)), 5)

    base = error(precision.KEEP_BF16)
    out = {"kept_as_listed": base}
    for name in precision.KEEP_BF16:
        out[f"also_{name}"] = error(k for k in precision.KEEP_BF16 if k != name)
    return out


def summary(errors: Sequence[float]) -> dict:
    return {"per_step": [round(e, 5) for e in errors], "mean": round(float(np.mean(errors)), 5),
            "max": round(float(np.max(errors)), 5), "last": round(errors[-1], 5)}


def converter(device: torch.device):
    """(conversion function, its description): torchao's float8 on a card that has it, the CPU emulation
    on the CPU."""
    if device.type == "cpu":
        return precision.emulate_fp8, "emulated on the CPU (torchao Float8Tensor, row-wise; numerics only, times meaningless)"
    reason = precision.fp8_unavailable(device)
    if reason:
        raise SystemExit(f"cannot measure FP8 here: {reason}")
    return precision.convert_to_fp8, "torchao Float8DynamicActivationFloat8WeightConfig(PerRow)"


@torch.no_grad()
def block_update_ratio(model: nn.Module, x, t, y, mask) -> float:
    """|residual stream after the blocks - patch embedding| / |patch embedding|: how much the blocks (the
    FP8 part) move the stream with these weights. Random weights move it little, which shrinks FP8's
    share of the velocity error; read the velocity errors with this figure."""
    seen = {}
    hooks = [model.x_embedder.register_forward_hook(lambda m, i, o: seen.__setitem__("embedding", o.float())),
             model.final_layer.register_forward_hook(lambda m, i, o: seen.__setitem__("stream", i[0].float()))]
    try:
        model(x, t, y, mask)
    finally:
        for hook in hooks:
            hook.remove()
    return precision.relative_error(seen["stream"], seen["embedding"])


def measure(
    device: Optional[str] = None,
    tiny: bool = False,
    iters: int = 10,
    warmup: int = 3,
    steps: int = 50,
    compile: bool = True,
    workloads: Optional[Sequence[int]] = None,
    all_linears: bool = True,
    inductor_tuning: bool = False,
    ablate: bool = True,
) -> dict:
    """All figures as a dict; `workloads` picks reference workloads by index (default all four).
    `inductor_tuning` applies torchao's recommended inductor settings (coordinate-descent tuning) to
    both precisions, process-wide; the worker does not."""
    if inductor_tuning:
        from torchao.quantization.utils import recommended_inductor_config_setter

        recommended_inductor_config_setter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    dtype = torch.bfloat16
    config = denoiser.TINY if tiny else denoiser.RELEASED
    chosen = list(range(len(denoiser.WORKLOADS))) if workloads is None else list(workloads)
    scale = 8 if tiny else 1
    runs = [denoiser.Workload(w.name, w.frames, w.size // scale, w.prompts) for w in denoiser.WORKLOADS]

    bf16 = denoiser.build(config, device, dtype)
    convert, mode = converter(device)
    fp8 = copy.deepcopy(bf16)
    convert(fp8)
    backend = select_backend(device, dtype)
    card = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"device: {card}; FP8 {mode}; attention {backend}; kept in bf16: {', '.join(precision.KEEP_BF16)}")
    wrap = (lambda m: torch.compile(m, dynamic=False)) if cuda and compile else (lambda m: m)
    fast = {"bf16": wrap(bf16), "fp8": wrap(fp8)}

    figures: dict = {
        "device": card, "tiny": tiny, "fp8_mode": mode, "attention": backend, "compiled": cuda and compile,
        "inductor_tuning": inductor_tuning,
        "kept_bf16": list(precision.KEEP_BF16), "fp8_layers": len(precision.fp8_layer_names(bf16)), "note": NOTE,
        "workloads": [],
    }
    # init-independent: one converted block's residual update against bf16's (the start-up probe)
    figures["block_update_rel_error"] = round(precision.probe_block(bf16, convert=convert), 5)
    x, t, y, mask = denoiser.inputs(runs[0], config, device, dtype)
    figures["block_update_ratio"] = round(block_update_ratio(bf16, x, t, y, mask), 4)
    print(f"one block's update, fp8 vs bf16: rel. error {figures['block_update_rel_error']:.4f}; "
          f"the blocks move the residual stream by {figures['block_update_ratio']:.3f} of the embedding (random weights)")
    with torch.no_grad():
        for index in chosen:
            w = runs[index]
            x, t, y, mask = denoiser.inputs(w, config, device, dtype)
            row = {"workload": w.name}
            for name, model in fast.items():
                row[f"{name}_ms"] = round(denoiser.timed(lambda: model(x, t, y, mask), device, iters, warmup), 2)
            row["speedup"] = round(row["bf16_ms"] / row["fp8_ms"], 3)
            figures["workloads"].append(row)
            print(f"{w.name:38s} bf16 {row['bf16_ms']:9.2f} ms   fp8 {row['fp8_ms']:9.2f} ms   x{row['speedup']:.2f}", flush=True)

    if ablate:
        figures["velocity_rel_error_ablation"] = ablation(bf16, convert, runs[0], config, device)
        print("velocity rel. error with one more layer kind in FP8 (mean over t = 900, 500, 100):")
        for name, value in figures["velocity_rel_error_ablation"].items():
            print(f"  {name:28s} {value:.4f}")
    figures.update(trajectory(bf16, fast, convert, runs[0], config, device, steps, tiny, all_linears))
    return figures


def trajectory(bf16, fast: dict, convert, w: denoiser.Workload, config: dict, device, steps: int, tiny: bool, all_linears: bool) -> dict:
    """Per-step velocity errors on the bf16 trajectory, then the fp8 trajectory from the same seed."""
    others = {"fp8": fast["fp8"]}
    if all_linears:  # every linear in FP8 (eager: one more compile is not worth it for an error figure)
        every = copy.deepcopy(bf16)
        convert(every, keep=())
        others["fp8_all_linears"] = every
    g = torch.Generator(device="cpu").manual_seed(0)
    latent = w.size // 8
    request = SampleRequest(
        noise=torch.randn(w.frames, 16, latent, latent, generator=g),
        denoise_mask=[1] * w.frames,
        cond_embeds=torch.randn(denoiser.TEXT_TOKENS, config["caption_channels"], generator=g),
        cond_mask=torch.ones(denoiser.TEXT_TOKENS, dtype=torch.long),
        uncond_embeds=torch.randn(denoiser.TEXT_TOKENS, config["caption_channels"], generator=g),
        uncond_mask=torch.cat([torch.ones(40, dtype=torch.long), torch.zeros(denoiser.TEXT_TOKENS - 40, dtype=torch.long)]),
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
    )
    paired = Paired(fast["bf16"], others)
    reference = FlowSampler(paired, scheduler()).sample([request])[0].latents

    fp8_sampler = FlowSampler(fast["fp8"], scheduler())
    denoiser.sync(device)
    t0 = time.perf_counter()
    latents = fp8_sampler.sample([request])[0].latents
    denoiser.sync(device)
    denoise_s = time.perf_counter() - t0

    autoencoder = vae(tiny, device, torch.bfloat16)
    denoiser.sync(device)
    t0 = time.perf_counter()
    image_bf16 = decode(autoencoder, reference)
    denoiser.sync(device)
    decode_s = time.perf_counter() - t0
    image_fp8 = decode(autoencoder, latents)

    out = {
        "trajectory_workload": w.name, "steps": steps, "guidance": GUIDANCE,
        "velocity_rel_error": summary(paired.errors["fp8"]),
        "final_latents_rel_error": round(precision.relative_error(latents, reference), 5),
        "decoded_psnr_db": round(psnr(image_fp8, image_bf16), 2),
        "fp8_denoise_s": round(denoise_s, 3), "vae_decode_s": round(decode_s, 3),
        "fp8_image_s_without_text": round(denoise_s + decode_s, 3),
    }
    if "fp8_all_linears" in paired.errors:
        out["velocity_rel_error_all_linears"] = summary(paired.errors["fp8_all_linears"])
    v = out["velocity_rel_error"]
    print(f"velocity rel. error per step (fp8 vs bf16, {steps} steps): mean {v['mean']:.4f}, max {v['max']:.4f}, last {v['last']:.4f}")
    if "velocity_rel_error_all_linears" in out:
        a = out["velocity_rel_error_all_linears"]
        print(f"  with every linear layer in FP8:                   mean {a['mean']:.4f}, max {a['max']:.4f}, last {a['last']:.4f}")
    print(f"after {steps} steps: final latents rel. error {out['final_latents_rel_error']:.4f}; "
          f"decoded PSNR {out['decoded_psnr_db']:.2f} dB (random-weight VAE)")
    print(f"fp8 {steps} steps {denoise_s:.3f} s + VAE decode {decode_s:.3f} s = {denoise_s + decode_s:.3f} s per image (T5 not included)")
    print(NOTE)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="toy-size model and images (checks the code runs)")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--workloads", help="indexes of the reference workloads to time, e.g. '0,1' (default all)")
    parser.add_argument("--no-all-linears", action="store_true", help="skip the every-linear-in-FP8 comparison")
    parser.add_argument("--no-ablation", action="store_true", help="skip converting each KEEP_BF16 layer kind in turn")
    parser.add_argument("--inductor-tuning", action="store_true",
                        help="torchao's recommended inductor settings (coordinate-descent tuning) for both precisions")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    figures = measure(
        args.device, args.tiny, args.iters, args.warmup, args.steps, not args.no_compile,
        [int(i) for i in args.workloads.split(",")] if args.workloads else None, not args.no_all_linears,
        args.inductor_tuning, not args.no_ablation,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return figures


if __name__ == "__main__":
    main()
