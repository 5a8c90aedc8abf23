"""The plan a job is queued as: what the gateway decided once, for the worker to run as is.

The gateway validates a request and plans it (`TaskRequest.plan`) once; the worker must not do that work
again, and the queue must not carry the request's images. So what is queued is a `QueuedPlan`: the
`FramePlan`'s content (frames, size, prompts, seed, steps, guidance, cameras, classes, ...) with every
condition image replaced by the SHA-256 of its bytes in the result store (`BlobStore.save_input`), plus
the input echo the worker writes into its PNG outputs. Its size does not depend on the inputs' size.

A plan whose compressed JSON is over `INLINE_MAX_BYTES` (a prompt of more than a few hundred characters,
echoed in the input echo too; many images' digests) is stored itself, as a blob of the result store beside
the input images (`save_input`: content-addressed, kept RESULTS_TTL_S like them), and the job carries only
`{"plan_version": 1, "plan_digest": <its SHA-256>}` (`queued_payload`). Workers and the job view read it
back by digest (`resolve_payload`; immutable, so cached per process). The RQ job's record so stays the same
size whatever the length of the prompt; a short plan is queued by value as before, with no store round trip.

`plan_version` names the layout. A worker refuses a plan of a version it does not know with a message
that says so; the raw request dicts queued by releases before plans existed carry no `plan_version`
(see `is_queued_plan`). Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import threading
import zlib
from collections import OrderedDict
from typing import Annotated, Any, Callable, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model.tasks import Frame, FramePlan

PLAN_VERSION = 1
# The largest plan queued by value: its JSON, zlib-compressed (about what RQ's record holds of it, less ~100
# bytes of pickle). A text job with a short prompt is ~470, an image job ~590: both stay inline; with this
# bound a finished text job with a webhook keeps under 4 KB in Redis (benchmarks/RESULTS.md).
INLINE_MAX_BYTES = 640
STORED = "plan_digest"  # the key of a stored plan's reference
Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 (hex) of a blob in the result store")]


class PlanVersionError(ValueError):
    """A plan queued by a release whose plan layout this worker does not know."""


class PlannedFrame(BaseModel):
    """`model.tasks.Frame`: one frame, generated or given."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["image", "camera"]
    generate: bool
    name: str
    source: Optional[int] = Field(None, ge=0, description="index into `images` of a given image frame")
    camera: Optional[int] = Field(None, ge=0, description="index into `cameras` of a given camera frame")


class PlannedCamera(BaseModel):
    """A given camera as the request resolved it: azimuth/elevation/distance, or a 4x4 camera-to-world."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    azimuth: Optional[float] = None
    elevation: Optional[float] = None
    distance: float
    c2w: Optional[list[list[float]]] = None


class PlannedClass(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    colour: str


class QueuedPlan(BaseModel):
    """A job's `FramePlan` as queued: images by digest, everything else by value."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    plan_version: Literal[1] = PLAN_VERSION
    task: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    frames: list[PlannedFrame]
    num_inference_steps: int
    guidance_scale: float
    seed: int
    noise_scale: float = 1.0
    scale_factor: float = 1.0
    scale_watershed: float = 1.0
    images: list[Digest] = Field(default_factory=list, description="condition image files in FramePlan.images order")
    cameras: list[PlannedCamera] = Field(default_factory=list)
    focal_length: float
    postprocess: str = "images"
    classes: list[PlannedClass] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    input: dict[str, Any] = Field(
        default_factory=dict, description="The input echo (core.provenance.input_echo): written into PNG outputs"
    )

    # ---- gateway side ----
    @classmethod
    def of(cls, plan: FramePlan, save_input: Callable[[bytes], str], echo: Optional[dict] = None) -> "QueuedPlan":
        """The plan with its images stored through `save_input` (bytes -> digest)."""
        return cls(
            task=plan.task, prompt=plan.prompt, negative_prompt=plan.negative_prompt, width=plan.width,
            height=plan.height,
            frames=[PlannedFrame(kind=f.kind, generate=f.generate, name=f.name, source=f.source, camera=f.camera)
                    for f in plan.frames],
            num_inference_steps=plan.num_inference_steps, guidance_scale=plan.guidance_scale, seed=plan.seed,
            noise_scale=plan.noise_scale, scale_factor=plan.scale_factor, scale_watershed=plan.scale_watershed,
            images=[save_input(data) for data in plan.images],
            cameras=[PlannedCamera(**camera) for camera in plan.cameras],
            focal_length=plan.focal_length, postprocess=plan.postprocess,
            classes=[PlannedClass(**cls_) for cls_ in plan.classes], warnings=list(plan.warnings),
            input=echo or {},
        )

    def payload(self) -> dict:
        """The plan as plain JSON types (`num_inference_steps` at the top, as workers read it)."""
        return self.model_dump(mode="json")

    def queued_payload(self, save_input: Callable[[bytes], str]) -> dict:
        """What the RQ job carries: `payload()`, or when that is larger than INLINE_MAX_BYTES compressed, a
        reference to it stored through `save_input` (bytes -> digest)."""
        payload = self.payload()
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        if len(zlib.compress(text)) <= INLINE_MAX_BYTES:
            return payload
        digest = save_input(text)
        _STORED_PLANS.put(digest, text)  # the gateway's own view of the job needs no read back
        return {"plan_version": PLAN_VERSION, STORED: digest}

    @property
    def bucket(self) -> str:
        """`FramePlan.bucket`: jobs of one bucket can share a batch."""
        return self.frame_plan(lambda digest: b"").bucket

    # ---- worker side ----
    @classmethod
    def from_payload(cls, payload: dict) -> "QueuedPlan":
        version = payload.get("plan_version")
        if version != PLAN_VERSION:
            raise PlanVersionError(
                f"this job was queued as plan version {version!r} and this worker runs version {PLAN_VERSION}; "
                "run it on a worker of the release that queued it, or submit it again"
            )
        try:
            return cls.model_validate(payload)
        except ValidationError as exc:
            raise PlanVersionError(f"this job's queued plan does not have the version {PLAN_VERSION} layout: {exc}") from None

    def frame_plan(self, load_input: Callable[[str], bytes]) -> FramePlan:
        """The model's `FramePlan`, its images read through `load_input` (digest -> bytes)."""
        return FramePlan(
            task=self.task, prompt=self.prompt, negative_prompt=self.negative_prompt, width=self.width,
            height=self.height,
            frames=[Frame(f.kind, f.generate, f.name, source=f.source, camera=f.camera) for f in self.frames],
            num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale, seed=self.seed,
            noise_scale=self.noise_scale, scale_factor=self.scale_factor, scale_watershed=self.scale_watershed,
            images=[load_input(digest) for digest in self.images],
            cameras=[camera.model_dump() for camera in self.cameras],
            focal_length=self.focal_length, postprocess=self.postprocess,
            classes=[c.model_dump() for c in self.classes], warnings=list(self.warnings),
        )


def is_queued_plan(payload: Any) -> bool:
    """Whether a queued job's payload is a plan, by value or stored (else the raw request dict of an earlier
    release)."""
    return isinstance(payload, dict) and "plan_version" in payload


def is_stored_plan(payload: Any) -> bool:
    """Whether a queued job's payload is the reference to a plan in the result store (`queued_payload`)."""
    return is_queued_plan(payload) and STORED in payload


class StoredPlanUnreadable(ValueError):
    """A stored plan's blob is not the plan it should be (its bytes do not hash to its digest, or are not JSON)."""


class _PlanCache:
    """Stored plans' bytes by digest, the most recently used `size`: a digest names its bytes for ever."""

    def __init__(self, size: int = 512):
        self.size = size
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str) -> Optional[bytes]:
        with self._lock:
            data = self._items.get(digest)
            if data is not None:
                self._items.move_to_end(digest)
            return data

    def put(self, digest: str, data: bytes) -> None:
        with self._lock:
            self._items[digest] = data
            self._items.move_to_end(digest)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_STORED_PLANS = _PlanCache()


def resolve_payload(payload: Any, load_input: Callable[[str], bytes]) -> Any:
    """The plan a queued payload stands for: itself, or for a stored plan its blob read through `load_input`
    (digest -> bytes; its FileNotFoundError when the blob expired, StorageUnavailable when the store is
    down, pass through) and parsed; StoredPlanUnreadable when the blob is not that plan."""
    if not is_stored_plan(payload):
        return payload
    digest = payload[STORED]
    data = _STORED_PLANS.get(digest)
    if data is None:
        data = load_input(digest)
        if hashlib.sha256(data).hexdigest() != digest:
            raise StoredPlanUnreadable(f"the stored plan {digest} does not hash to its digest")
        _STORED_PLANS.put(digest, data)
    try:
        plan = json.loads(data)
    except ValueError:
        raise StoredPlanUnreadable(f"the stored plan {digest} is not JSON") from None
    if not isinstance(plan, dict):
        raise StoredPlanUnreadable(f"the stored plan {digest} is not a plan")
    return plan
