"""Typed objects: what requests take (classes, cameras, frames, webhooks) and what jobs give back
(progress, outputs, boxes, masks, cameras, depth)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional

# ---- request parts ---------------------------------------------------------------------------------


@dataclass
class ClassSpec:
    """A class to segment or detect; `colour` is one of the service's 20 names (assigned when omitted)."""

    name: str
    colour: Optional[str] = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Camera:
    """A camera as azimuth / elevation (degrees) and distance, or a 4x4 OpenGL camera-to-world `c2w`."""

    azimuth: Optional[float] = None
    elevation: Optional[float] = None
    distance: Optional[float] = None
    c2w: Optional[list[list[float]]] = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Frame:
    """One frame of `generate(frames=...)`: an image or a camera, generated or given."""

    generate: bool
    kind: Literal["image", "camera"] = "image"
    image: Any = None  # a path, bytes, PIL image, URL or data URI for a given image frame
    camera: Optional[Camera] = None

    def to_json(self) -> dict:
        body: dict[str, Any] = {"kind": self.kind, "generate": self.generate}
        if self.image is not None:
            body["image"] = self.image
        if self.camera is not None:
            body["camera"] = self.camera.to_json() if isinstance(self.camera, Camera) else self.camera
        return body


@dataclass
class Webhook:
    """Where the service POSTs when a job (or batch item) ends; `secret` signs each call. `events`: any of
    "started", "progress" (throttled by the server) and "completed" (the server's default)."""

    url: str
    secret: Optional[str] = None
    events: Optional[list[str]] = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


# ---- job parts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    fraction: float

    @classmethod
    def from_json(cls, body: Optional[dict]) -> Optional["Progress"]:
        return cls(int(body["step"]), int(body["total"]), float(body["fraction"])) if body else None


@dataclass(frozen=True)
class Output:
    """One output file of a job; read it with `job.read(output)`, `job.image(output)` or `job.download()`."""

    name: str
    url: str
    signed_url: str
    kind: str  # image | depth16 | preview | mask
    media_type: str
    width: int
    height: int

    @classmethod
    def from_json(cls, body: dict) -> "Output":
        return cls(**{k: body[k] for k in ("name", "url", "signed_url", "kind", "media_type", "width", "height")})


@dataclass(frozen=True)
class JobError:
    type: str
    message: str


@dataclass(frozen=True)
class Box:
    """A detected box in output pixels."""

    x0: float
    y0: float
    x1: float
    y1: float


@dataclass(frozen=True)
class Detection:
    name: str
    colour: str
    boxes: list[Box]


@dataclass(frozen=True)
class Segment:
    """A segmented class: its mask file (an output of the job) and its pixel count."""

    name: str
    colour: str
    mask: str
    pixels: int


@dataclass(frozen=True)
class Intrinsics:
    fx: float
    fy: float
    cx: float
    cy: float


@dataclass(frozen=True)
class CameraPose:
    """A camera recovered by the model: 4x4 camera-to-world (OpenGL), relative to view 0."""

    view: int
    c2w: list[list[float]]
    intrinsics: Intrinsics
    predicted: bool

    @property
    def position(self) -> tuple[float, float, float]:
        return (self.c2w[0][3], self.c2w[1][3], self.c2w[2][3])


@dataclass(frozen=True)
class DepthInfo:
    format: str
    file: str


@dataclass(frozen=True)
class Event:
    """A server-sent event of a job: queued, started, progress or finished."""

    type: str
    data: dict = field(default_factory=dict)


def detections(data: dict) -> list[Detection]:
    return [Detection(c["name"], c["colour"], [Box(*b) for b in c.get("boxes", [])])
            for c in data.get("classes", []) if "boxes" in c]


def segments(data: dict) -> list[Segment]:
    return [Segment(c["name"], c["colour"], c["mask"], int(c.get("pixels", 0)))
            for c in data.get("classes", []) if "mask" in c]


def cameras(data: dict) -> list[CameraPose]:
    return [CameraPose(int(c["view"]), c["c2w"], Intrinsics(**c["intrinsics"]), bool(c.get("predicted", False)))
            for c in data.get("cameras", [])]


def depth(data: dict) -> Optional[DepthInfo]:
    info = data.get("depth")
    return DepthInfo(info["format"], info["file"]) if info else None
