"""Before switching a worker to PRECISION=fp8: render the same prompts and seeds in bf16 and in FP8 with
your checkpoint and compare the images.

    python -m benchmarks.fp8_quality --checkpoint /models/OneDiffusion --prompts "a red fox in snow" \\
        "a lighthouse on a cliff at sunset, oil painting" --seeds 0 1 2 --out fp8-check
    python -m benchmarks.fp8_quality --tiny --device cpu    # the demo checkpoint: checks the script runs

It runs text-to-image through the worker's own pipeline (model/pipeline.py), first with the denoiser in
bf16, then converted as a worker with PRECISION=fp8 converts it (model/precision.py, including its
start-up check), and prints per image the PSNR of the FP8 render against the bf16 one, the mean and
largest absolute pixel difference, the share of pixels off by more than 8 levels, and both images'
per-channel mean and standard deviation; `--out` keeps both renders side by side to look at.

On the CPU FP8 is emulated (torchao's float8 tensors, built without its hardware check): the numbers
show FP8's rounding, not what a GPU run takes. On a CUDA card without FP8 the script says so and
compares bf16 with a second bf16 render (which should be identical).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from model import precision
from model.loading import load_components
from model.pipeline import OneDiffusion
from model.tasks import TASKS

PROMPTS = ("a red fox in fresh snow, morning light", "a lighthouse on a cliff at sunset, oil painting")
OFF_LEVELS = 8


def render(model: OneDiffusion, prompts: Sequence[str], seeds: Sequence[int], size: int, steps: int, guidance: float) -> list[np.ndarray]:
    task = TASKS["text-to-image"]
    images = []
    for prompt in prompts:
        for seed in seeds:
            plan = task.model_validate(
                {"prompt": prompt, "seed": seed, "width": size, "height": size, "num_inference_steps": steps,
                 "guidance_scale": guidance}
            ).plan()
            (result,) = model.run([plan])
            if isinstance(result, BaseException):
                raise result
            images.append(np.asarray(Image.open(io.BytesIO(result.files[0].data)).convert("RGB")))
    return images


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """Pixel statistics of image `b` against `a` (uint8 HxWx3)."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    return {
        "psnr_db": math.inf if mse == 0 else round(10 * math.log10(255.0**2 / mse), 2),
        "mean_abs_diff": round(float(diff.mean()), 3),
        "max_abs_diff": int(diff.max()),
        f"share_off_by_more_than_{OFF_LEVELS}": round(float((diff.max(axis=-1) > OFF_LEVELS).mean()), 5),
        "bf16_channel_mean": [round(float(v), 2) for v in a.reshape(-1, 3).mean(0)],
        "fp8_channel_mean": [round(float(v), 2) for v in b.reshape(-1, 3).mean(0)],
        "bf16_channel_std": [round(float(v), 2) for v in a.reshape(-1, 3).std(0)],
        "fp8_channel_std": [round(float(v), 2) for v in b.reshape(-1, 3).std(0)],
    }


def to_fp8(model: OneDiffusion) -> tuple[str, str]:
    """Convert the loaded denoiser as a PRECISION=fp8 worker would; (what the second render is, why)."""
    transformer = model.components.transformer
    device = model.device
    if device.type == "cpu":
        precision.emulate_fp8(transformer)
        return "fp8", "emulated on the CPU: torchao's float8 tensors without its hardware check (numerics only)"
    choice = precision.apply_precision(transformer, "fp8", device)
    if choice.effective == "fp8":
        return "fp8", f"torchao float8, {len(choice.fp8_layers)} linear layers"
    return "bf16", f"FP8 unavailable here ({choice.reason}); the second render is bf16 again"


def check(
    checkpoint: str, prompts: Sequence[str], seeds: Sequence[int], size: int, steps: int, guidance: float,
    device: Optional[str] = None, out: Optional[str] = None,
) -> dict:
    model = OneDiffusion(load_components(checkpoint, device, torch.bfloat16))
    print(f"checkpoint {checkpoint}; device {model.device}; {len(prompts)} prompts x {len(seeds)} seeds at {size}x{size}, {steps} steps")
    bf16 = render(model, prompts, seeds, size, steps, guidance)
    second, how = to_fp8(model)
    print(f"second render: {second} ({how})")
    other = render(model, prompts, seeds, size, steps, guidance)
    rows = []
    pairs = [(p, s) for p in prompts for s in seeds]
    for k, ((prompt, seed), a, b) in enumerate(zip(pairs, bf16, other)):
        row = {"prompt": prompt, "seed": seed, **compare(a, b)}
        rows.append(row)
        print(f"[{k}] seed {seed:<4d} PSNR {row['psnr_db']:>7} dB  mean |d| {row['mean_abs_diff']:6.3f}  max |d| {row['max_abs_diff']:3d}  "
              f">{OFF_LEVELS} levels {row[f'share_off_by_more_than_{OFF_LEVELS}']:.2%}  {prompt[:50]!r}")
        if out:
            folder = Path(out)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.concatenate([a, b], axis=1)).save(folder / f"{k:03d}_seed{seed}_bf16_left_{second}_right.png")
    finite = [r["psnr_db"] for r in rows if r["psnr_db"] != math.inf]
    report = {
        "checkpoint": str(checkpoint), "device": str(model.device), "second_render": second, "how": how,
        "size": size, "steps": steps, "guidance": guidance, "images": rows,
        "min_psnr_db": min(finite) if finite else math.inf,
        "mean_psnr_db": round(float(np.mean(finite)), 2) if finite else math.inf,
    }
    print(f"PSNR of {second} against bf16: lowest {report['min_psnr_db']} dB, mean {report['mean_psnr_db']} dB over {len(rows)} images")
    if out:
        print(f"side-by-side renders (bf16 left, {second} right) in {out}: look at the lowest-PSNR ones before switching")
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="checkpoint folder in the released layout")
    parser.add_argument("--tiny", action="store_true", help="use the tiny demo checkpoint (made in a temporary folder)")
    parser.add_argument("--prompts", nargs="+", default=list(PROMPTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--size", type=int, help="square side in pixels (default 1024; 128 with --tiny)")
    parser.add_argument("--steps", type=int, help="default 50; 4 with --tiny")
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--device", help="default: cuda when present, else cpu")
    parser.add_argument("--out", help="folder for side-by-side renders")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if not args.checkpoint and not args.tiny:
        parser.error("give --checkpoint DIR (the released weights), or --tiny for the demo checkpoint")
    size = args.size or (128 if args.tiny else 1024)
    steps = args.steps or (4 if args.tiny else 50)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from model.demo_checkpoint import make_demo_checkpoint

            checkpoint = str(make_demo_checkpoint(Path(tmp) / "demo"))
        report = check(checkpoint, args.prompts, args.seeds, size, steps, args.guidance, args.device, args.out)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
