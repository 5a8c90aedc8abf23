"""Estimation outputs: turn the model's RGB frames into depth maps, class masks and boxes.

The model answers depth, segmentation and detection tasks with pictures: a grey depth image
(bright = near), class regions painted in named colours on (near-)black, and rectangles drawn in
the class colour. This module reads those pictures back into values a program can use.

numpy and Pillow only (no torch): lightweight processes import it. The post-processors that turn a plan's
pictures into stored files and JSON with these readers, one per output kind, are in `postprocess.py`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# The colours the model knows, name -> (r, g, b), in the reference's order.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (0xFF, 0x00, 0x00),
    "lime": (0x00, 0xFF, 0x00),
    "blue": (0x00, 0x00, 0xFF),
    "yellow": (0xFF, 0xFF, 0x00),
    "magenta": (0xFF, 0x00, 0xFF),
    "cyan": (0x00, 0xFF, 0xFF),
    "orange": (0xFF, 0xA5, 0x00),
    "purple": (0x80, 0x00, 0x80),
    "brown": (0xA5, 0x2A, 0x2A),
    "green": (0x00, 0x80, 0x00),
    "pink": (0xFF, 0xC0, 0xCB),
    "teal": (0x00, 0x80, 0x80),
    "darkorange": (0xFF, 0x8C, 0x00),
    "blueviolet": (0x8A, 0x2B, 0xE2),
    "darkgreen": (0x00, 0x64, 0x00),
    "orangered": (0xFF, 0x45, 0x00),
    "navy": (0x00, 0x00, 0x80),
    "gold": (0xFF, 0xD7, 0x00),
    "turquoise": (0x40, 0xE0, 0xD0),
    "orchid": (0xDA, 0x70, 0xD6),
}

# ColorBrewer "Spectral" control colours, evenly spaced from 0 (dark red) to 1 (blue).
_SPECTRAL = np.array(
    [
        (158, 1, 66),
        (213, 62, 79),
        (244, 109, 67),
        (253, 174, 97),
        (254, 224, 139),
        (255, 255, 191),
        (230, 245, 152),
        (171, 221, 164),
        (102, 194, 165),
        (50, 136, 189),
        (94, 79, 162),
    ],
    dtype=np.float64,
)

_BLACK = (0, 0, 0)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    """The frame as a uint8 HxWx3 array; an alpha channel is dropped; anything else raises ValueError."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 RGB image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {arr.dtype}")
    return arr[..., :3]


def _check_mask(mask: np.ndarray) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"expected an HxW mask, got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# --- depth -----------------------------------------------------------------------------------


def spectral(values: np.ndarray) -> np.ndarray:
    """Colours (uint8, shape + (3,)) of values in [0, 1] on the Spectral map: 0 dark red, 1 blue."""
    x = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    stops = np.linspace(0.0, 1.0, len(_SPECTRAL))
    channels = [np.interp(x, stops, _SPECTRAL[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def depth_outputs(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(depth16, preview) from a grey depth frame (bright = near).

    depth16 is uint16 HxW: the frame's luma as Pillow's `convert("L")` gives it (ITU-R 601:
    0.299 R + 0.587 G + 0.114 B, Pillow's rounding), which is how the reference reads a depth frame,
    scaled so that 255 -> 65535. A noisy frame's channels differ, so a plain channel mean would be up to
    ~14 levels off the reference's reading.
    preview is uint8 HxWx3: the depth normalised by its own min/max (a constant frame
    normalises to zeros) and coloured as Spectral(1 - normalised), so near is red, far blue.
    """
    arr = _check_rgb(rgb)
    luma = np.asarray(Image.fromarray(np.ascontiguousarray(arr)).convert("L"))
    levels = np.arange(256, dtype=np.uint32) * 257
    depth16 = levels.astype(np.uint16)[luma]

    # Colour the (at most 256) distinct levels once, then look each pixel up.
    lo, hi = float(luma.min()), float(luma.max())
    norm = (np.arange(256) - lo) / (hi - lo) if hi > lo else np.zeros(256)
    return depth16, spectral(1.0 - norm)[luma]


def encode_png16(depth16: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG of an HxW uint16 depth map (values kept exactly)."""
    arr = np.asarray(depth16)
    if arr.ndim != 2 or arr.dtype.kind != "u" or arr.dtype.itemsize != 2:
        raise ValueError(f"expected an HxW uint16 array, got shape {arr.shape} dtype {arr.dtype}")
    # Pillow's "I;16" is little-endian uint16.
    arr = np.ascontiguousarray(arr, dtype="<u2")
    image = Image.fromarray(arr)
    if image.mode != "I;16":  # pragma: no cover - guards against a Pillow that maps uint16 elsewhere
        raise RuntimeError(f"Pillow made a {image.mode!r} image from uint16 data")
    return _png(image)


# --- segmentation ----------------------------------------------------------------------------


def _resolve_colours(classes: list[str]) -> dict[str, tuple[int, int, int]]:
    """Class name -> colour; names are matched case-insensitively; unknown ones raise ValueError."""
    if isinstance(classes, str):
        classes = [classes]
    resolved: dict[str, tuple[int, int, int]] = {}
    unknown = []
    for name in classes:
        key = str(name).strip().lower()
        if key in COLOURS:
            resolved[name] = COLOURS[key]
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"unknown colour name(s) {unknown!r}; allowed colours are: {', '.join(COLOURS)}"
        )
    return resolved


def class_masks(rgb: np.ndarray, classes: list[str], tolerance: float = 80.0) -> dict[str, np.ndarray]:
    """Boolean HxW mask per class colour name.

    Each pixel goes to the nearest (Euclidean RGB) of black and the requested colours, and
    counts for a class only when that colour is also within `tolerance` of the pixel.
    Ties go to black, then to the earlier colour in `classes`.
    """
    arr = _check_rgb(rgb)
    resolved = _resolve_colours(classes)
    palette = list(dict.fromkeys(resolved.values()))  # distinct requested colours, in order
    pixels = arr.astype(np.int32)

    dist2 = np.empty((len(palette) + 1,) + arr.shape[:2], dtype=np.int32)
    for i, colour in enumerate([_BLACK, *palette]):
        diff = pixels - np.asarray(colour, dtype=np.int32)
        np.einsum("hwc,hwc->hw", diff, diff, out=dist2[i])
    nearest = dist2.argmin(axis=0)
    cap = float(tolerance) ** 2

    by_colour = {
        colour: (nearest == i + 1) & (dist2[i + 1] <= cap) for i, colour in enumerate(palette)
    }
    return {name: by_colour[colour].copy() for name, colour in resolved.items()}


# --- detection -------------------------------------------------------------------------------


def _components(mask: np.ndarray, connectivity: int = 8) -> np.ndarray:
    """Connected components of a boolean mask as rows (x0, y0, x1, y1, area), ordered by (y0, x0).

    The mask is cut into horizontal runs; runs on adjacent rows that touch are joined with a
    vectorised union-find (hook roots onto smaller roots, then compress), so the cost grows
    with the number of runs rather than pixels visited in Python.
    """
    if connectivity not in (4, 8):
        raise ValueError("connectivity must be 4 or 8")
    m = _check_mask(mask)
    height, width = m.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = m
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)  # first column of each run
    _, ends = np.nonzero(edges == -1)  # last column + 1
    n = rows.size
    if n == 0:
        return np.zeros((0, 5), dtype=np.int64)

    # Runs are in raster order, so keys row * stride + column are sorted for starts and ends.
    stride = width + 2
    base = rows.astype(np.int64) * stride
    start_key = base + starts
    end_key = base + ends
    above = base - stride
    reach = 0 if connectivity == 8 else 1
    # Runs a on the row above touching run b: a.end >= b.start + reach and a.start <= b.end - reach.
    lo = np.searchsorted(end_key, above + starts + reach, side="left")
    hi = np.searchsorted(start_key, above + ends - reach, side="right")
    counts = np.maximum(hi - lo, 0)
    total = int(counts.sum())
    b = np.repeat(np.arange(n), counts)
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    a = np.repeat(lo, counts) + offsets

    parent = np.arange(n)
    while a.size:
        ra, rb = parent[a], parent[b]
        apart = ra != rb
        if not apart.any():
            break
        a, b, ra, rb = a[apart], b[apart], ra[apart], rb[apart]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:  # every run points straight at its root again
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand

    roots, label = np.unique(parent, return_inverse=True)
    k = roots.size
    x0 = np.full(k, width, dtype=np.int64)
    x1 = np.zeros(k, dtype=np.int64)
    y1 = np.zeros(k, dtype=np.int64)
    np.minimum.at(x0, label, starts)
    np.maximum.at(x1, label, ends)
    np.maximum.at(y1, label, rows + 1)
    y0 = rows[roots].astype(np.int64)  # a root is its component's first run in raster order
    area = np.bincount(label, weights=ends - starts, minlength=k).astype(np.int64)
    boxes = np.stack([x0, y0, x1, y1, area], axis=1)
    return boxes[np.lexsort((x0, y0))]


def class_boxes(
    rgb: np.ndarray, classes: list[str], tolerance: float = 80.0, min_area: int = 16
) -> dict[str, list[list[int]]]:
    """Boxes [x0, y0, x1, y1] (end-exclusive pixels) per class, one per 8-connected region.

    Regions come from `class_masks`; an outlined rectangle is one region whose box is the
    rectangle. Regions of fewer than `min_area` pixels are dropped. Boxes are sorted by (y0, x0).
    """
    masks = class_masks(rgb, classes, tolerance)
    result: dict[str, list[list[int]]] = {}
    for name, mask in masks.items():
        comps = _components(mask)
        kept = comps[comps[:, 4] >= min_area]
        result[name] = [[int(v) for v in row[:4]] for row in kept]
    return result


# --- encoding --------------------------------------------------------------------------------


def mask_png(mask: np.ndarray) -> bytes:
    """A mode "L" PNG of a boolean HxW mask: 255 inside, 0 outside."""
    m = _check_mask(mask)
    return _png(Image.fromarray(np.where(m, 255, 0).astype(np.uint8)))


def image_png(rgb: np.ndarray) -> bytes:
    """An RGB PNG of a uint8 HxWx3 frame."""
    return _png(Image.fromarray(np.ascontiguousarray(_check_rgb(rgb))))
