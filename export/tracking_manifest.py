"""``manifest.json`` of an exported tracking model (format "iounet-tracking-model").

``TrackingManifest`` is the typed contract between ``iounet export`` of a pytracking checkpoint
and ``iounet.runtime.TrackerRefiner``: the architecture (backbone depth, channels), the maps
(layer2 and layer3 with their strides), the crop convention, the refinement defaults, the source
checkpoint and per role the graph file with its sha256, inputs and outputs. It is checked with
the reader of ``iounet.export.manifest_format`` (sha256 of every file) before anything runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from iounet.export.manifest_format import (
    MANIFEST_NAME,
    CheckpointFile,
    FeatureMap,
    GraphEntry,
    ManifestError,
    ManifestFile,
    ManifestReader,
    PixelSpec,
    read_manifest_json,
    verify_graph_files,
)
from iounet.export.tracking_refine import PARAMETRIZATIONS, TrackingRefineParams
from iounet.training.tracking_model import VARIANTS

FORMAT = "iounet-tracking-model"
FORMAT_VERSION = 1
#: The graphs of an exported tracking model (see iounet.export.tracking_graphs), by role.
TRACKING_ROLES = (
    "backbone",
    "modulation",
    "iou_feat",
    "predict_iou",
    "iou_grad",
    "refine_step_atom",
    "refine_step_relative",
)
#: The IoU features (outputs of ``iou_feat``, inputs of the proposal graphs) and the map each is
#: computed from at the same size (stride-1 convolutions), so its stride.
IOU_FEATURE_MAPS = {"feat3": "layer2", "feat4": "layer3"}
#: The one precision a tracking model's graphs are exported in.
PRECISION = "fp32"


@dataclass(frozen=True)
class SourceCheckpoint(CheckpointFile):
    """The pytracking checkpoint the folder was exported from, with its network constructor
    and epoch when it records them."""

    constructor: str | None = None
    epoch: int | None = None


@dataclass(frozen=True)
class TrackingManifest(ManifestFile):
    """A checked tracking manifest and the folder it describes."""

    FORMAT: ClassVar[str] = FORMAT
    FORMAT_VERSION: ClassVar[int] = FORMAT_VERSION

    folder: Path
    backbone: str
    input_dim: tuple[int, int]
    pred_input_dim: tuple[int, int]
    pred_inter_dim: tuple[int, int]
    maps: tuple[FeatureMap, ...]
    input: PixelSpec
    refinement: TrackingRefineParams
    checkpoint: SourceCheckpoint
    graphs: dict[str, GraphEntry]
    opset: int
    custom_opsets: dict[str, int]
    versions: dict[str, str] = field(default_factory=dict)

    def roles(self) -> tuple[str, ...]:
        """The roles of the graphs the folder holds."""
        return TRACKING_ROLES

    def precisions(self) -> list[str]:
        """The precisions the folder holds graphs in (fp32 only)."""
        return [PRECISION]

    def input_strides(self) -> dict[str, int]:
        """The graph inputs whose height and width follow the crop's, with their strides (the
        crop: 1)."""
        strides = {"image": 1, **{level.name: level.stride for level in self.maps}}
        strides.update({feat: strides[layer] for feat, layer in IOU_FEATURE_MAPS.items()})
        return strides

    def graph(self, role: str, precision: str = PRECISION) -> GraphEntry:
        """The entry of one graph: file, sha256, inputs, outputs."""
        if precision != PRECISION:
            raise ManifestError(
                f"{self.folder} has no {precision} graphs: tracking models are exported in "
                f"{PRECISION} only"
            )
        return self.graphs[role]

    def graph_path(self, role: str) -> Path:
        return self.folder / self.graph(role).file


def is_tracking_model(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a manifest of this format (not checked further)."""
    try:
        data = json.loads((Path(folder) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def load_tracking_manifest(folder: str | os.PathLike, verify: bool = True) -> TrackingManifest:
    """The manifest of an exported tracking model, checked (and the files' sha256 when `verify`)."""
    path, data = read_manifest_json(folder)
    manifest = _parse(path, data)
    if verify:
        verify_graph_files(path, manifest.graphs.values())
    return manifest


def _pair(read: ManifestReader, data: object, key: str) -> tuple[int, int]:
    values = read.get(data, key, list)
    if len(values) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise read.fail(f"{key} must be a list of 2 positive integers, got {values!r}")
    return values[0], values[1]


def _parse(path: Path, data: object) -> TrackingManifest:
    read = ManifestReader(path)
    data = read.header(data, FORMAT, (FORMAT_VERSION,))
    backbone = read.get(data, "backbone", str)
    if backbone not in VARIANTS:
        raise read.fail(f"backbone must be one of {sorted(VARIANTS)}, got {backbone!r}")
    input_dim = _pair(read, data, "input_dim")
    if input_dim != VARIANTS[backbone]:
        raise read.fail(f"input_dim {input_dim} does not fit {backbone} {VARIANTS[backbone]}")
    maps = read.maps(data)
    if [m.name for m in maps] != ["layer2", "layer3"]:
        raise read.fail("maps must be layer2 and layer3")
    crop = read.pixels(read.get(data, "input", dict))
    settings = read.get(data, "refinement", dict)
    parametrization = read.get(settings, "parametrization", str, "refinement")
    if parametrization not in PARAMETRIZATIONS:
        raise read.fail(f"refinement.parametrization must be one of {PARAMETRIZATIONS}")
    step_length = read.numbers(settings, "step_length", "refinement", 2)
    if min(step_length) <= 0:
        raise read.fail(
            f"refinement.step_length must be positive (xy, wh), got {list(step_length)}"
        )
    refinement = TrackingRefineParams(
        iterations=read.count(settings, "iterations", "refinement"),
        step_length=(step_length[0], step_length[1]),
        step_decay=read.number(settings, "step_decay", "refinement", low=0.0, low_open=True),
        parametrization=parametrization,
    )
    source = read.get(data, "checkpoint", dict)
    constructor, epoch = source.get("constructor"), source.get("epoch")
    if constructor is not None and not isinstance(constructor, str):
        raise read.fail("checkpoint.constructor must be a string or null")
    if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool)):
        raise read.fail("checkpoint.epoch must be an integer or null")
    return TrackingManifest(
        folder=path.parent,
        backbone=backbone,
        input_dim=input_dim,
        pred_input_dim=_pair(read, data, "pred_input_dim"),
        pred_inter_dim=_pair(read, data, "pred_inter_dim"),
        maps=maps,
        input=crop,
        refinement=refinement,
        checkpoint=SourceCheckpoint(
            **dataclasses.asdict(read.checkpoint_file(source)),
            constructor=constructor,
            epoch=epoch,
        ),
        graphs=read.graph_entries(read.get(data, "graphs", dict), TRACKING_ROLES, "graphs"),
        opset=read.opset(data),
        custom_opsets=read.custom_opsets(data),
        versions=read.versions(data),
    )
