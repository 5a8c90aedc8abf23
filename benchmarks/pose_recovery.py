"""Camera recovery from noisy ray maps: how far the recovered poses and focal lengths are from the truth.

    python -m benchmarks.pose_recovery            # the table below, a few seconds on a CPU
    python -m benchmarks.pose_recovery --json f.json

The layout is camera-pose estimation's: camera 0 is given (the identity, the frame of reference) and the
other cameras' ray maps are "generated": here the true Plücker ray maps (64 x 64, as for 512 px images)
with Gaussian noise of standard deviation `noise` added to each of their six channels, and, in the
`+outliers` rows, 20 % of the rays replaced by random ones (a broken patch of a generated map). For each
noise level it prints, over the generated cameras of several rigs and seeds, the mean and worst rotation
error (degrees), translation direction error (degrees) and relative focal error.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from model.cameras import DEFAULT_FOCAL, c2w_from_spherical, plucker_rays, recover_cameras, relative_c2ws

NOISES = (0.0, 0.05, 0.1, 0.2)
SIZE = 64
OUTLIER_FRACTION = 0.2


def rigs() -> list[torch.Tensor]:
    """Orbits like the multiview defaults and a wider, irregular one (OpenGL c2ws, camera 0 first)."""
    def rig(views):
        return torch.stack([c2w_from_spherical(a, e, d) for a, e, d in views])

    return [
        rig([(0, 0, 1.5), (30, 0, 1.5), (60, 0, 1.5), (90, 0, 1.5)]),
        rig([(0, 10, 1.5), (45, 20, 1.5), (120, -10, 1.8), (200, 30, 1.2), (300, 5, 2.0)]),
    ]


def _angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12)
    return math.degrees(math.acos(float(cos.clamp(-1, 1))))


def _rotation_deg(Ra: torch.Tensor, Rb: torch.Tensor) -> float:
    cos = ((Ra.T @ Rb).trace() - 1) / 2
    return math.degrees(math.acos(float(cos.clamp(-1, 1))))


def corrupt(rays: torch.Tensor, noise: float, outliers: float, gen: torch.Generator) -> torch.Tensor:
    """Noise (and outliers) on every camera but camera 0, which the task gives."""
    out = rays.clone()
    gen_rays = out[1:]
    gen_rays += noise * torch.randn(gen_rays.shape, generator=gen, dtype=rays.dtype)
    if outliers:
        mask = torch.rand(gen_rays.shape[:-1], generator=gen) < outliers
        gen_rays[mask] = torch.randn((int(mask.sum()), 6), generator=gen, dtype=rays.dtype)
    return out


def errors(noise: float, outliers: float = 0.0, seeds: int = 3) -> dict:
    rot, trans, focal = [], [], []
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(seed)
        for c2ws in rigs():
            truth = relative_c2ws(c2ws)
            rays = corrupt(plucker_rays(c2ws, SIZE), noise, outliers, gen)
            recovered, K = recover_cameras(rays)
            for v in range(1, len(c2ws)):
                rot.append(_rotation_deg(recovered[v, :3, :3].double(), truth[v, :3, :3]))
                trans.append(_angle_deg(recovered[v, :3, 3].double(), truth[v, :3, 3]))
                f = (float(K[v, 0, 0]) + float(K[v, 1, 1])) / 2
                focal.append(abs(f - DEFAULT_FOCAL) / DEFAULT_FOCAL)
    return {
        "noise": noise, "outliers": outliers,
        "rotation_deg_mean": sum(rot) / len(rot), "rotation_deg_max": max(rot),
        "translation_dir_deg_mean": sum(trans) / len(trans), "translation_dir_deg_max": max(trans),
        "focal_rel_err_mean": sum(focal) / len(focal), "focal_rel_err_max": max(focal),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = [errors(n, 0.0, args.seeds) for n in NOISES] + [errors(n, OUTLIER_FRACTION, args.seeds) for n in (0.05, 0.2)]
    print(f"{'ray noise':>16} | {'rotation deg':>15} | {'transl. dir deg':>15} | {'focal rel. err':>15}")
    print(f"{'':>16} | {'mean    max':>15} | {'mean    max':>15} | {'mean    max':>15}")
    for r in rows:
        label = f"{r['noise']:.2f}" + (f" +{int(r['outliers'] * 100)}% outl." if r["outliers"] else "")
        print(
            f"{label:>16} | {r['rotation_deg_mean']:6.3f} {r['rotation_deg_max']:7.3f} | "
            f"{r['translation_dir_deg_mean']:6.3f} {r['translation_dir_deg_max']:7.3f} | "
            f"{r['focal_rel_err_mean']:6.4f} {r['focal_rel_err_max']:7.4f}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
