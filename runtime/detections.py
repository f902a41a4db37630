"""Reading a detector's raw detections in COCO results format."""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path
from typing import NotRequired, TypedDict

import torch
from torch import Tensor

#: An image id of the results: the COCO id, or the file name for a plain folder.
ImageId = int | str


class CocoResult(TypedDict):
    """One entry of a COCO results file: a box ``[x, y, w, h]`` in the image's original pixels,
    its category id and score, and (in iounet's results after IoU-guided NMS) its predicted
    IoU. Read detections name images by their integer COCO id."""

    image_id: ImageId
    category_id: int
    bbox: list[float]
    score: float
    iou: NotRequired[float]


def read_detections(path: str | os.PathLike) -> list[CocoResult]:
    """Entries `{image_id, category_id, bbox: [x, y, w, h], score}` of a COCO results file.

    Raises FileNotFoundError or ValueError naming the file (and the first bad entry).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detections file not found: {path}")
    try:
        entries = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not JSON: {error}") from error
    except RecursionError as error:
        raise ValueError(f"{path} nests its JSON too deeply to be detections") from error
    if not isinstance(entries, list):
        raise ValueError(
            f"{path} must hold a JSON list of detections, got {type(entries).__name__}"
        )
    for index, entry in enumerate(entries):
        problem = _problem(entry)
        if problem:
            raise ValueError(f"{path}: detection {index} {problem}: {entry!r:.200}")
    return entries


def check_known(detections: list[CocoResult], image_ids: set[int], category_ids: set[int]) -> None:
    """Raise ValueError when detections name images or categories the annotations do not have."""
    images = sorted({d["image_id"] for d in detections} - image_ids)
    if images:
        raise ValueError(f"detections name image ids not in the annotations: {images[:10]}")
    categories = sorted({d["category_id"] for d in detections} - category_ids)
    if categories:
        raise ValueError(f"detections name category ids not in the annotations: {categories[:10]}")


def group_by_image(detections: list[CocoResult]) -> dict[int, list[CocoResult]]:
    """Detections per image id, in file order."""
    by_image: dict[int, list[CocoResult]] = {}
    for detection in detections:
        by_image.setdefault(int(detection["image_id"]), []).append(detection)
    return by_image


def image_tensors(
    items: list[CocoResult],
    scale: float,
    size: tuple[int, int],
    category_to_label: dict[int, int],
) -> tuple[Tensor, Tensor, Tensor]:
    """One image's detections as boxes (N, 4) ``x0, y0, x1, y1`` in the image resized by
    `scale` and clipped to its `size` (height, width), scores (N,) and class labels (N,)."""
    boxes = torch.tensor([d["bbox"] for d in items], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    boxes = scale_boxes(boxes, scale, size)
    scores = torch.tensor([float(d["score"]) for d in items])
    labels = torch.tensor([category_to_label[int(d["category_id"])] for d in items])
    return boxes, scores, labels


def scale_boxes(boxes: Tensor, scale: float, size: tuple[int, int]) -> Tensor:
    """Boxes (N, 4) times `scale`, clipped to an image of `size` (height, width)."""
    height, width = size
    boxes = boxes * scale
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


def _problem(entry: object) -> str | None:
    if not isinstance(entry, dict):
        return "is not an object"
    missing = [key for key in ("image_id", "category_id", "bbox", "score") if key not in entry]
    if missing:
        return f"lacks {missing}"
    for key in ("image_id", "category_id"):
        if isinstance(entry[key], bool) or not isinstance(entry[key], int):
            return f"has a non-integer {key}"
    box = entry["bbox"]
    if not isinstance(box, list) or len(box) != 4 or not all(_finite(v) for v in box):
        return "has a bbox that is not 4 finite numbers"
    if box[2] < 0 or box[3] < 0:
        return "has a negative bbox width or height"
    if not _finite(entry["score"]):
        return "has a score that is not a finite number"
    return None


def _finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
