"""``manifest.json`` of an exported tracking model (format "iounet-tracking-model").

``TrackingManifest`` is the typed contract between ``iounet export`` of a pytracking checkpoint
and ``iounet.runtime.TrackerRefiner``: the architecture (backbone depth, channels), the maps
(layer2 and layer3 with their strides), the crop convention, the refinement defaults, the source
checkpoint and per role the graph file with its sha256, inputs and outputs. It is checked in the
style of ``iounet.export.manifest`` (same reader, sha256 of every file) before anything runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from iounet.export.manifest import (
    MANIFEST_NAME,
    FeatureMap,
    GraphEntry,
    ManifestFile,
    _custom_opsets,
    _opset,
    _Reader,
    _tensors,
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


@dataclass(frozen=True)
class CropSpec:
    """What the backbone graph takes: an RGB crop in [0, 1], normalized inside the graph."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str = "NCHW"
    dtype: str = "float32"
    color: str = "RGB"
    range: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class SourceCheckpoint:
    """The pytracking checkpoint the folder was exported from."""

    file: str
    sha256: str
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
    input: CropSpec
    refinement: TrackingRefineParams
    checkpoint: SourceCheckpoint
    graphs: dict[str, GraphEntry]
    opset: int
    custom_opsets: dict[str, int]
    versions: dict[str, str] = field(default_factory=dict)

    def graph_path(self, role: str) -> Path:
        return self.folder / self.graphs[role].file


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


def _pair(read: _Reader, data: Any, key: str) -> tuple[int, int]:
    values = read.get(data, key, list)
    if len(values) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise read.fail(f"{key} must be a list of 2 positive integers, got {values!r}")
    return values[0], values[1]


def _parse(path: Path, data: Any) -> TrackingManifest:
    read = _Reader(path)
    if not isinstance(data, dict):
        raise read.fail("the manifest must be a JSON object")
    if data.get("format") != FORMAT:
        raise read.fail(f"format must be {FORMAT!r}, got {data.get('format')!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise read.fail(
            f"format_version {data.get('format_version')!r} is not supported "
            f"(this iounet reads {FORMAT_VERSION}); export the model again"
        )
    backbone = read.get(data, "backbone", str)
    if backbone not in VARIANTS:
        raise read.fail(f"backbone must be one of {sorted(VARIANTS)}, got {backbone!r}")
    input_dim = _pair(read, data, "input_dim")
    if input_dim != VARIANTS[backbone]:
        raise read.fail(f"input_dim {input_dim} does not fit {backbone} {VARIANTS[backbone]}")
    maps = tuple(
        FeatureMap(read.get(m, "name", str, "maps[]"), read.positive(m, "stride", "maps[]"))
        for m in read.get(data, "maps", list)
    )
    if [m.name for m in maps] != ["layer2", "layer3"]:
        raise read.fail("maps must be layer2 and layer3")
    spec = read.get(data, "input", dict)
    crop = CropSpec(
        mean=read.numbers(spec, "mean", "input", 3),
        std=read.numbers(spec, "std", "input", 3),
        layout=read.get(spec, "layout", str, "input"),
        dtype=read.get(spec, "dtype", str, "input"),
        color=read.get(spec, "color", str, "input"),
        range=read.numbers(spec, "range", "input", 2),
    )
    if min(crop.std) <= 0:
        raise read.fail(f"input.std must be positive, got {list(crop.std)}")
    if not crop.range[0] < crop.range[1]:
        raise read.fail(f"input.range must be [low, high] with low < high, got {crop.range}")
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
            read.get(source, "file", str, "checkpoint"),
            read.get(source, "sha256", str, "checkpoint"),
            constructor,
            epoch,
        ),
        graphs=_parse_graphs(read, read.get(data, "graphs", dict)),
        opset=_opset(read, data),
        custom_opsets=_custom_opsets(read, data),
        versions={str(k): str(v) for k, v in read.get(data, "versions", dict).items()},
    )


def _parse_graphs(read: _Reader, graphs: dict[str, Any]) -> dict[str, GraphEntry]:
    if set(graphs) != set(TRACKING_ROLES):
        raise read.fail(f"graphs must hold exactly {list(TRACKING_ROLES)}")
    parsed = {}
    for role in TRACKING_ROLES:
        entry, where = graphs[role], f"graphs.{role}"
        file = read.get(entry, "file", str, where)
        if Path(file).name != file:
            raise read.fail(f"{where}.file must be a plain file name")
        parsed[role] = GraphEntry(
            file=file,
            sha256=read.get(entry, "sha256", str, where),
            inputs=_tensors(read, read.get(entry, "inputs", list, where), where),
            outputs=_tensors(read, read.get(entry, "outputs", list, where), where),
        )
    return parsed
