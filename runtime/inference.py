"""The pipeline over a set of images: a plain folder (the model's own detector) or the images a
COCO file lists (the model's detector, or a detector's raw detections), written as COCO results.

Every image is read with ``iounet.training.images.load_image`` and run through
``Pipeline.__call__`` (the manifest's resize rule, boxes back in original pixels), one image at
a time: no image outlives its iteration, and the results of each image go straight into the
output's temporary file (``write_results``), which replaces the output only when every image
has run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iounet.export.manifest import Manifest
from iounet.files import atomic_path, json_safe
from iounet.runtime.detections import check_known, group_by_image, image_tensors
from iounet.runtime.image_folder import ImageListing
from iounet.runtime.pipeline import Detections, Pipeline

#: An image id of the results: the COCO id, or the file name for a plain folder.
ImageId = int | str


@dataclass(frozen=True)
class ImageEntry:
    """One image to run on: its id in the results, its file and, from a COCO file, the
    (height, width) the file must have."""

    image_id: ImageId
    path: Path
    size: tuple[int, int] | None = None


def folder_entries(listing: ImageListing) -> list[ImageEntry]:
    """The images of a plain folder, each with its file name as image id."""
    return [ImageEntry(path.name, path) for path in listing.images]


def coco_entries(
    images: str | os.PathLike, annotations: str | os.PathLike, manifest: Manifest
) -> list[ImageEntry]:
    """The images a COCO file lists (in its order), with their COCO ids.

    The file is checked as training checks it (``CocoDetection``: its structure, every listed
    image file present); its categories must be the model's (ids and names), or ValueError.
    """
    from iounet.training.coco_dataset import CocoDetection

    size = manifest.input
    dataset = CocoDetection(images, annotations, min_size=size.min_size, max_size=size.max_size)
    category_ids = [dataset.label_to_category[label] for label in range(len(dataset.class_names))]
    if category_ids != manifest.category_ids or list(dataset.class_names) != manifest.class_names:
        raise ValueError(
            f"{annotations} has categories {category_ids} {list(dataset.class_names)}, "
            f"the model {manifest.category_ids} {manifest.class_names}"
        )
    if not dataset.image_ids:
        raise ValueError(f"{annotations} lists no images")
    entries = []
    for image_id in dataset.image_ids:
        info = dataset.coco.imgs[image_id]
        path = Path(images) / info["file_name"]
        entries.append(ImageEntry(image_id, path, (int(info["height"]), int(info["width"]))))
    return entries


def infer_images(
    pipeline: Pipeline,
    manifest: Manifest,
    entries: list[ImageEntry],
    detections: list[dict[str, Any]] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Per image, its COCO results ``{image_id, category_id, bbox: [x, y, w, h], score, iou}``
    (original pixels, the manifest's category ids; ``iou`` absent for ``method="nms"``).

    Without `detections` the model's detector runs on every image; with them (COCO results
    naming the entries' integer ids), each image that has detections runs on its own and the
    others are not read. ValueError naming the file for an image that cannot be decoded or
    whose size differs from its COCO entry's; ValueError for detections naming unknown image
    or category ids (raised by this call, before any image is read; the rest as the results
    are drawn).
    """
    category_ids = manifest.category_ids
    by_image: dict[int, list[dict[str, Any]]] | None = None
    if detections is not None:
        check_known(detections, {entry.image_id for entry in entries}, set(category_ids))
        by_image = group_by_image(detections)
        entries = [entry for entry in entries if entry.image_id in by_image]
    return _run(pipeline, category_ids, entries, by_image)


def _run(
    pipeline: Pipeline,
    category_ids: list[int],
    entries: list[ImageEntry],
    by_image: dict[int, list[dict[str, Any]]] | None,
) -> Iterator[list[dict[str, Any]]]:
    """The results of `entries`, image by image (see ``infer_images``)."""
    from iounet.training.images import load_image

    label_of = {category: label for label, category in enumerate(category_ids)}
    for entry in entries:
        image = load_image(entry.path)
        size = (int(image.shape[1]), int(image.shape[2]))
        if entry.size is not None and size != entry.size:
            raise ValueError(
                f"image {entry.path} is {image.shape[2]}x{image.shape[1]} pixels but its "
                f"annotation says {entry.size[1]}x{entry.size[0]}"
            )
        if by_image is None:
            found = pipeline(image)
        else:
            raw = image_tensors(by_image[int(entry.image_id)], 1.0, size, label_of)
            found = pipeline(image, *raw)
        del image
        yield coco_results(entry.image_id, found, category_ids)


def coco_results(
    image_id: ImageId, found: Detections, category_ids: list[int]
) -> list[dict[str, Any]]:
    """One image's final detections as COCO results (boxes ``[x, y, w, h]``)."""
    ious = found.ious.tolist() if found.ious is not None else [None] * len(found.boxes)
    results = []
    for box, score, label, iou in zip(
        found.boxes.tolist(), found.scores.tolist(), found.labels.tolist(), ious, strict=True
    ):
        result = {
            "image_id": image_id,
            "category_id": category_ids[label],
            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
            "score": score,
        }
        if iou is not None:
            result["iou"] = iou
        results.append(result)
    return results


def write_results(path: str | os.PathLike, per_image: Iterable[list[dict[str, Any]]]) -> int:
    """Write the results of each image as they come into one JSON list at `path`; return how
    many were written.

    The list goes to a temporary file beside `path` that replaces `path` only once `per_image`
    is exhausted (``iounet.files.atomic_path``): an error midway (a bad image, Ctrl-C) leaves
    `path` as it was. The JSON is what ``iounet.files.write_json`` writes (strict: NaN and
    infinities become null), so memory holds one image's results at a time, not all of them.
    """
    count = 0
    with atomic_path(path) as temporary, open(temporary, "w") as file:
        file.write("[")
        for results in per_image:
            for result in results:
                file.write((", " if count else "") + json.dumps(json_safe(result), allow_nan=False))
                count += 1
        file.write("]")
    return count
