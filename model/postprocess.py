"""Output post-processors by kind: from a finished plan's decoded frames to the files and JSON a job stores.

Why a registry: every task names the kind of outputs it makes (`FramePlan.postprocess`: images, depth,
segmentation, detection, poses). Each kind is one function registered under its name, which the pipeline
looks up (`postprocessor`), so a new output kind is one function and one `@register_postprocessor`, and a
plan of an unknown kind fails with the list of known ones instead of silently storing plain images.

A post-processor gets an `Outputs` (the plan, its decoded pictures by frame name, every frame's final
latents) and fills its `TaskResult`: files with `add`, JSON with `result.data`. The readers of the model's
pictures (depth levels, class colours, boxes) are in `outputs.py`; camera recovery is in `cameras.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, TypeVar

import numpy as np
import torch

from . import outputs
from .cameras import camera_matrix, default_intrinsics, frame_to_rays, recover_cameras, relative_c2ws
from .tasks import FramePlan


@dataclass
class OutputFile:
    name: str
    data: bytes
    kind: str  # image | depth16 | preview | mask
    width: int
    height: int
    media_type: str = "image/png"


@dataclass
class TaskResult:
    files: list[OutputFile] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)


@dataclass
class Outputs:
    """What a post-processor works from, and the result it fills."""

    plan: FramePlan
    pictures: dict[str, np.ndarray]  # the generated image frames, decoded: frame name -> uint8 HxWx3
    latents: torch.Tensor  # every frame's final latents, in plan order (camera frames hold ray maps)
    result: TaskResult

    def add(self, name: str, data: bytes, kind: str, shape: tuple) -> None:
        """Store a file of `kind` (the `kind` of its output entry) made from an HxW(xC) array of `shape`."""
        self.result.files.append(OutputFile(name, data, kind, width=shape[1], height=shape[0]))


PostProcessor = Callable[[Outputs], None]
P = TypeVar("P", bound=PostProcessor)
_POSTPROCESSORS: dict[str, PostProcessor] = {}


def register_postprocessor(kind: str) -> Callable[[P], P]:
    """Decorator: the function that makes the outputs of plans whose `postprocess` is `kind` (registering a
    kind again replaces its function)."""

    def register(function: P) -> P:
        _POSTPROCESSORS[kind] = function
        return function

    return register


def unregister_postprocessor(kind: str) -> None:
    _POSTPROCESSORS.pop(kind, None)


def postprocess_kinds() -> tuple[str, ...]:
    return tuple(_POSTPROCESSORS)


def postprocessor(kind: str) -> PostProcessor:
    """The post-processor of `kind`; ValueError listing the registered kinds when there is none."""
    function = _POSTPROCESSORS.get(kind)
    if function is None:
        raise ValueError(f"unknown output kind {kind!r}; registered: {', '.join(sorted(_POSTPROCESSORS))}")
    return function


# ---- the kinds ---------------------------------------------------------------------------------------
@register_postprocessor("images")
def image_files(out: Outputs) -> None:
    """Every generated image frame as `<frame name>.png` (the other kinds, but depth, add to these)."""
    for name, picture in out.pictures.items():
        out.add(f"{name}.png", outputs.image_png(picture), "image", picture.shape)


@register_postprocessor("depth")
def depth_files(out: Outputs) -> None:
    """The depth frame as a 16-bit PNG and a coloured preview, instead of the grey picture."""
    depth16, preview = outputs.depth_outputs(out.pictures["depth"])
    out.add("depth.png", outputs.encode_png16(depth16), "depth16", depth16.shape)
    out.add("depth_preview.png", outputs.image_png(preview), "preview", preview.shape)
    out.result.data["depth"] = {"format": "16-bit PNG, 65535 = nearest", "file": "depth.png"}


@register_postprocessor("segmentation")
def segmentation_files(out: Outputs) -> None:
    """The pictures, and one mask PNG per requested class with its pixel count."""
    image_files(out)
    plan = out.plan
    masks = outputs.class_masks(out.pictures["segmentation"], [c["colour"] for c in plan.classes])
    classes = []
    for k, cls in enumerate(plan.classes):
        mask = masks[cls["colour"]]
        fname = f"mask_{k}.png"
        out.add(fname, outputs.mask_png(mask), "mask", mask.shape)
        classes.append({**cls, "mask": fname, "pixels": int(mask.sum())})
    out.result.data["classes"] = classes


@register_postprocessor("detection")
def detection_boxes(out: Outputs) -> None:
    """The pictures, and the boxes of each requested class as JSON."""
    image_files(out)
    plan = out.plan
    boxes = outputs.class_boxes(out.pictures["detection"], [c["colour"] for c in plan.classes])
    out.result.data["classes"] = [{**cls, "boxes": boxes[cls["colour"]]} for cls in plan.classes]


@register_postprocessor("poses")
def camera_poses(out: Outputs) -> None:
    """The pictures, and every camera frame's pose and intrinsics as JSON (given cameras as given)."""
    image_files(out)
    plan = out.plan
    cams = [k for k, f in enumerate(plan.frames) if f.kind == "camera"]
    rays = frame_to_rays(out.latents[cams].float().cpu())
    # ray maps are expressed in the first given camera's frame; with none given, in view 0's
    c2ws, intrinsics = recover_cameras(rays, relative=not plan.cameras)
    if plan.cameras:  # given cameras are reported exactly as given (relative to the first)
        given = relative_c2ws(torch.stack([camera_matrix(spec) for spec in plan.cameras])).float()
        for v, k in enumerate(cams):
            if not plan.frames[k].generate:
                c2ws[v] = given[plan.frames[k].camera]
                intrinsics[v] = default_intrinsics(1, plan.focal_length, torch.float32)[0]
    out.result.data["cameras"] = [
        {
            "view": v,
            "c2w": c2ws[v].tolist(),
            "intrinsics": {
                "fx": float(intrinsics[v, 0, 0]), "fy": float(intrinsics[v, 1, 1]),
                "cx": float(intrinsics[v, 0, 2]), "cy": float(intrinsics[v, 1, 2]),
            },
            "predicted": plan.frames[k].generate,
        }
        for v, k in enumerate(cams)
    ]
    out.result.data["convention"] = (
        "OpenGL camera-to-world (x right, y up, looking along -z), relative to the first given camera "
        "(view 0 for camera-pose-estimation; view 0 when no camera is given)"
    )
