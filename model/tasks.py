"""Task requests and the frame plans they build (the frame layouts of docs/tasks.md). Torch-free.

Every task of OneDiffusion is a sequence of frames, each either generated (denoise mask 1) or given as a
condition (mask 0), plus a prompt that starts with the task's token. A request model here validates the
caller's input (types and ranges through pydantic; images, counts and sizes in `plan()`), and
`plan()` returns the `FramePlan` the worker turns into tensors. The gateway calls `plan()` too, so a
request is checked completely before it is queued.
"""

from __future__ import annotations

import math
import secrets
import unicodedata
import typing
from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal, Optional

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .images import ImageDecodeError, check_pixels, closest_size, decode_base64, png_bytes, read_header
from .outputs import COLOURS

NEGATIVE_PROMPT = (
    "monochrome, greyscale, low-res, bad anatomy, bad hands, text, error, missing fingers, extra digit, "
    "fewer digits, cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, "
    "username, blurry, artist name, poorly drawn, bad anatomy, wrong anatomy, extra limb, missing limb, "
    "floating limbs, disconnected limbs, mutation, mutated, ugly, disgusting, blurry, amputation"
)
DEFAULT_FOCAL_LENGTH = 1.3887
DEFAULT_DISTANCE = 1.5  # the reference's inference.py and Gradio demo use 1.5 for every view
INPAINT_FILL = (0, 0, 0)  # the reference's inpainting example feeds the image with its region blacked out
DEFAULT_STEPS = 50  # the reference's inference.py and most of its demo's examples


class TaskInputError(ValueError):
    """Input that passed the schema but cannot make a valid task. `field` names what to change."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class TaskLimits(BaseModel):
    """Bounds on what a request may ask for; the service fills them from its settings."""

    max_side: int = 2048  # the released model's rotary range is 128 patches of 16 px
    max_output_pixels: int = 2048 * 2048
    max_input_pixels: int = 40_000_000
    max_frames: int = 16
    max_views: int = 8
    max_prompt_chars: int = 4000
    max_steps: int = 200
    max_request_pixels: int = 100_000_000  # all input images of one request together, decoded
    max_job_cost: int = 4_000_000  # tokens per frame x frames x steps (see job_cost)


TOKEN_PIXELS = 16  # one denoiser token covers 16x16 output pixels (VAE /8, patch 2)
MAX_LIST_ITEMS = 64  # schema bound on any list of a request; settings bound frames and views further
MAX_IMAGE_CHARS = 100 * 1024 * 1024  # schema bound on one base64 image; MAX_BODY_BYTES bounds it further


def job_cost(width: int, height: int, frames: int, steps: int) -> int:
    """What a job asks of the denoiser, in token-steps: tokens per frame x frames x steps."""
    return (width // TOKEN_PIXELS) * (height // TOKEN_PIXELS) * frames * steps


def _no_bool(value):
    """JSON true/false are not numbers here (pydantic would read true as 1)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


def _visible(text: str) -> str:
    """The text without spaces, control and format characters (zero-width spaces and joiners, BOMs,
    direction marks): what a prompt says, as far as a person reading it can tell."""
    return "".join(c for c in text if not c.isspace() and unicodedata.category(c) not in ("Cc", "Cf", "Zs", "Zl", "Zp"))


def _not_blank(value):
    if isinstance(value, str) and value and not _visible(value):
        raise ValueError("must contain more than spaces (and invisible characters)")
    return value


# ---- the plan ---------------------------------------------------------------------------------------
@dataclass
class Frame:
    """One frame of a plan: an RGB image or a camera ray map, generated or given."""

    kind: Literal["image", "camera"]
    generate: bool
    name: str
    source: Optional[int] = None  # index into FramePlan.images for a given image frame
    camera: Optional[int] = None  # index into FramePlan.cameras for a given camera frame


@dataclass
class FramePlan:
    task: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    frames: list[Frame]
    num_inference_steps: int
    guidance_scale: float
    seed: int
    noise_scale: float = 1.0
    scale_factor: float = 1.0  # RoPE scaling of the denoiser (1.0: none)
    scale_watershed: float = 1.0
    images: list[bytes] = field(default_factory=list)  # condition image files as given (any size); preprocess.image_tensor sizes them
    cameras: list[dict] = field(default_factory=list)  # CameraPose fields of each given camera, in frame order
    focal_length: float = DEFAULT_FOCAL_LENGTH
    postprocess: str = "images"  # output kind: images, depth, segmentation, detection, poses (postprocess.py)
    classes: list[dict] = field(default_factory=list)  # {"name", "colour"} per class for segmentation / detection
    warnings: list[str] = field(default_factory=list)

    @property
    def denoise_mask(self) -> list[int]:
        return [int(f.generate) for f in self.frames]

    @property
    def rope_group(self) -> tuple:
        """Plans with the same group can share the denoiser's RoPE scaling: () without scaling. The
        denoiser picks linear or NTK scaling from the batch's largest timestep, so scaled plans also need
        the same schedule (noise scale and number of generated frames)."""
        if self.scale_factor == 1.0 and self.scale_watershed == 1.0:
            return ()
        return (self.scale_factor, self.scale_watershed, self.noise_scale, sum(self.denoise_mask))

    @property
    def bucket(self) -> str:
        """Jobs with the same bucket have the same token shape, step count and RoPE scaling and can share
        a batch."""
        base = f"{self.height}x{self.width}x{len(self.frames)}x{self.num_inference_steps}"
        return base + ("xrope" + "_".join(f"{v:g}" for v in self.rope_group) if self.rope_group else "")


# ---- request building blocks ------------------------------------------------------------------------
# A real 64x64 PNG (a yellow disc on blue), so that a documented example decodes and runs as sent.
EXAMPLE_IMAGE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAEAAAABAAQMAAACQp+OdAAAABlBMVEUoPFrmyFBL3iR1AAAAcklEQVR42s3QsQ3CMBSE"
    "4c/PSKRkBDYhbO4RGCEjuIwQiilMCgsKyvzV6e6e9HQcj3P9iNuGjCWlIkjMvdJaJZiYiP00uHAiuBJjNJNGp5MpSOU7+kdkzNx/dwptdBY2gsp"
    "rjFZWgicPgtZ/29cY9jkAb7FqFwcNkzldAAAAAElFTkSuQmCC"
)


class _ImageMark:
    """Marks the fields that hold an image, so that multipart bodies can declare them as files."""


IMAGE_MARK = _ImageMark()
ImageInput = Annotated[
    str,
    Field(
        description="An image as base64, a data URI, or (through the API) an http(s) URL the gateway fetches; PNG, JPEG or WebP.",
        examples=[EXAMPLE_IMAGE],
        min_length=1,
        max_length=MAX_IMAGE_CHARS,
    ),
    IMAGE_MARK,
]


def image_fields(model: type[BaseModel]) -> dict[str, bool]:
    """The model's image fields: name -> True for a list of images, False for one image."""
    def marked(annotation) -> bool:
        return IMAGE_MARK in getattr(annotation, "__metadata__", ())

    found = {}
    for name, info in model.model_fields.items():
        if IMAGE_MARK in info.metadata:
            found[name] = False
        else:
            args = [a for a in typing.get_args(info.annotation) if a is not type(None)]
            if typing.get_origin(info.annotation) is list and args and marked(args[0]):
                found[name] = True
            elif any(marked(a) for a in args):
                found[name] = False
    return found


class ClassSpec(BaseModel):
    """A class to segment or detect (or drawn in a map to generate from), and the colour that marks it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        min_length=1, max_length=100, examples=["dragon"], json_schema_extra={"pattern": r"^[^<>\[\]]*$"},
        description="The class's name; it goes into the prompt inside <...>, so it cannot contain <, >, [ or ]",
    )  # the pattern is documented; `_plain_name` checks it with a message that says what to change
    colour: Optional[str] = Field(
        None, max_length=32, description=f"one of: {', '.join(COLOURS)}; assigned in that order when omitted"
    )

    @field_validator("colour")
    @classmethod
    def _known_colour(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and value.lower() not in COLOURS:
            raise ValueError(f"unknown colour {value!r}; use one of: {', '.join(COLOURS)}")
        return value.lower() if value else value

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        _not_blank(value)
        if any(c in value for c in "<>[]"):
            raise ValueError("class names cannot contain <, >, [ or ]")
        return value


class CameraPose(BaseModel):
    """A camera as azimuth/elevation (degrees) and distance around the object, or as a 4x4
    camera-to-world matrix in the OpenGL convention (x right, y up, looking along -z)."""

    model_config = ConfigDict(extra="forbid")
    azimuth: Optional[float] = Field(None, ge=-360, le=360, examples=[30.0])
    elevation: Optional[float] = Field(None, ge=-90, le=90, examples=[0.0])
    distance: float = Field(DEFAULT_DISTANCE, gt=0, le=100)
    c2w: Optional[list[Annotated[list[float], Field(min_length=4, max_length=4)]]] = Field(
        None, min_length=4, max_length=4,
        description="4x4 camera-to-world matrix, rows first: a rotation and a translation (finite numbers)",
    )

    _numbers_not_bools = field_validator("azimuth", "elevation", "distance", mode="before")(_no_bool)

    @field_validator("c2w", mode="before")
    @classmethod
    def _c2w_numbers(cls, value):
        if isinstance(value, list):
            for row in value:
                for v in row if isinstance(row, list) else ():
                    if isinstance(v, bool):
                        raise ValueError("c2w holds numbers, not true or false")
        return value

    @field_validator("c2w")
    @classmethod
    def _c2w_finite(cls, value):
        if value is not None:
            for i, row in enumerate(value):
                for j, v in enumerate(row):
                    if not math.isfinite(v):
                        raise ValueError(f"c2w[{i}][{j}] is {v}; every entry must be a finite number")
        return value

    @model_validator(mode="after")
    def _one_form(self) -> "CameraPose":
        spherical = self.azimuth is not None or self.elevation is not None
        if self.c2w is not None:
            if spherical:
                raise ValueError("give either azimuth/elevation or c2w, not both")
            if len(self.c2w) != 4 or any(len(row) != 4 for row in self.c2w):
                raise ValueError("c2w must be a 4x4 matrix (a list of 4 rows of 4 numbers)")
            if [round(v, 6) for v in self.c2w[3]] != [0, 0, 0, 1]:
                raise ValueError("c2w's last row must be [0, 0, 0, 1]")
            rot = [row[:3] for row in self.c2w[:3]]
            for i in range(3):
                for j in range(3):
                    dot = sum(rot[k][i] * rot[k][j] for k in range(3))
                    if abs(dot - (1.0 if i == j else 0.0)) > 1e-3:
                        raise ValueError("c2w's upper-left 3x3 block must be a rotation (orthonormal columns)")
            det = (rot[0][0] * (rot[1][1] * rot[2][2] - rot[1][2] * rot[2][1])
                   - rot[0][1] * (rot[1][0] * rot[2][2] - rot[1][2] * rot[2][0])
                   + rot[0][2] * (rot[1][0] * rot[2][1] - rot[1][1] * rot[2][0]))
            if det < 0:
                raise ValueError("c2w's upper-left 3x3 block is a reflection (determinant -1); give a rotation")
            if any(abs(row[3]) > 100 for row in self.c2w[:3]):
                raise ValueError("c2w's translation must be within 100 units of the origin")
        elif self.azimuth is None or self.elevation is None:
            raise ValueError("give azimuth and elevation (and optionally distance), or a c2w matrix")
        return self


DEFAULT_CAMERAS = [CameraPose(azimuth=a, elevation=0.0) for a in (0.0, 30.0, 60.0, 90.0)]


# RoPE scaling of the denoiser: the reference's pipeline takes it for any task (its demo exposes it for multiview)
_SCALE_FACTOR = Field(
    1.0, ge=1.0, le=4.0, description="RoPE position scaling of the denoiser; 1.0 (the reference's default) is none. "
    "The reference's demo suggests 1.1 to 1.5 for more than three views",
)
_SCALE_WATERSHED = Field(
    1.0, ge=0.0, le=1000.0, description="Timestep (0-1000) below which the scaling is linear, above it NTK; "
    "1.0 is the reference's default, its demo suggests 100 to 400 with scale_factor",
)


class TaskRequest(BaseModel):
    """Options every task shares."""

    model_config = ConfigDict(extra="forbid")
    task_name: ClassVar[str]
    token: ClassVar[str] = ""
    needs_pixels: ClassVar[bool] = False  # condition_images works on the decoded inputs, not only the files

    negative_prompt: Optional[str] = Field(
        None, max_length=4000, description="What to steer away from; defaults to the prompt guide's list. '' for none (in a form, where an "
        "empty field means unset, the two characters \"\")"
    )
    width: Optional[int] = Field(None, ge=64, le=4096, multiple_of=16, description="Output width in pixels (multiple of 16)")
    height: Optional[int] = Field(None, ge=64, le=4096, multiple_of=16, description="Output height in pixels (multiple of 16)")
    num_inference_steps: int = Field(
        DEFAULT_STEPS, ge=1, le=200, description="Denoising steps; the default 50 is the reference's (inference.py, demo)"
    )
    guidance_scale: float = Field(4.0, ge=0.0, le=20.0, description="Classifier-free guidance; 1 or less turns it off")
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1, description="Fixes the noise; random when omitted")
    noise_scale: float = Field(
        1.0, gt=0.0, le=4.0,
        description="Scales the sequence length that shifts the noise schedule (above 1: more steps at high noise). "
        "Goes beyond the reference, whose text-to-image ignores it (its image-conditioned tasks apply it); "
        "1.0, the default, is the reference's behaviour everywhere",
    )
    scale_factor: float = _SCALE_FACTOR
    scale_watershed: float = _SCALE_WATERSHED

    _numbers_not_bools = field_validator(
        "width", "height", "num_inference_steps", "guidance_scale", "seed", "noise_scale", "focal_length",
        "scale_factor", "scale_watershed", mode="before", check_fields=False,
    )(_no_bool)
    _text_not_blank = field_validator("prompt", "item", "source_caption", check_fields=False)(_not_blank)

    # -- helpers for plan() --
    def _images(self) -> list[tuple[str, str]]:
        """(field name, data) of the input images, in frame order."""
        return []

    def _size(self, limits: TaskLimits, decoded: list, default: tuple[int, int]) -> tuple[int, int]:
        if (self.width is None) != (self.height is None):
            raise TaskInputError("width", "give both width and height, or neither")
        if self.width is not None:
            w, h = self.width, self.height
        elif decoded:
            h, w = closest_size(decoded[0].height, decoded[0].width)
        else:
            w, h = default
        if max(w, h) > limits.max_side:
            raise TaskInputError("width", f"{w}x{h} is larger than the {limits.max_side} px limit of a side")
        if w * h > limits.max_output_pixels:
            raise TaskInputError("width", f"{w}x{h} has more than the limit of {limits.max_output_pixels} pixels; ask for a smaller size")
        return w, h

    def _decode(self, limits: TaskLimits) -> tuple[list[bytes], list]:
        """The input files' bytes and, in `_images()` order, what `_size` and `condition_images` need of
        them: every image's header first (format, size, and the request's pixel budget), then its pixels,
        one image at a time within the process's decode budget. Only a task that uses the pixels
        (`needs_pixels`) keeps them; the others keep the upright size of an image that decoded soundly."""
        headers, total = [], 0
        for name, data in self._images():
            try:
                raw = decode_base64(data)
                info = read_header(raw, limits.max_input_pixels)
            except ImageDecodeError as exc:
                raise TaskInputError(name, f"the image {exc}") from None
            total += info.pixels
            if total > limits.max_request_pixels:
                raise TaskInputError(
                    name, f"the images of this request have more than {limits.max_request_pixels} pixels in all; "
                    "send smaller or fewer images",
                )
            headers.append((name, raw, info))
        files, decoded = [], []
        for name, raw, info in headers:
            try:
                decoded.append(check_pixels(raw, info, keep_pixels=self.needs_pixels))
            except ImageDecodeError as exc:
                raise TaskInputError(name, f"the image {exc}") from None
            files.append(raw)
        return files, decoded

    def _negative(self) -> str:
        return NEGATIVE_PROMPT if self.negative_prompt is None else self.negative_prompt

    def task_token(self) -> str:
        return self.token

    def _prompt(self, *parts: Optional[str]) -> str:
        return " ".join([self.task_token(), *[p.strip() for p in parts if p and p.strip()]])

    def _plan(self, limits: TaskLimits, frames: list[Frame], prompt: str, default_size=(512, 512), **extra) -> FramePlan:
        # counts and lengths first: they cost nothing, decoding images does
        if len(frames) > limits.max_frames:
            raise TaskInputError("frames", f"{len(frames)} frames is more than the limit of {limits.max_frames}")
        if self.num_inference_steps > limits.max_steps:
            raise TaskInputError("num_inference_steps", f"{self.num_inference_steps} steps is more than the limit of {limits.max_steps}")
        for name in ("prompt", "negative_prompt"):
            text = getattr(self, name, None)
            if text and len(text) > limits.max_prompt_chars:
                raise TaskInputError(name, f"{len(text)} characters is more than the limit of {limits.max_prompt_chars}; shorten it")
        if self.width is not None and self.height is not None:
            self._check_cost(limits, self.width, self.height, len(frames))
        files, decoded = self._decode(limits)
        w, h = self._size(limits, decoded, default_size)
        self._check_cost(limits, w, h, len(frames))
        plan = FramePlan(
            task=self.task_name,
            prompt=prompt,
            negative_prompt=self._negative(),
            width=w,
            height=h,
            frames=frames,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed if self.seed is not None else secrets.randbelow(2**31),
            noise_scale=self.noise_scale,
            scale_factor=self.scale_factor,
            scale_watershed=self.scale_watershed,
            images=self.condition_images(files, decoded),
            **extra,
        )
        return plan

    def _check_cost(self, limits: TaskLimits, width: int, height: int, frames: int) -> None:
        cost = job_cost(width, height, frames, self.num_inference_steps)
        if cost > limits.max_job_cost:
            raise TaskInputError(
                "num_inference_steps",
                f"{width}x{height} x {frames} frames x {self.num_inference_steps} steps is {cost} token-steps, more than "
                f"the limit of {limits.max_job_cost} (tokens are 16x16 pixels); ask for fewer steps, frames or pixels",
            )

    def condition_images(self, files: list[bytes], decoded: list[Image.Image]) -> list[bytes]:
        """The condition image files in frame order: the inputs as given (the worker crops and resizes
        them as the reference does); a task that combines its inputs (inpainting) returns a new file."""
        return files

    def plan(self, limits: TaskLimits = TaskLimits()) -> FramePlan:
        raise NotImplementedError


def _class_tokens(classes: list[ClassSpec], kind: str) -> tuple[str, list[dict]]:
    """`<#00FFFF cyan mask: dragon>` tokens, assigning free colours in table order where none is given."""
    taken = [c.colour for c in classes if c.colour]
    if len(taken) != len(set(taken)):
        raise TaskInputError("classes", "two classes use the same colour; give each class its own colour")
    free = [name for name in COLOURS if name not in taken]
    if len(classes) > len(COLOURS):
        raise TaskInputError("classes", f"at most {len(COLOURS)} classes (one per colour)")
    colours = [c.colour or free.pop(0) for c in classes]
    tokens = " ".join(
        f"<#{'%02X%02X%02X' % COLOURS[colour]} {colour} {kind}: {c.name}>" for c, colour in zip(classes, colours)
    )
    return tokens, [{"name": c.name, "colour": colour} for c, colour in zip(classes, colours)]


# ---- the tasks --------------------------------------------------------------------------------------
class TextToImage(TaskRequest):
    """Generate an image from text. Works best from 768 to 1280 px; 1024x1024 by default."""

    task_name: ClassVar[str] = "text-to-image"
    token: ClassVar[str] = "[[text2image]]"
    prompt: str = Field(min_length=1, max_length=4000, examples=["A lighthouse on a cliff at sunset, oil painting"])

    def plan(self, limits: TaskLimits = TaskLimits()) -> FramePlan:
        frames = [Frame("image", True, "image")]
        return self._plan(limits, frames, self._prompt(self.prompt), default_size=(1024, 1024))


class _FromCondition(TaskRequest):
    """Generate an image from a condition map: frames [image (generated), condition (given)], mask [1, 0]."""

    image: ImageInput = Field(description="The condition map")
    prompt: str = Field(min_length=1, max_length=4000, examples=["a photo of a cat on a table"])

    def _images(self):
        return [("image", self.image)]

    def _extra_tokens(self) -> str:
        return ""

    def plan(self, limits: TaskLimits = TaskLimits()) -> FramePlan:
        frames = [Frame("image", True, "image"), Frame("image", False, "condition", source=0)]
        return self._plan(limits, frames, self._prompt(self._extra_tokens(), self.prompt))


class DepthToImage(_FromCondition):
    task_name: ClassVar[str] = "depth-to-image"
    token: ClassVar[str] = "[[depth2image]]"


class CannyToImage(_FromCondition):
    task_name: ClassVar[str] = "canny-to-image"
    token: ClassVar[str] = "[[canny2image]]"


class HedToImage(_FromCondition):
    task_name: ClassVar[str] = "hed-to-image"
    token: ClassVar[str] = "[[hed2img]]"


class PoseToImage(_FromCondition):
    task_name: ClassVar[str] = "pose-to-image"
    token: ClassVar[str] = "[[pose2image]]"


class _NamedClasses(BaseModel):
    """`classes` named in the prompt as `<#RRGGBB colour kind: name>` tokens."""

    class_kind: ClassVar[str] = "mask"
    classes: list[ClassSpec] = Field(
        min_length=1, max_length=len(COLOURS), examples=[[{"name": "dragon", "colour": "cyan"}, {"name": "bird"}]]
    )

    def _tokens_and_classes(self) -> tuple[str, list[dict]]:
        return _class_tokens(self.classes, self.class_kind)

    def _extra_tokens(self) -> str:
        return self._tokens_and_classes()[0]


class SemanticMapToImage(_NamedClasses, _FromCondition):
    """The map paints each class in its colour; `classes` names them."""

    task_name: ClassVar[str] = "semantic-map-to-image"
    token: ClassVar[str] = "[[semanticmap2image]]"


class BoxesToImage(_NamedClasses, _FromCondition):
    """The map draws each object's box in its class colour; `classes` names them."""

    task_name: ClassVar[str] = "boxes-to-image"
    token: ClassVar[str] = "[[boundingbox2image]]"
    class_kind: ClassVar[str] = "boundingbox"


class _Estimation(TaskRequest):
    """Estimate a map from an image: frames [image (given), map (generated)], mask [0, 1]."""

    image: ImageInput
    prompt: Optional[str] = Field(None, max_length=4000, description="Optional caption of the image")
    output_name: ClassVar[str] = "map"
    postprocess: ClassVar[str] = "images"

    def _images(self):
        return [("image", self.image)]

    def _tokens_and_classes(self) -> tuple[str, list[dict]]:
        return "", []

    def plan(self, limits: TaskLimits = TaskLimits()) -> FramePlan:
        tokens, classes = self._tokens_and_classes()
        frames = [Frame("image", False, "image", source=0), Frame("image", True, self.output_name)]
        return self._plan(
            limits, frames, self._prompt(tokens, self.prompt), postprocess=self.postprocess, classes=classes
        )


class DepthEstimation(_Estimation):
    """Depth as a 16-bit PNG (bright = near) plus a colourised preview."""

    task_name: ClassVar[str] = "depth-estimation"
    token: ClassVar[str] = "[[depth2image]]"
    output_name: ClassVar[str] = "depth"
    postprocess: ClassVar[str] = "depth"


class EdgeEstimation(_Estimation):
    task_name: ClassVar[str] = "edge-estimation"
    edge_type: Literal["canny", "hed"] = Field("canny", description="Canny edges or soft HED edges")
    output_name: ClassVar[str] = "edges"

    def task_token(self) -> str:
        return "[[canny2image]]" if self.edge_type == "canny" else "[[hed2img]]"


class PoseEstimation(_Estimation):
    task_name: ClassVar[str] = "pose-estimation"
    token: ClassVar[str] = "[[pose2image]]"
    output_name: ClassVar[str] = "pose"


class Segmentation(_NamedClasses, _Estimation):
    """A colour map plus one mask per class."""

    task_name: ClassVar[str] = "segmentation"
    token: ClassVar[str] = "[[semanticmap2image]]"
    output_name: ClassVar[str] = "segmentation"
    postprocess: ClassVar[str] = "segmentation"


class Detection(_NamedClasses, _Estimation):
    """A map with boxes drawn in class colours plus the boxes as pixel coordinates per class."""

    task_name: ClassVar[str] = "detection"
    token: ClassVar[str] = "[[boundingbox2image]]"
    output_name: ClassVar[str] = "detection"
    postprocess: ClassVar[str] = "detection"
    class_kind: ClassVar[str] = "boundingbox"


class _Restoration(TaskRequest):
    """Frames [result (generated), input (given)], mask [1, 0]."""

    image: ImageInput
    prompt: Optional[str] = Field(None, max_length=4000, description="Optional caption of the image")

    def _images(self):
        return [("image", self.image)]

    def plan(self, limits: TaskLimits = TaskLimits()) -> FramePlan:
        frames = [Frame("image", True, "image"), Frame("image", False, "input", source=0)]
        return self._plan(limits, frames, self._prompt(self.prompt))


class Deblurring(_Restoration):
    task_name: ClassVar[str] = "deblurring"
    token: ClassVar[str] = "[[deblurring]]"


class Inpainting(_Restoration):
    """Fill the region marked in `mask` (white or any non-black pixel = fill)."""

    task_name: ClassVar[str] = "inpainting"
    token: ClassVar[str] = "[[image_inpainting]]"
    needs_pixels: ClassVar[bool] = True
    mask: ImageInput = Field(description="Same aspect as the image; non-black pixels mark the region to fill")

    def _images(self):
        return [("image", self.image), ("mask", self.mask)]

    def condition_images(self, files: list[bytes], decoded: list[Image.Image]) -> list[bytes]:
        """The image with the region to fill painted black (as the reference's inpainting example), at the
        image's own size; the mask is scaled to it."""
        image, mask = decoded
        region = mask.convert("L").resize(image.size, Image.Resampling.NEAREST).point(lambda v: 255 if v > 10 else 0)
        fill = Image.new("RGB", image.size, INPAINT_FILL)
        return [png_bytes(Image.composite(fill, image, region))]


class ImageEditing(_Restoration):
    """Edit an image following an instruction. Guidance 3 to 3.5 avoids over-saturation."""

    task_name: ClassVar[str] = "image-editing"
    token: ClassVar[str] = "[[image_editing]]"
    prompt: str = Field(min_length=1, max_length=4000, description="The instruction", examples=["make it winter"])
    guidance_scale: float = Field(3.2, ge=0.0, le=20.0, description="3.2, as the reference's editing example")
    num_inference_steps: int = Field(60, ge=1, le=200, description="Denoising steps; 60, as the reference's editing example")


class IdCustomization(TaskRequest):
    """A new image of the person in 1 to 3 reference photos. Frames [target, refs...], mask [1, 0, ...]."""

    task_name: ClassVar[str] = "id-customization"
    token: ClassVar[str] = "[[faceid]]"
    images: list[ImageInput] = Field(min_length=1, max_length=3, description="1 to 3 reference photos of one person")
    num_inference_steps: int = Field(
        75, ge=1, le=200, description="Denoising steps; 75, as the reference's ID customization examples (inference.py, demo)"
    )
    prompt: str = Field(min_length=1, max_length=4000, description="Caption of the image to make")
    reference_captions: Optional[list[Annotated[str, Field(max_length=4000)]]] = Field(
        None, max_length=3, description="A caption per reference photo (30 to 75 words work best)"
    )

    def _images(self):
        return [(f"images[{i}]", data) for i, data in enumerate(self.images)]

    def plan(self, limits: TaskLimits = TaskLimits()) -> FramePlan:
        captions = self.reference_captions or [""] * len(self.images)
        if len(captions) != len(self.images):
            raise TaskInputError(
                "reference_captions", f"give one caption per reference image ({len(self.images)}), got {len(captions)}"
            )
        parts = [f"[[img0]] {self.prompt.strip()}"] + [f"[[img{i}]] {c.strip()}".strip() for i, c in enumerate(captions, 1)]
        frames = [Frame("image", True, "image")] + [
            Frame("image", False, f"reference_{i}", source=i) for i in range(len(self.images))
        ]
        return self._plan(limits, frames, self._prompt(*parts))


class SubjectDriven(TaskRequest):
    """A new image of the subject of a photo. Frames [target, source], mask [1, 0]."""

    task_name: ClassVar[str] = "subject-driven"
    token: ClassVar[str] = "[[subject_driven]]"
    image: ImageInput
    item: str = Field(min_length=1, max_length=200, description="What the subject is", examples=["dog"])
    prompt: str = Field(min_length=1, max_length=4000, description="Caption of the image to make")
    source_caption: Optional[str] = Field(None, max_length=4000, description="Caption of the source photo")
    num_inference_steps: int = Field(70, ge=1, le=200, description="Denoising steps; 70, as the reference's subject-driven example")

    def _images(self):
        return [("image", self.image)]

    def plan(self, limits: TaskLimits = TaskLimits()) -> FramePlan:
        frames = [Frame("image", True, "image"), Frame("image", False, "source", source=0)]
        prompt = self._prompt(f"<item: {self.item.strip()}>", f"[[img0]] {self.prompt.strip()}", f"[[img1]] {self.source_caption or ''}".strip())
        return self._plan(limits, frames, prompt)


class _Multiview(TaskRequest):
    """Frames interleave [image_0, camera_0, image_1, camera_1, ...]; images and cameras must be square."""

    token: ClassVar[str] = "[[multiview]]"
    num_inference_steps: int = Field(60, ge=1, le=200, description="Denoising steps; 60, as the reference's multiview examples")
    focal_length: float = Field(DEFAULT_FOCAL_LENGTH, gt=0.1, le=10.0, description="Normalised focal length of every view")

    def _size(self, limits, decoded, default):
        w, h = super()._size(limits, decoded, default)
        if self.width is None and decoded:
            w = h = 512
        if w != h:
            raise TaskInputError("width", "multiview tasks need square images: set width equal to height")
        return w, h

    def _views(self, limits: TaskLimits, count: int, field_name: str) -> None:
        if count > limits.max_views:
            raise TaskInputError(field_name, f"{count} views is more than the limit of {limits.max_views}")

    def _multiview_plan(
        self, limits: TaskLimits, given_images: int, cameras: list[Optional[CameraPose]], prompt: Optional[str]
    ) -> FramePlan:
        frames: list[Frame] = []
        poses: list[dict] = []
        for i, camera in enumerate(cameras):
            frames.append(Frame("image", i >= given_images, f"view_{i}", source=i if i < given_images else None))
            if camera is None:
                frames.append(Frame("camera", True, f"camera_{i}"))
            else:
                frames.append(Frame("camera", False, f"camera_{i}", camera=len(poses)))
                poses.append(camera.model_dump())
        postprocess = "poses" if any(c is None for c in cameras) else "images"
        return self._plan(
            limits, frames, self._prompt(prompt), cameras=poses, focal_length=self.focal_length, postprocess=postprocess,
        )


class ImageToMultiview(_Multiview):
    """New views of the object in an image. `cameras[0]` is the input image's camera."""

    task_name: ClassVar[str] = "image-to-multiview"
    image: ImageInput
    prompt: Optional[str] = Field(None, max_length=4000, description="Optional caption (avoid describing the face)")
    cameras: list[CameraPose] = Field(
        default_factory=lambda: list(DEFAULT_CAMERAS), min_length=2, max_length=MAX_LIST_ITEMS,
        description="One camera per view, input view first",
    )

    def _images(self):
        return [("image", self.image)]

    def plan(self, limits: TaskLimits = TaskLimits()) -> FramePlan:
        self._views(limits, len(self.cameras), "cameras")
        return self._multiview_plan(limits, 1, list(self.cameras), self.prompt)


class TextToMultiview(_Multiview):
    task_name: ClassVar[str] = "text-to-multiview"
    prompt: str = Field(min_length=1, max_length=4000)
    cameras: list[CameraPose] = Field(default_factory=lambda: list(DEFAULT_CAMERAS), min_length=1, max_length=MAX_LIST_ITEMS)

    def plan(self, limits: TaskLimits = TaskLimits()) -> FramePlan:
        self._views(limits, len(self.cameras), "cameras")
        return self._multiview_plan(limits, 0, list(self.cameras), self.prompt)


IDENTITY_CAMERA = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]


class CameraPoseEstimation(_Multiview):
    """Camera poses of 2 or more photos of one scene: 4x4 camera-to-world matrices (OpenGL convention)
    relative to the first photo, with normalised intrinsics. As in the reference, the first photo's camera
    is given (the identity, the frame of reference) and the model generates the others' ray maps."""

    task_name: ClassVar[str] = "camera-pose-estimation"
    images: list[ImageInput] = Field(min_length=2, max_length=MAX_LIST_ITEMS, description="2 or more photos of one object or scene")
    prompt: Optional[str] = Field(None, max_length=4000)

    def _images(self):
        return [(f"images[{i}]", data) for i, data in enumerate(self.images)]

    def plan(self, limits: TaskLimits = TaskLimits()) -> FramePlan:
        self._views(limits, len(self.images), "images")
        cameras = [CameraPose(c2w=IDENTITY_CAMERA)] + [None] * (len(self.images) - 1)
        return self._multiview_plan(limits, len(self.images), cameras, self.prompt)


class RawFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["image", "camera"] = "image"
    generate: bool = Field(description="true: the model makes this frame; false: it is given")
    image: Optional[ImageInput] = Field(None, description="The image of a given image frame")
    camera: Optional[CameraPose] = Field(None, description="The pose of a given camera frame")


class Generate(TaskRequest):
    """Any frames, mask and prompt, for zero-shot combinations. The prompt is used as given (include the
    task token yourself, e.g. `[[depth2image]] ...`). Given camera frames are expressed relative to the
    first given camera."""

    task_name: ClassVar[str] = "generate"
    prompt: str = Field(min_length=1, max_length=4000, examples=["[[text2image]] a red bicycle"])
    frames: list[RawFrame] = Field(min_length=1, max_length=MAX_LIST_ITEMS, examples=[[{"kind": "image", "generate": True}]])
    focal_length: float = Field(DEFAULT_FOCAL_LENGTH, gt=0.1, le=10.0)

    def _images(self):
        return [(f"frames[{i}].image", f.image) for i, f in enumerate(self.frames) if f.kind == "image" and not f.generate]

    def plan(self, limits: TaskLimits = TaskLimits()) -> FramePlan:
        frames: list[Frame] = []
        poses: list[dict] = []
        n_images = 0
        for i, raw in enumerate(self.frames):
            if raw.kind == "image":
                if raw.camera is not None:
                    raise TaskInputError(f"frames[{i}].camera", "an image frame takes no camera")
                if raw.generate:
                    if raw.image is not None:
                        raise TaskInputError(f"frames[{i}].image", "a generated frame takes no image; set generate=false to give it")
                    frames.append(Frame("image", True, f"frame_{i}"))
                else:
                    if raw.image is None:
                        raise TaskInputError(f"frames[{i}].image", "a given image frame needs an image")
                    frames.append(Frame("image", False, f"frame_{i}", source=n_images))
                    n_images += 1
            else:
                if raw.image is not None:
                    raise TaskInputError(f"frames[{i}].image", "a camera frame takes no image")
                if raw.generate:
                    frames.append(Frame("camera", True, f"frame_{i}"))
                else:
                    if raw.camera is None:
                        raise TaskInputError(f"frames[{i}].camera", "a given camera frame needs a camera")
                    frames.append(Frame("camera", False, f"frame_{i}", camera=len(poses)))
                    poses.append(raw.camera.model_dump())
        has_camera = any(f.kind == "camera" for f in frames)
        plan = self._plan(limits, frames, self.prompt.strip(), cameras=poses, focal_length=self.focal_length,
                          postprocess="poses" if any(f.kind == "camera" and f.generate for f in frames) else "images")
        if has_camera and plan.width != plan.height:
            raise TaskInputError("width", "frames with cameras need square images: set width equal to height")
        if not any(f.generate for f in frames):
            raise TaskInputError("frames", "mark at least one frame with generate=true")
        return plan


TASKS: dict[str, type[TaskRequest]] = {
    cls.task_name: cls
    for cls in (
        TextToImage, DepthToImage, CannyToImage, HedToImage, PoseToImage, SemanticMapToImage, BoxesToImage,
        DepthEstimation, EdgeEstimation, PoseEstimation, Segmentation, Detection,
        Deblurring, Inpainting, ImageEditing, IdCustomization, SubjectDriven,
        ImageToMultiview, TextToMultiview, CameraPoseEstimation, Generate,
    )
}

