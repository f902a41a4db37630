"""A COCO-format detection dataset for torch: checked annotations, resized images, flips."""

from __future__ import annotations

import contextlib
import io
import json
import math
import numbers
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from iounet.resize import resized_shape
from iounet.training.images import decode_image, resize_decoded

if TYPE_CHECKING:
    from iounet.training.checkpoint import Checkpoint


@dataclass(frozen=True, eq=False)
class _Record:
    """One image's entry: its file, size and boxes in original pixels (x0, y0, x1, y1)."""

    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (K, 4) float32
    labels: np.ndarray  # (K,) int64
    crowd_boxes: np.ndarray  # (M, 4) float32


class CocoDetection(Dataset):
    """Images and boxes of a COCO-format annotation file, through pycocotools.

    Item `i` is `(image, target)`: `image` a float32 (3, H, W) tensor in [0, 1], resized so its
    short side is `min_size` unless its long side would then exceed `max_size`; `target` holds
    `boxes` (K, 4) float32 x0, y0, x1, y1 in resized pixels, `labels` (K,) int64 contiguous class
    indices 0..C-1 (categories in increasing id order), `crowd_boxes` (M, 4) of the iscrowd=1
    annotations (not in `boxes`), `image_id`, `orig_size` and `size` (height, width, int64),
    `scale` (resized over original pixels, the same for x and y, float32).
    `category_to_label` and `label_to_category` map COCO category ids to labels and back.

    The annotation file is checked when the dataset is built: boxes are clipped to the image
    and those left with no area dropped; missing image files raise (or, with `skip_unreadable`,
    drop the image); with `skip_empty` images without non-crowd boxes are dropped. `report()`
    counts all of this. An image that fails to decode raises when its item is read, or with
    `skip_unreadable` is replaced by the next readable item and counted in this process.
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotation_file: str | Path,
        min_size: int = 800,
        max_size: int = 1333,
        skip_empty: bool = False,
        skip_unreadable: bool = False,
    ) -> None:
        for name, value in (("min_size", min_size), ("max_size", max_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.images_dir = Path(images_dir)
        self.annotation_file = Path(annotation_file)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"images directory not found: {self.images_dir}")
        self.min_size, self.max_size = min_size, max_size
        self.skip_unreadable = skip_unreadable

        self.coco = _load_coco(self.annotation_file)
        category_ids = sorted(self.coco.getCatIds())
        self.category_to_label = {cid: label for label, cid in enumerate(category_ids)}
        self.label_to_category = dict(enumerate(category_ids))
        self.class_names = [self.coco.cats[cid]["name"] for cid in category_ids]
        self._counts = {
            "images_in_file": len(self.coco.imgs),
            "annotations": len(self.coco.anns),
            "crowd_annotations": 0,
            "clipped_boxes": 0,
            "dropped_boxes": 0,
            "missing_images": 0,
            "skipped_empty_images": 0,
        }
        self.missing_files: list[Path] = []
        self.unreadable_files: list[Path] = []  # found by this process while reading items
        self._unreadable: set[int] = set()
        self._records: list[_Record] = []
        for image_id in self.coco.getImgIds():
            record = self._record(image_id)
            if not record.path.is_file():
                if not skip_unreadable:
                    raise FileNotFoundError(f"image file not found: {record.path}")
                self._counts["missing_images"] += 1
                self.missing_files.append(record.path)
            elif skip_empty and len(record.boxes) == 0:
                self._counts["skipped_empty_images"] += 1
            else:
                self._records.append(record)
        self.image_ids = [record.image_id for record in self._records]

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        for offset in range(len(self)):
            position = (index + offset) % len(self)
            if position in self._unreadable:
                continue
            record = self._records[position]
            try:
                image = _decode(record, (self.min_size, self.max_size))
            except ValueError:
                if not self.skip_unreadable:
                    raise
                self._unreadable.add(position)
                self.unreadable_files.append(record.path)
                continue
            return self._item(record, image)
        raise ValueError(f"no readable image left in {self.images_dir}")

    def report(self) -> dict[str, int]:
        """Return counts of images, annotations and what was clipped, dropped or skipped."""
        return {
            "images": len(self),
            **self._counts,
            "unreadable_images": len(self.unreadable_files),
        }

    def resized_shape(self, height: int, width: int) -> tuple[float, int, int]:
        """Return the scale factor and the (height, width) an image of (height, width) gets."""
        return resized_shape(height, width, self.min_size, self.max_size)

    def _record(self, image_id: int) -> _Record:
        info = self.coco.imgs[image_id]
        width, height = info["width"], info["height"]
        boxes, labels, crowd = [], [], []
        for ann in self.coco.imgToAnns[image_id]:
            x, y, w, h = ann["bbox"]
            box = [min(max(x, 0), width), min(max(y, 0), height)]
            box += [min(max(x + w, 0), width), min(max(y + h, 0), height)]
            if box != [x, y, x + w, y + h]:
                self._counts["clipped_boxes"] += 1
            if box[2] <= box[0] or box[3] <= box[1]:
                self._counts["dropped_boxes"] += 1
            elif ann.get("iscrowd", 0):
                crowd.append(box)
            else:
                boxes.append(box)
                labels.append(self.category_to_label[ann["category_id"]])
            self._counts["crowd_annotations"] += int(bool(ann.get("iscrowd", 0)))
        return _Record(
            image_id,
            self.images_dir / info["file_name"],
            width,
            height,
            np.array(boxes, dtype=np.float32).reshape(-1, 4),
            np.array(labels, dtype=np.int64),
            np.array(crowd, dtype=np.float32).reshape(-1, 4),
        )

    def _item(self, record: _Record, image: Image.Image) -> tuple[Tensor, dict[str, Tensor]]:
        scale, height, width = self.resized_shape(record.height, record.width)
        # what `iounet infer` and the API make of the same file (load_resized)
        size = (record.height, record.width)
        pixels, _ = resize_decoded(image, size, self.min_size, self.max_size)
        boxes, keep = _resize_boxes(record.boxes, scale, height, width)
        crowd_boxes, _ = _resize_boxes(record.crowd_boxes, scale, height, width)
        target = {
            "boxes": torch.from_numpy(boxes),
            "labels": torch.from_numpy(record.labels[keep]),
            "crowd_boxes": torch.from_numpy(crowd_boxes),
            "image_id": torch.tensor(record.image_id, dtype=torch.int64),
            "orig_size": torch.tensor([record.height, record.width], dtype=torch.int64),
            "size": torch.tensor([height, width], dtype=torch.int64),
            "scale": torch.tensor(scale, dtype=torch.float32),
        }
        return pixels, target


def collate(
    batch: list[tuple[Tensor, dict[str, Tensor]]],
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Return a batch of items as (list of images, list of targets), for a DataLoader."""
    return [image for image, _ in batch], [target for _, target in batch]


def _resize_boxes(
    boxes: np.ndarray, scale: float, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return `boxes` scaled and clipped to the resized image, and which of them keep an area."""
    boxes = np.clip(boxes * scale, 0.0, np.array([width, height, width, height], np.float32))
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], keep


def _decode(record: _Record, model_size: tuple[int, int]) -> Image.Image:
    """Return the record's image as ``iounet infer`` decodes it (``decode_image``: as shown,
    unless the annotation's size is the stored pixels'); ValueError naming the file if it
    cannot be decoded or does not have the annotation's size."""
    image, (height, width) = decode_image(
        record.path, expected_size=(record.height, record.width), model_size=model_size
    )
    if (width, height) != (record.width, record.height):
        raise ValueError(
            f"image {record.path} is {width}x{height} pixels but its annotation "
            f"says {record.width}x{record.height}"
        )
    return image


def _load_coco(path: Path) -> COCO:
    """Return a pycocotools index of the annotation file after checking its structure."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON file: {error}") from error
    _check_annotations(path, data)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _check_annotations(path: Path, data: object) -> None:
    """Raise ValueError naming `path` and the entry if `data` is not a usable COCO dataset."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be an object, got {type(data).__name__}")
    category_ids = _check_entries(path, data, "categories", _CATEGORY_FIELDS)
    image_ids = _check_entries(path, data, "images", _IMAGE_FIELDS)
    _check_entries(path, data, "annotations", _ANNOTATION_FIELDS)
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}] (id {ann['id']})"
        if ann["image_id"] not in image_ids:
            raise ValueError(f"{where}: image_id {ann['image_id']} is not in 'images'")
        if ann["category_id"] not in category_ids:
            raise ValueError(f"{where}: category_id {ann['category_id']} is not in 'categories'")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise ValueError(f"{where}: 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")


def _check_entries(
    path: Path,
    data: dict[str, object],
    key: str,
    fields: tuple[tuple[str, Callable[[object], bool], str], ...],
) -> set[int]:
    """Check that `data[key]` is a list of objects with `fields` and unique ids; return the ids."""
    entries = data.get(key)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: '{key}' must be a list, got {reprlib.repr(entries)}")
    ids: set[int] = set()
    for i, entry in enumerate(entries):
        where = f"{path}: {key}[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object, got {reprlib.repr(entry)}")
        for name, test, meaning in fields:
            if name not in entry:
                raise ValueError(f"{where} has no '{name}'")
            if not test(entry[name]):
                raise ValueError(
                    f"{where}: '{name}' must be {meaning}, got {reprlib.repr(entry[name])}"
                )
        if entry["id"] in ids:
            raise ValueError(f"{where}: id {entry['id']} appears twice in '{key}'")
        ids.add(entry["id"])
    return ids


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_int(value: object) -> bool:
    return _is_int(value) and value > 0


def _is_str(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _is_bbox(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) for v in value)
    )


_CATEGORY_FIELDS = (("id", _is_int, "an int"), ("name", _is_str, "a non-empty string"))
_IMAGE_FIELDS = (
    ("id", _is_int, "an int"),
    ("file_name", _is_str, "a non-empty string"),
    ("width", _is_positive_int, "a positive int"),
    ("height", _is_positive_int, "a positive int"),
)
_ANNOTATION_FIELDS = (
    ("id", _is_int, "an int"),
    ("image_id", _is_int, "an int"),
    ("category_id", _is_int, "an int"),
    ("bbox", _is_bbox, "a list of 4 finite numbers [x, y, width, height]"),
)


def dataset_for_checkpoint(
    images: str | Path, annotations: str | Path, state: Checkpoint, checkpoint: str | Path
) -> CocoDetection:
    """The images of a COCO file, sized as the checkpoint `state` was trained; ValueError when the
    file's classes are not the checkpoint's."""
    from iounet.training.config import TrainConfig

    config = TrainConfig.from_dict(state["config"])
    dataset = CocoDetection(
        images, annotations, min_size=config.data.min_size, max_size=config.data.max_size
    )
    if list(dataset.class_names) != state["class_names"]:
        raise ValueError(
            f"{annotations} has classes {list(dataset.class_names)}, "
            f"{checkpoint} {state['class_names']}"
        )
    return dataset
