"""Model folders for the engine tests: fake ones, whose graph files are JSON lists of inputs (what
the fake TensorRT's parser reads, tests/fake_tensorrt.py) under a real manifest, and folders
linked to a real export to build engines in."""

from __future__ import annotations

import json
from pathlib import Path

from iounet.export.manifest import (
    DETECTOR_ROLES,
    GRAPH_ROLES,
    Category,
    CheckpointInfo,
    DetectorSpec,
    FeatureMap,
    GraphEntry,
    InputSpec,
    Manifest,
    TensorSpec,
    sha256_file,
)
from iounet.runtime.backend import RefineParams

CHANNELS = 8
MAPS = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
BOX_TENSORS = {"rois": ["K", 5], "labels": ["K"], "iou": ["K"], "grad": ["K", 4], "active": ["K"]}
SCALARS = {"step": [1], "early_stop": [1], "degrade_tolerance": [1]}
GRAPH_INPUTS = {
    "backbone": {"image": [1, 3, "H", "W"]},
    "head": {
        **{name: [1, CHANNELS, f"H{name[1]}", f"W{name[1]}"] for name in MAPS},
        "rois": ["K", 5],
        "labels": ["K"],
    },
}
GRAPH_INPUTS["iou_grad"] = GRAPH_INPUTS["head"]
GRAPH_INPUTS["refine_step"] = {**GRAPH_INPUTS["head"], **BOX_TENSORS, "upper": [4], **SCALARS}
#: The detector's graphs (a model exported from a joint IoU-Net).
DETECTOR_INPUTS = {
    "rpn": {**{name: GRAPH_INPUTS["head"][name] for name in MAPS}, "image_size": [2]},
    "box_head": {
        **{name: GRAPH_INPUTS["head"][name] for name in MAPS},
        "proposals": ["P", 4],
        "image_size": [2],
    },
}
DETECTOR = DetectorSpec(
    pre_nms_top_n=600,
    post_nms_top_n=300,
    rpn_nms_threshold=0.7,
    score_threshold=0.05,
    detections_per_image=100,
    nms_threshold=0.5,
    padding_score=-1.0,
)
ALL_ROLES = GRAPH_ROLES + DETECTOR_ROLES
BOXES = (1, 100, 1000)
SIZES = ((33, 65), (100, 200), (257, 513))


def fake_model(
    folder: Path, precisions: tuple[str, ...] = ("fp32",), detector: bool = False
) -> Path:
    """A model folder whose graph files are JSON lists of inputs (what the fake parser reads);
    with `detector`, the rpn and box_head graphs too (a joint IoU-Net's folder)."""
    folder.mkdir(parents=True)
    graphs = {}
    roles = {**GRAPH_INPUTS, **(DETECTOR_INPUTS if detector else {})}
    for precision in precisions:
        graphs[precision] = {}
        for role, inputs in roles.items():
            file = f"{role}.onnx" if precision == "fp32" else f"{role}.{precision}.onnx"
            network = [
                {"name": n, "shape": [d if isinstance(d, int) else -1 for d in s]}
                for n, s in inputs.items()
            ]
            (folder / file).write_text(json.dumps(network))
            graphs[precision][role] = GraphEntry(
                file,
                sha256_file(folder / file),
                tuple(TensorSpec(n, "float32", tuple(s)) for n, s in inputs.items()),
                (),
            )
    Manifest(
        folder=folder,
        categories=(Category(1, "thing"),),
        maps=tuple(FeatureMap(name, stride) for name, stride in MAPS.items()),
        fpn_channels=CHANNELS,
        pool_size=7,
        input=InputSpec(64, 64, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        refinement=RefineParams(),
        checkpoint=CheckpointInfo("last.pt", "0" * 64, 1),
        graphs=graphs,
        opset=20,
        custom_opsets={"iounet": 1},
        detector=DETECTOR if detector else None,
    ).save(folder)
    return folder


def linked_model(source: Path, folder: Path) -> Path:
    """`folder`, made, with links to the files of the model folder `source`: engines built in it
    leave `source` as it is."""
    folder.mkdir()
    for path in source.iterdir():
        if path.is_file():
            (folder / path.name).symlink_to(path)
    return folder
