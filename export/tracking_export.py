"""A pytracking checkpoint (ATOM, DiMP, PrDiMP) -> a tracking model folder: seven ONNX graphs
(see ``iounet.export.tracking_graphs``) and ``manifest.json`` (``TrackingManifest``).

The checkpoint is read without running its pickles (``iounet.training.pytracking_checkpoint``);
the folder is written as ``iounet.export.onnx_export`` writes a detection model (complete or not
at all), its graphs by ``iounet.export.graph_export`` with the same exporter settings and checks.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from iounet.export.graph_export import GraphSpec, check_opset, export_graphs, export_versions
from iounet.export.manifest_format import (
    DEFAULT_OPSET,
    FeatureMap,
    GraphEntry,
    PixelSpec,
    sha256_file,
)
from iounet.export.model_folder import check_model_output
from iounet.export.tracking_graphs import (
    IoUFeatGraph,
    ModulationGraph,
    PredictIoUGraph,
    RefineStepAtomGraph,
    RefineStepRelativeGraph,
    TrackBackboneGraph,
    TrackIoUGradGraph,
)
from iounet.export.tracking_manifest import (
    SourceCheckpoint,
    TrackingManifest,
    load_tracking_manifest,
)
from iounet.export.tracking_refine import TrackingRefineParams
from iounet.plugins.onnx_translation import DOMAIN, DOMAIN_VERSION
from iounet.training.pytracking_checkpoint import pytracking_checkpoint, read_checkpoint
from iounet.training.tracking_model import IMAGE_MEAN, IMAGE_STD, STRIDES, TrackingNet

#: Example sizes the graphs are traced with (crop, proposals); every such dimension is dynamic.
_EXAMPLE_CROP = 128
_EXAMPLE_BOXES = 3


def export_tracking_model(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    force: bool = False,
    refinement: TrackingRefineParams | None = None,
    contents: object | None = None,
    opset: int = DEFAULT_OPSET,
) -> TrackingManifest:
    """Export the IoU-Net and backbone of a pytracking checkpoint to the folder `out`.

    `refinement` sets the manifest's refinement defaults (pytracking's ATOM defaults: 5
    iterations, step length 1, decay 1, "atom"); `contents` are the checkpoint's already
    unpickled contents (``read_checkpoint``), to avoid reading it twice; `opset` is the graphs'
    ONNX opset (one of ``OPSETS``: 17 for TensorRT 8.5/8.6).
    """
    check_opset(opset)
    out = Path(out)
    output = check_model_output(out, force)
    source = str(checkpoint)
    found = pytracking_checkpoint(
        read_checkpoint(checkpoint) if contents is None else contents, source
    )
    model = TrackingNet.from_state_dict(found.state, source).float()
    with output.staged() as staging:
        manifest = TrackingManifest(
            folder=staging,
            backbone=model.config.backbone,
            input_dim=model.config.input_dim,
            pred_input_dim=model.config.pred_input_dim,
            pred_inter_dim=model.config.pred_inter_dim,
            maps=(FeatureMap("layer2", STRIDES[0]), FeatureMap("layer3", STRIDES[1])),
            input=PixelSpec(mean=IMAGE_MEAN, std=IMAGE_STD),
            refinement=refinement or TrackingRefineParams(),
            checkpoint=SourceCheckpoint(
                Path(checkpoint).name, sha256_file(checkpoint), found.constructor, found.epoch
            ),
            graphs=export_tracking_graphs(model, staging, opset),
            opset=opset,
            custom_opsets={DOMAIN: DOMAIN_VERSION},
            versions=export_versions(),
        )
        manifest.save(staging)
        load_tracking_manifest(staging)
    return load_tracking_manifest(out)


def export_tracking_graphs(model: TrackingNet, folder: Path, opset: int) -> dict[str, GraphEntry]:
    """Export the seven graphs of `model` (float32, ONNX opset `opset`) into `folder`; their
    manifest entries."""
    backbone = copy.deepcopy(model.feature_extractor).eval()
    net = copy.deepcopy(model.bb_regressor).eval()
    image = torch.rand(1, 3, _EXAMPLE_CROP, _EXAMPLE_CROP)
    with torch.no_grad():
        layers = backbone(image)
        box = torch.tensor([[40.0, 36.0, 48.0, 52.0]])
        mod3, mod4 = (m.flatten(1) for m in net.get_modulation(layers, box))
        feat3, feat4 = net.get_iou_feat(layers)
    proposals = torch.tensor([[40.0, 36.0, 48.0, 52.0], [30.5, 40.2, 60.1, 44.7], [5, 8, 20, 30]])
    step = torch.tensor([1.0, 1.0, 1.0, 1.0])
    sz_norm = torch.tensor([48.0, 52.0])

    def dims(name: str) -> dict[int, torch.export.Dim]:
        return {
            2: torch.export.Dim(f"H_{name}", min=1, max=4096),
            3: torch.export.Dim(f"W_{name}", min=1, max=4096),
        }

    boxes = {0: torch.export.Dim("K", min=1, max=1 << 16)}
    maps, map_dims = layers, (dims("layer2"), dims("layer3"))
    feats = (mod3, mod4, feat3, feat4)
    feat_dims = (None, None, dims("feat3"), dims("feat4"))
    feat_names = ["modulation3", "modulation4", "feat3", "feat4"]
    image_dims = {
        2: torch.export.Dim("H", min=32, max=4096),
        3: torch.export.Dim("W", min=32, max=4096),
    }
    specs = {
        "backbone": GraphSpec(
            TrackBackboneGraph(backbone),
            (image,),
            (image_dims,),
            ["image"],
            ["layer2", "layer3"],
        ),
        "modulation": GraphSpec(
            ModulationGraph(net),
            (*maps, box),
            (*map_dims, None),
            ["layer2", "layer3", "box"],
            ["modulation3", "modulation4"],
        ),
        "iou_feat": GraphSpec(
            IoUFeatGraph(net), maps, map_dims, ["layer2", "layer3"], ["feat3", "feat4"]
        ),
        "predict_iou": GraphSpec(
            PredictIoUGraph(net),
            (*feats, proposals),
            (*feat_dims, boxes),
            [*feat_names, "proposals"],
            ["iou"],
        ),
        "iou_grad": GraphSpec(
            TrackIoUGradGraph(net),
            (*feats, proposals),
            (*feat_dims, boxes),
            [*feat_names, "proposals"],
            ["iou", "grad"],
        ),
        "refine_step_atom": GraphSpec(
            RefineStepAtomGraph(net),
            (*feats, proposals, step),
            (*feat_dims, boxes, None),
            [*feat_names, "boxes", "step"],
            ["boxes_next", "iou"],
        ),
        "refine_step_relative": GraphSpec(
            RefineStepRelativeGraph(net),
            (*feats, proposals, sz_norm, step),
            (*feat_dims, boxes, None, None),
            [*feat_names, "rel", "sz_norm", "step"],
            ["rel_next", "iou"],
        ),
    }
    return export_graphs(specs, folder, opset)
