"""Checkpoint -> a model folder: the four ONNX graphs of the IoU-Net (and the detector's two
when the checkpoint is a joint IoU-Net) and ``manifest.json``.

The folder appears complete or not at all: everything is written into a temporary folder beside
it and renamed into place; an existing folder is replaced only with ``force`` and only when it is
an empty folder or a model folder (it holds our manifest; ``iounet.files.check_output``).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from iounet.export.graph_export import (
    GraphSpec,
    check_opset,
    export_graphs,
    export_versions,
)
from iounet.export.graphs import (
    MAP_NAMES,
    BackboneGraph,
    BoxHeadGraph,
    HeadGraph,
    IoUGradGraph,
    RefineStepGraph,
    RpnGraph,
)
from iounet.export.manifest import (
    DEFAULT_OPSET,
    Category,
    CheckpointInfo,
    DetectorSpec,
    FeatureMap,
    GraphEntry,
    InputSpec,
    Manifest,
    load_manifest,
    sha256_file,
)
from iounet.export.model_folder import check_model_output
from iounet.export.refine_step import RefineParams
from iounet.plugins.onnx_translation import DOMAIN, DOMAIN_VERSION
from iounet.training.checkpoint import load_model
from iounet.training.config import TrainConfig
from iounet.training.images import SIZE_DIVISOR
from iounet.training.joint_model import PADDING_SCORE, JointIoUNet
from iounet.training.model import FPN_STRIDES, IMAGE_MEAN, IMAGE_STD, IoUNet

#: The refinement state a step reads and writes, and its settings (inputs of refine_step).
STEP_STATE = ("iou", "grad", "active")
STEP_SETTINGS = ("step", "early_stop", "degrade_tolerance")
#: Example sizes the graphs are traced with; every one of these dimensions stays dynamic.
_EXAMPLE_IMAGE = (224, 288)
_EXAMPLE_BOXES = 3
_EXAMPLE_PROPOSALS = 7


def export_model(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    force: bool = False,
    fp16: bool = False,
    annotations: str | os.PathLike | None = None,
    opset: int = DEFAULT_OPSET,
) -> Manifest:
    """Export the IoU-Net of `checkpoint` to the folder `out` (fp32 graphs, fp16 too if asked);
    a joint IoU-Net's folder also holds its detector (the rpn and box_head graphs).

    `annotations` (a COCO file) gives the category id of each class; without it the ids are
    1..num_classes in the checkpoint's class order. `opset` is the graphs' ONNX opset (one of
    ``OPSETS``: 17 for TensorRT 8.5/8.6).
    """
    check_opset(opset)
    out = Path(out)
    output = check_model_output(out, force)
    model, state = load_model(checkpoint)
    if model.head is None:
        raise ValueError(
            f"{checkpoint} is a detector without the IoU branch (an FPN baseline): there is no "
            "IoU-Net to export; export a joint IoU-Net (recipe joint-*) or an IoU head"
        )
    categories = _categories(state["class_names"], annotations)
    config = TrainConfig.from_dict(state["config"])
    with output.staged() as staging:
        graphs = {"fp32": _export_graphs(model, staging, torch.float32, "", opset)}
        if fp16:
            graphs["fp16"] = _export_graphs(model, staging, torch.float16, ".fp16", opset)
        manifest = Manifest(
            folder=staging,
            categories=categories,
            maps=tuple(FeatureMap(n, s) for n, s in zip(MAP_NAMES, FPN_STRIDES, strict=True)),
            fpn_channels=model.config.fpn_channels,
            pool_size=model.config.pool_size,
            input=InputSpec(
                min_size=config.data.min_size,
                max_size=config.data.max_size,
                size_divisor=SIZE_DIVISOR,
                mean=IMAGE_MEAN,
                std=IMAGE_STD,
            ),
            refinement=RefineParams(),
            checkpoint=CheckpointInfo(
                Path(checkpoint).name, sha256_file(checkpoint), int(state["step"])
            ),
            graphs=graphs,
            opset=opset,
            custom_opsets={DOMAIN: DOMAIN_VERSION},
            versions=export_versions(),
            detector=_detector_spec(model),
        )
        manifest.save(staging)
        load_manifest(staging)
    return load_manifest(out)


def _detector_spec(model: IoUNet | JointIoUNet) -> DetectorSpec | None:
    if not isinstance(model, JointIoUNet):
        return None
    detector = model.detector
    return DetectorSpec(
        pre_nms_top_n=detector.rpn_pre_nms_top_n,
        post_nms_top_n=detector.rpn_post_nms_top_n,
        rpn_nms_threshold=detector.rpn_nms_threshold,
        score_threshold=detector.score_threshold,
        detections_per_image=detector.detections_per_image,
        nms_threshold=detector.nms_threshold,
        padding_score=PADDING_SCORE,
    )


def _categories(
    class_names: list[str], annotations: str | os.PathLike | None
) -> tuple[Category, ...]:
    if annotations is None:
        return tuple(Category(i + 1, name) for i, name in enumerate(class_names))
    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"annotations not found: {path}")
    try:
        found = json.loads(path.read_text())["categories"]
        ids = sorted((int(c["id"]), str(c["name"])) for c in found)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} has no readable COCO categories: {error}") from error
    names = [name for _, name in ids]
    if names != list(class_names):
        raise ValueError(f"{path} has classes {names}, the checkpoint {list(class_names)}")
    return tuple(Category(cid, name) for cid, name in ids)


def _export_graphs(
    model: IoUNet | JointIoUNet, folder: Path, dtype: torch.dtype, suffix: str, opset: int
) -> dict[str, GraphEntry]:
    """Export the graphs in `dtype` (boxes, labels and box outputs stay float32/int64) at ONNX
    opset `opset`."""
    image = torch.rand(1, 3, *_EXAMPLE_IMAGE)
    with torch.no_grad():
        maps = tuple(m.to(dtype) for m in model.backbone(image))
    backbone = BackboneGraph(copy.deepcopy(model.backbone), dtype).to(dtype).eval()
    head = copy.deepcopy(model.head).to(dtype).eval()
    rois, labels = _example_boxes(model.num_classes)
    image_dims = {
        2: torch.export.Dim("H", min=32, max=8192),
        3: torch.export.Dim("W", min=32, max=8192),
    }
    map_dims = tuple(
        {
            2: torch.export.Dim(f"H{n[1]}", min=1, max=4096),
            3: torch.export.Dim(f"W{n[1]}", min=1, max=4096),
        }
        for n in MAP_NAMES
    )
    boxes = torch.export.Dim("K", min=1, max=1 << 20)
    head_inputs = (*maps, rois, labels)
    head_dims = (*map_dims, {0: boxes}, {0: boxes})
    step_inputs = (
        *head_inputs,
        torch.rand(_EXAMPLE_BOXES),
        torch.randn(_EXAMPLE_BOXES, 4) * 1e-2,
        torch.ones(_EXAMPLE_BOXES, dtype=torch.bool),
        torch.tensor([288.0, 224.0, 288.0, 224.0]),
        torch.tensor([0.5]),
        torch.tensor([1e-3]),
        torch.tensor([-1e-2]),
    )
    step_dims = (*head_dims, {0: boxes}, {0: boxes}, {0: boxes}, None, None, None, None)
    names = list(MAP_NAMES)
    specs = {
        "backbone": GraphSpec(backbone, (image,), (image_dims,), ["image"], names),
        "head": GraphSpec(
            HeadGraph(head), head_inputs, head_dims, [*names, "rois", "labels"], ["iou"]
        ),
        "iou_grad": GraphSpec(
            IoUGradGraph(head),
            head_inputs,
            head_dims,
            [*names, "rois", "labels"],
            ["iou", "grad"],
        ),
        "refine_step": GraphSpec(
            RefineStepGraph(head),
            step_inputs,
            step_dims,
            [*names, "rois", "labels", *STEP_STATE, "upper", *STEP_SETTINGS],
            ["rois_next", "iou_next", "grad_next", "active_next"],
        ),
    }
    if isinstance(model, JointIoUNet):
        detector = copy.deepcopy(model).to(dtype).eval()
        image_size = torch.tensor([float(_EXAMPLE_IMAGE[0] - 10), float(_EXAMPLE_IMAGE[1] - 6)])
        with torch.no_grad():
            # fewer than post_nms_top_n, so that no size of the trace is a setting's value
            proposals = detector.proposals(maps, image_size).float()[:_EXAMPLE_PROPOSALS]
        count = torch.export.Dim("P", min=1, max=1 << 16)
        specs["rpn"] = GraphSpec(
            RpnGraph(detector),
            (*maps, image_size),
            (*map_dims, None),
            [*names, "image_size"],
            ["proposals"],
        )
        specs["box_head"] = GraphSpec(
            BoxHeadGraph(detector),
            (*maps, proposals, image_size),
            (*map_dims, {0: count}, None),
            [*names, "proposals", "image_size"],
            ["boxes", "scores", "labels"],
        )
    return export_graphs(specs, folder, opset, suffix)


def _example_boxes(num_classes: int) -> tuple[Tensor, Tensor]:
    corners = torch.tensor([[8.0, 8.0, 40.0, 56.0], [20.0, 30.0, 200.0, 180.0], [0, 0, 280, 220]])
    rois = torch.cat([torch.zeros(_EXAMPLE_BOXES, 1), corners[:_EXAMPLE_BOXES]], dim=1)
    labels = torch.arange(_EXAMPLE_BOXES) % num_classes
    return rois, labels
