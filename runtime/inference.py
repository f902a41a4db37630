"""The pipeline over a COCO-listed set of images and their raw detections."""

from __future__ import annotations

import os
from typing import Any

from iounet.export.manifest import Manifest
from iounet.runtime.detections import check_known, group_by_image, image_tensors
from iounet.runtime.pipeline import Pipeline


def infer_dataset(
    pipeline: Pipeline,
    manifest: Manifest,
    images: str | os.PathLike,
    annotations: str | os.PathLike,
    detections: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """COCO results (original pixels) after IoU-NMS and refinement, with the predicted IoU.

    Images are resized as the model was trained (the manifest's min_size / max_size); each
    result is ``{image_id, category_id, bbox, score, iou}``.
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
    index_of = {image_id: i for i, image_id in enumerate(dataset.image_ids)}
    check_known(detections, set(index_of), set(category_ids))
    results: list[dict[str, Any]] = []
    for image_id, items in group_by_image(detections).items():
        image, target = dataset[index_of[image_id]]
        scale = float(target["scale"])
        boxes, scores, labels = image_tensors(
            items, scale, tuple(image.shape[1:]), dataset.category_to_label
        )
        found = pipeline.run_resized(image, boxes, scores, labels)
        final = (found.boxes / scale).tolist()
        for box, score, label, iou in zip(
            final, found.scores.tolist(), found.labels.tolist(), found.ious.tolist(), strict=True
        ):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category_ids[label],
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "score": score,
                    "iou": iou,
                }
            )
    return results
