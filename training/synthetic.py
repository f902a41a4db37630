"""Synthetic shapes benchmark: cluttered RGB images of five shape classes with exact amodal boxes,
written as COCO-format splits `<out>/<split>/images/*.png` and `<out>/<split>/annotations.json`.

Every image is drawn from its own random generator, seeded by `scene_rng(seed, split, index)`,
so a seed gives byte-identical files and image `i` does not depend on how many images follow it.
Pixel (row i, column j) covers [j, j + 1] x [i, i + 1] in box coordinates.
"""

from __future__ import annotations

import colorsys
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from iounet.files import Output, check_output, check_writable
from iounet.staging import fingerprint

CLASS_NAMES = ("ellipse", "rectangle", "triangle", "star", "ring")
ELLIPSE, RECTANGLE, TRIANGLE, STAR, RING = range(len(CLASS_NAMES))
# Each class mostly wears its own texture (TEXTURES[label]) and sometimes any other one.
TEXTURES = ("gradient", "stripes", "flat", "checker", "speckle")
SPLITS = ("train", "val")
#: The annotation files' info.description: how --force recognises a data set written here.
DESCRIPTION = "iounet synthetic shapes"

MIN_IMAGE_SIZE = 32
MAX_OBJECTS = 8
EMPTY_IMAGE_PROBABILITY = 0.04
MIN_OBJECT_SIZE = 8.0  # pixels, geometric mean of the box's width and height
MAX_OBJECT_FRACTION = 0.6  # of the image side, same measure
MAX_ASPECT = 3.0  # of boxes, either way
MAX_STAR_STRETCH = 1.6  # stars are stretched less, so that their tips stay blunt
MIN_VISIBLE_FRACTION = 0.4  # objects are at most 60 % occluded
PLACEMENT_TRIES = 10
OWN_TEXTURE_PROBABILITY = 0.65
OWN_HUE_PROBABILITY = 0.7
LOW_CONTRAST_PROBABILITY = 0.12
SHARP_EDGE_PROBABILITY = 0.35
MAX_EDGE_SIGMA = 1.2  # pixels, Gaussian blur of an object's edge
SUPERSAMPLING = 4  # samples per pixel side when measuring an object's pixel coverage


@dataclass(frozen=True, eq=False)
class Shape:
    """An object's outline in image pixels: a polygon, or an ellipse (a ring when `hole` > 0)."""

    label: int
    polygon: np.ndarray | None = None  # (P, 2) vertices x, y
    ellipse: tuple[float, float, float, float, float] | None = None  # cx, cy, a, b, angle
    hole: float = 0.0  # a ring's inner radii over its outer radii

    def box(self) -> tuple[float, float, float, float]:
        """Return the exact extent (x0, y0, x1, y1) of the outline."""
        if self.polygon is not None:
            (x0, y0), (x1, y1) = self.polygon.min(axis=0), self.polygon.max(axis=0)
            return float(x0), float(y0), float(x1), float(y1)
        cx, cy, a, b, angle = self.ellipse
        cos, sin = math.cos(angle), math.sin(angle)
        half_w = math.sqrt((a * cos) ** 2 + (b * sin) ** 2)
        half_h = math.sqrt((a * sin) ** 2 + (b * cos) ** 2)
        return cx - half_w, cy - half_h, cx + half_w, cy + half_h

    def transformed(self, factor: float, dx: float, dy: float) -> Shape:
        """Return the shape scaled by `factor` about the origin, then moved by (dx, dy)."""
        if self.polygon is not None:
            return Shape(self.label, polygon=self.polygon * factor + (dx, dy))
        cx, cy, a, b, angle = self.ellipse
        ellipse = (cx * factor + dx, cy * factor + dy, a * factor, b * factor, angle)
        return Shape(self.label, ellipse=ellipse, hole=self.hole)

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Return whether the points (x, y), broadcast against each other, lie inside."""
        if self.polygon is not None:
            inside = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=bool)
            for (xa, ya), (xb, yb) in zip(
                self.polygon, np.roll(self.polygon, -1, axis=0), strict=True
            ):
                if ya != yb:  # even-odd rule: count edges crossed by a ray towards -x
                    crosses = (ya > y) != (yb > y)
                    inside ^= crosses & (x < xa + (y - ya) * (xb - xa) / (yb - ya))
            return inside
        cx, cy, a, b, angle = self.ellipse
        cos, sin = math.cos(angle), math.sin(angle)
        u = (x - cx) * cos + (y - cy) * sin
        v = (y - cy) * cos - (x - cx) * sin
        radius2 = (u / a) ** 2 + (v / b) ** 2
        return (radius2 <= 1.0) & (radius2 > self.hole**2)


@dataclass(frozen=True, eq=False)
class SceneObject:
    """A placed object: its outline and where and how it is drawn."""

    shape: Shape
    window: tuple[int, int, int, int]  # y0, y1, x0, x1: the pixels it may touch
    coverage: np.ndarray  # (h, w) fraction of each window pixel inside the outline
    alpha: np.ndarray  # (h, w) opacity it is drawn with: the coverage with a blurred edge
    colors: np.ndarray  # (h, w, 3) its textured colours in [0, 1]
    visible_fraction: float  # share of its opacity not hidden by the objects drawn over it


@dataclass(frozen=True, eq=False)
class Scene:
    """Everything one image is rendered from; objects are drawn in order, later over earlier."""

    size: int
    background: np.ndarray  # (size, size, 3) in [0, 1], clutter included
    objects: tuple[SceneObject, ...]
    noise_sigma: float
    noise_seed: int


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Return the random generator of image `index` of `split` for `seed`."""
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index))
    )


def sample_scene(rng: np.random.Generator, size: int) -> Scene:
    """Draw a random scene of `size` x `size` pixels."""
    background = _background(rng, size)
    count = 0 if rng.random() < EMPTY_IMAGE_PROBABILITY else int(rng.integers(1, MAX_OBJECTS + 1))
    objects: list[SceneObject] = []
    visible: list[np.ndarray] = []  # per object: its opacity times what the later ones leave
    for _ in range(count):
        label = int(rng.integers(len(CLASS_NAMES)))
        for _ in range(PLACEMENT_TRIES):
            shape = _sample_shape(rng, label, size)
            window, coverage, alpha = _rasterize(rng, shape, size)
            occluded = [
                _occlude(v, o.window, alpha, window) for v, o in zip(visible, objects, strict=True)
            ]
            if all(
                v.sum() >= MIN_VISIBLE_FRACTION * o.alpha.sum()
                for v, o in zip(occluded, objects, strict=True)
            ):
                colors = _colors(rng, label, window, background)
                objects.append(SceneObject(shape, window, coverage, alpha, colors, 1.0))
                visible = [*occluded, alpha]
                break
    objects = [
        replace(o, visible_fraction=float(v.sum() / o.alpha.sum()))
        for o, v in zip(objects, visible, strict=True)
    ]
    noise_sigma = float(rng.uniform(0.005, 0.04))
    return Scene(size, background, tuple(objects), noise_sigma, int(rng.integers(2**63)))


def render(scene: Scene) -> np.ndarray:
    """Return the scene's image as a (size, size, 3) uint8 array."""
    canvas = scene.background.copy()
    for obj in scene.objects:
        y0, y1, x0, x1 = obj.window
        alpha = obj.alpha[..., None]
        canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1.0 - alpha) + obj.colors * alpha
    noise = np.random.default_rng(scene.noise_seed).normal(0.0, scene.noise_sigma, canvas.shape)
    return np.clip((canvas + noise) * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def generate_synthetic_dataset(
    out: Path, train: int, val: int, size: int = 256, seed: int = 0, force: bool = False
) -> dict:
    """Write `train` and `val` images of `size` pixels with COCO annotations under `out`.

    `out` appears complete or not at all; an existing `out` is replaced only with `force`.
    Returns per-split counts of images, objects and empty images, the class names and the time
    taken in seconds.
    """
    out = Path(out)
    _check_count("train", train)
    _check_count("val", val)
    _check_count("size", size)
    _check_count("seed", seed)
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"size must be at least {MIN_IMAGE_SIZE}, got {size}")
    output = _check_out(out, force)
    start = time.perf_counter()
    with output.staged() as partial:
        counts = {
            split: _write_split(partial / split, split, count, size, seed)
            for split, count in zip(SPLITS, (train, val), strict=True)
        }
    return {
        "out": str(out),
        "size": size,
        "seed": seed,
        "classes": list(CLASS_NAMES),
        **counts,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")


def _check_out(out: Path, force: bool) -> Output:
    """An empty folder is filled; another existing `out` is replaced only with `force` and only
    when it is a data set this function wrote (``is_synthetic_dataset``)."""
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        check_writable(out)
        return Output(out, folder=True, replaces=fingerprint(out))
    return check_output(out, force, is_synthetic_dataset, "synthetic data set", folder=True)


def is_synthetic_dataset(folder: Path) -> bool:
    """Whether `folder` holds only the splits this module writes, each with its annotations."""
    entries = {entry.name for entry in folder.iterdir()}
    if not entries or not entries <= set(SPLITS):
        return False
    for split in entries:
        info = json.loads((folder / split / "annotations.json").read_text()).get("info", {})
        if not isinstance(info, dict) or info.get("description") != DESCRIPTION:
            return False
    return True


def _write_split(folder: Path, split: str, count: int, size: int, seed: int) -> dict:
    images_dir = folder / "images"
    images_dir.mkdir(parents=True)
    images: list[dict] = []
    annotations: list[dict] = []
    for index in range(count):
        scene = sample_scene(scene_rng(seed, split, index), size)
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        _write_png(images_dir / file_name, render(scene))
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for obj in scene.objects:
            annotations.append(_annotation(len(annotations) + 1, image_id, obj))
    coco = {
        "info": {"description": DESCRIPTION, "split": split, "seed": seed},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": label + 1, "name": name, "supercategory": "shape"}
            for label, name in enumerate(CLASS_NAMES)
        ],
    }
    (folder / "annotations.json").write_text(json.dumps(coco) + "\n")
    empty = count - len({a["image_id"] for a in annotations})
    return {"images": count, "objects": len(annotations), "empty_images": empty}


def _write_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path, format="PNG", compress_level=6)


def _annotation(annotation_id: int, image_id: int, obj: SceneObject) -> dict:
    x0, y0, x1, y1 = obj.shape.box()
    width, height = x1 - x0, y1 - y0
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": obj.shape.label + 1,
        "bbox": [round(x0, 4), round(y0, 4), round(width, 4), round(height, 4)],
        "area": round(width * height, 4),
        "iscrowd": 0,
        "visible_fraction": round(obj.visible_fraction, 4),
    }


# --- objects ---------------------------------------------------------------------------------


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _sample_shape(rng: np.random.Generator, label: int, size: int) -> Shape:
    """Draw an outline of class `label` that fits inside the image."""
    stretch = MAX_STAR_STRETCH if label == STAR else MAX_ASPECT
    aspect = _log_uniform(rng, 1 / stretch, stretch)
    sx, sy = math.sqrt(aspect), 1.0 / math.sqrt(aspect)
    if label in (ELLIPSE, RING):
        angle = 0.0 if rng.random() < 0.5 else rng.uniform(0.0, math.pi)
        hole = rng.uniform(0.45, 0.75) if label == RING else 0.0
        shape = Shape(label, ellipse=(0.0, 0.0, sx, sy, angle), hole=hole)
    else:
        if label == RECTANGLE:
            points = np.array([(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)])
            angle = 0.0 if rng.random() < 0.6 else rng.uniform(-math.pi / 6, math.pi / 6)
        elif label == TRIANGLE:
            points = np.array([(-1.0, 1.0), (1.0, 1.0), (rng.uniform(-1.0, 1.0), -1.0)])
            angle = rng.uniform(0.0, 2 * math.pi)
        else:
            tips = int(rng.integers(4, 7))
            radii = np.tile([1.0, rng.uniform(0.4, 0.6)], tips)
            theta = np.arange(2 * tips) * math.pi / tips - math.pi / 2
            points = np.stack([radii * np.cos(theta), radii * np.sin(theta)], axis=1)
            angle = rng.uniform(0.0, 2 * math.pi)
        points = points * (sx, sy)
        cos, sin = math.cos(angle), math.sin(angle)
        points = points @ np.array([[cos, sin], [-sin, cos]])
        width, height = np.ptp(points, axis=0)  # a turned triangle can get too long: squeeze it
        squeeze = math.sqrt(min(max(width / height, 1 / MAX_ASPECT), MAX_ASPECT) * height / width)
        shape = Shape(label, polygon=points * (squeeze, 1 / squeeze))
    x0, y0, x1, y1 = shape.box()
    scale = _log_uniform(rng, MIN_OBJECT_SIZE, MAX_OBJECT_FRACTION * size)
    factor = min(scale / math.sqrt((x1 - x0) * (y1 - y0)), 0.98 * size / max(x1 - x0, y1 - y0))
    x0, y0, x1, y1 = (v * factor for v in (x0, y0, x1, y1))
    return shape.transformed(factor, rng.uniform(-x0, size - x1), rng.uniform(-y0, size - y1))


def _rasterize(
    rng: np.random.Generator, shape: Shape, size: int
) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]:
    """Return the window an outline is drawn in, its pixel coverage and its blurred opacity."""
    sigma = 0.0 if rng.random() < SHARP_EDGE_PROBABILITY else rng.uniform(0.3, MAX_EDGE_SIGMA)
    pad = math.ceil(3 * sigma) + 1
    x0, y0, x1, y1 = shape.box()
    window = (
        max(0, math.floor(y0) - pad),
        min(size, math.ceil(y1) + pad),
        max(0, math.floor(x0) - pad),
        min(size, math.ceil(x1) + pad),
    )
    coverage = pixel_coverage(shape, window)
    return window, coverage, _blur(coverage, sigma)


def pixel_coverage(shape: Shape, window: tuple[int, int, int, int]) -> np.ndarray:
    """Return the fraction of each pixel of `window` (y0, y1, x0, x1) inside `shape`."""
    y0, y1, x0, x1 = window
    offsets = (np.arange(SUPERSAMPLING) + 0.5) / SUPERSAMPLING
    xs = (np.arange(x0, x1)[:, None] + offsets).ravel()
    ys = (np.arange(y0, y1)[:, None] + offsets).ravel()
    inside = shape.contains(xs[None, :], ys[:, None])
    shape_hw = (y1 - y0, SUPERSAMPLING, x1 - x0, SUPERSAMPLING)
    return inside.reshape(shape_hw).mean(axis=(1, 3), dtype=np.float32)


def _occlude(
    visible: np.ndarray, window: tuple[int, ...], alpha: np.ndarray, top: tuple[int, ...]
) -> np.ndarray:
    """Return `visible` (over `window`) once `alpha` (over `top`) is drawn over it."""
    y0, y1 = max(window[0], top[0]), min(window[1], top[1])
    x0, x1 = max(window[2], top[2]), min(window[3], top[3])
    if y0 >= y1 or x0 >= x1:
        return visible
    result = visible.copy()
    result[y0 - window[0] : y1 - window[0], x0 - window[2] : x1 - window[2]] *= (
        1.0 - alpha[y0 - top[0] : y1 - top[0], x0 - top[2] : x1 - top[2]]
    )
    return result


# --- appearance ------------------------------------------------------------------------------


def _random_color(
    rng: np.random.Generator, hue: float, saturation: tuple[float, float]
) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(*saturation), rng.uniform(0.25, 1.0))
    return np.array(rgb, dtype=np.float32)


def _colors(
    rng: np.random.Generator, label: int, window: tuple[int, ...], background: np.ndarray
) -> np.ndarray:
    """Return an object's textured colours over its window."""
    y0, y1, x0, x1 = window
    if rng.random() < LOW_CONTRAST_PROBABILITY:
        local = background[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)
        base = np.clip(local + rng.normal(0.0, 0.07, 3), 0.0, 1.0).astype(np.float32)
    elif rng.random() < OWN_HUE_PROBABILITY:
        base = _random_color(rng, label / len(CLASS_NAMES) + rng.normal(0.0, 0.08), (0.3, 1.0))
    else:
        base = _random_color(rng, rng.random(), (0.0, 1.0))
    second = np.clip(base + rng.normal(0.0, rng.uniform(0.05, 0.35), 3), 0.0, 1.0)
    kind = label if rng.random() < OWN_TEXTURE_PROBABILITY else int(rng.integers(len(TEXTURES)))
    t = _texture(rng, TEXTURES[kind], window)[..., None]
    return (base * (1.0 - t) + second * t).astype(np.float32)


def _texture(rng: np.random.Generator, kind: str, window: tuple[int, ...]) -> np.ndarray:
    """Return a texture pattern in [0, 1] over `window`."""
    y0, y1, x0, x1 = window
    y, x = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    phi = rng.uniform(0.0, 2 * math.pi)
    u = x * math.cos(phi) + y * math.sin(phi)
    v = y * math.cos(phi) - x * math.sin(phi)
    if kind == "gradient":
        return (u - u.min()) / max(float(np.ptp(u)), 1.0)
    if kind == "stripes":
        return 0.5 + 0.5 * np.sin(2 * math.pi * u / rng.uniform(3.0, 10.0) + rng.uniform(0, 7))
    if kind == "checker":
        period = rng.uniform(2.5, 8.0)
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "speckle":
        speckle = _blur(rng.random(x.shape, dtype=np.float32), rng.uniform(0.5, 1.5))
        return (speckle - speckle.min()) / max(float(np.ptp(speckle)), 1e-6)
    return np.zeros_like(x)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Return `image` blurred over its first two axes by a Gaussian (zero outside)."""
    if sigma <= 0:
        return image
    radius = math.ceil(3 * sigma)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    for axis in (0, 1):
        pad = [(radius, radius) if a == axis else (0, 0) for a in range(image.ndim)]
        padded = np.pad(image, pad)
        length = image.shape[axis]
        image = sum(
            w * padded.take(np.arange(i, i + length), axis=axis) for i, w in enumerate(taps)
        )
    return image


# --- background ------------------------------------------------------------------------------


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Return a textured, cluttered background: gradient, smooth noise, strokes and blobs."""
    start, end = (_random_color(rng, rng.random(), (0.0, 0.6)) for _ in range(2))
    y, x = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    phi = rng.uniform(0.0, 2 * math.pi)
    ramp = x * math.cos(phi) + y * math.sin(phi)
    ramp = ((ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6))[..., None]
    canvas = start * (1.0 - ramp) + end * ramp
    canvas += rng.uniform(0.03, 0.15) * (_smooth_noise(rng, size, 3) - 0.5)
    for _ in range(int(rng.integers(0, 5))):
        field = _smooth_noise(rng, size, 1)[..., 0]
        blob = np.clip((field - np.quantile(field, rng.uniform(0.9, 0.97))) * 40.0, 0.0, 1.0)
        canvas = _paint(rng, canvas, blob)
    for _ in range(int(rng.integers(2, 9))):
        canvas = _paint(rng, canvas, _stroke(rng, size))
    return np.clip(canvas, 0.0, 1.0).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    """Return low-frequency noise in about [0, 1], (size, size, channels)."""
    cells = int(rng.integers(3, 11))
    grid = rng.random((channels, cells, cells), dtype=np.float32)
    layers = [
        np.asarray(Image.fromarray(g).resize((size, size), Image.Resampling.BICUBIC)) for g in grid
    ]
    return np.stack(layers, axis=-1)


def _stroke(rng: np.random.Generator, size: int) -> np.ndarray:
    """Return the anti-aliased opacity of a random polyline, (size, size)."""
    scale = 2
    steps = rng.normal(0.0, rng.uniform(0.05, 0.3) * size * scale, (int(rng.integers(2, 7)), 2))
    points = np.cumsum(np.vstack([rng.uniform(0, size * scale, (1, 2)), steps]), axis=0)
    mask = Image.new("L", (size * scale, size * scale))
    width = int(rng.integers(1, 5)) * scale
    ImageDraw.Draw(mask).line([tuple(p) for p in points.tolist()], fill=255, width=width)
    mask = mask.resize((size, size), Image.Resampling.BOX)
    return np.asarray(mask, dtype=np.float32) / 255.0


def _paint(rng: np.random.Generator, canvas: np.ndarray, opacity: np.ndarray) -> np.ndarray:
    """Return `canvas` with a random colour laid over it with `opacity`."""
    color = _random_color(rng, rng.random(), (0.0, 1.0))
    alpha = (rng.uniform(0.4, 1.0) * opacity)[..., None]
    return canvas * (1.0 - alpha) + color * alpha
