"""The pipeline over a set of images: a plain folder (the model's own detector) or the images a
COCO file lists (the model's detector, or a detector's raw detections), written as COCO results.

Every image is checked before the model loads (``check_images``), then read at the model's
size with ``iounet.training.images.load_resized`` (as viewers show it; never whole in float)
and run through ``Pipeline.run_scaled`` (boxes back in the file's pixels), one image at a time:
no image outlives its iteration, and the results of each image go straight into the output's
temporary file (``write_results``), which replaces the output only when every image has run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from iounet.export.manifest import Manifest
from iounet.files import Output, json_safe
from iounet.runtime.detections import (
    CocoResult,
    ImageId,
    check_known,
    group_by_image,
    image_tensors,
)
from iounet.runtime.image_folder import ImageListing
from iounet.runtime.pipeline import Detections, Pipeline


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


#: From this many images on, checking them shows progress.
PROGRESS_FROM = 200


def check_images(
    entries: list[ImageEntry],
    manifest: Manifest,
    detections: list[CocoResult] | None = None,
    max_pixels: int | None = None,
) -> None:
    """Decode every image the run will read (with `detections`: those they name) once, before
    any model is loaded: ValueError naming the first that cannot be decoded, has more than
    `max_pixels` pixels or differs from its COCO entry's size."""
    from iounet.progress import Progress
    from iounet.training.images import decode_image

    if detections is not None:
        named = {detection.get("image_id") for detection in detections}
        entries = [entry for entry in entries if entry.image_id in named]
    size = (manifest.input.min_size, manifest.input.max_size)
    with Progress(
        len(entries), "check images", unit="image", enabled=len(entries) >= PROGRESS_FROM
    ) as progress:
        for entry in entries:
            _, shown = decode_image(entry.path, max_pixels, entry.size, size)
            _check_size(entry, shown)
            progress.update()


def _check_size(entry: ImageEntry, size: tuple[int, int]) -> None:
    if entry.size is not None and size != entry.size:
        raise ValueError(
            f"image {entry.path} is {size[1]}x{size[0]} pixels but its annotation says "
            f"{entry.size[1]}x{entry.size[0]}"
        )


def infer_images(
    pipeline: Pipeline,
    manifest: Manifest,
    entries: list[ImageEntry],
    detections: list[CocoResult] | None = None,
    max_pixels: int | None = None,
) -> Iterator[list[CocoResult]]:
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
    by_image: dict[int, list[CocoResult]] | None = None
    if detections is not None:
        check_known(detections, {entry.image_id for entry in entries}, set(category_ids))
        by_image = group_by_image(detections)
        entries = [entry for entry in entries if entry.image_id in by_image]
    return _run(pipeline, manifest, entries, by_image, max_pixels)


def _run(
    pipeline: Pipeline,
    manifest: Manifest,
    entries: list[ImageEntry],
    by_image: dict[int, list[CocoResult]] | None,
    max_pixels: int | None,
) -> Iterator[list[CocoResult]]:
    """The results of `entries`, image by image (see ``infer_images``)."""
    from iounet.training.images import load_resized

    category_ids = manifest.category_ids
    label_of = {category: label for label, category in enumerate(category_ids)}
    for entry in entries:
        image, scale, size = load_resized(
            entry.path, manifest.input.min_size, manifest.input.max_size, max_pixels, entry.size
        )
        _check_size(entry, size)
        raw = None
        if by_image is not None:
            raw = image_tensors(by_image[int(entry.image_id)], 1.0, size, label_of)
        found = pipeline.run_scaled(image, scale, size, *(raw or ()))
        del image
        yield coco_results(entry.image_id, found, category_ids)


def coco_results(image_id: ImageId, found: Detections, category_ids: list[int]) -> list[CocoResult]:
    """One image's final detections as COCO results (boxes ``[x, y, w, h]``)."""
    ious = found.ious.tolist() if found.ious is not None else [None] * len(found.boxes)
    results = []
    for box, score, label, iou in zip(
        found.boxes.tolist(), found.scores.tolist(), found.labels.tolist(), ious, strict=True
    ):
        result: CocoResult = {
            "image_id": image_id,
            "category_id": category_ids[label],
            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
            "score": score,
        }
        if iou is not None:
            result["iou"] = iou
        results.append(result)
    return results


def write_results(output: Output, per_image: Iterable[list[CocoResult]]) -> int:
    """Write the results of each image as they come into one JSON list at `output`; return how
    many were written.

    The list goes to a temporary file beside the output that takes its place only once
    `per_image` is exhausted (``iounet.files.Output.staged``): an error midway (a bad image,
    Ctrl-C) leaves the output as it was. The JSON is what ``iounet.files.write_json`` writes
    (strict: NaN and infinities become null), so memory holds one image's results at a time.
    """
    count = 0
    with output.staged() as temporary, open(temporary, "w") as file:
        file.write("[")
        for results in per_image:
            for result in results:
                file.write((", " if count else "") + json.dumps(json_safe(result), allow_nan=False))
                count += 1
        file.write("]")
    return count
