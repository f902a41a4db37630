"""``manifest.json`` of an exported model folder: the contract between export and every backend.

``Manifest`` is a typed, checked object: the classes (label order) with their COCO category ids,
the feature maps (names and strides), the input convention (normalization, resize sizes, size
divisor), the refinement settings, the detector's settings when the folder holds the detector
(a model exported from a joint IoU-Net), and per precision and graph role the file, sha256,
inputs and outputs. Export writes it with ``save``; backends read their settings from it (never from
training's constants). ``load_manifest`` checks all of it against the files before anything runs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from iounet.export.manifest_format import (
    DEFAULT_OPSET,
    OPSETS,
    CheckpointFile,
    FeatureMap,
    GraphEntry,
    JSONObject,
    ManifestError,
    ManifestFile,
    ManifestReader,
    PixelSpec,
    TensorSpec,
    read_manifest_json,
    sha256_file,
    verify_graph_files,
)
from iounet.export.refine_step import RefineParams

__all__ = [
    "DEFAULT_OPSET",
    "DETECTOR_ROLES",
    "FORMAT",
    "FORMAT_VERSION",
    "GRAPH_ROLES",
    "OPSETS",
    "PRECISIONS",
    "READABLE_VERSIONS",
    "ROLE_OUTPUTS",
    "Category",
    "CheckpointInfo",
    "DetectorSpec",
    "FeatureMap",
    "GraphEntry",
    "InputSpec",
    "Manifest",
    "ManifestError",
    "ResizeSpec",
    "TensorSpec",
    "load_manifest",
    "sha256_file",
]

FORMAT = "iounet-model"
FORMAT_VERSION = 3
#: Versions this iounet reads (2: a format without the detector graphs).
READABLE_VERSIONS = (2, 3)
#: The graphs of every exported model (see iounet.export.graphs), by role.
GRAPH_ROLES = ("backbone", "head", "iou_grad", "refine_step")
#: The detector's graphs, in a folder exported from a joint IoU-Net.
DETECTOR_ROLES = ("rpn", "box_head")
#: The outputs each graph but the backbone has, in order (the backbone's are the maps).
ROLE_OUTPUTS = {
    "head": ("iou",),
    "iou_grad": ("iou", "grad"),
    "refine_step": ("rois_next", "iou_next", "grad_next", "active_next"),
    "rpn": ("proposals",),
    "box_head": ("boxes", "scores", "labels"),
}
PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class Category:
    """One class: its COCO category id and name (the label is its position in the list)."""

    id: int
    name: str


@dataclass(frozen=True)
class ResizeSpec:
    """How an image is resized and padded for the backbone graph."""

    min_size: int  # the shorter side is resized to this ...
    max_size: int  # ... unless the longer side would exceed this
    size_divisor: int  # images are zero-padded (bottom, right) to a multiple of this


@dataclass(frozen=True)
class InputSpec(PixelSpec, ResizeSpec):
    """What the backbone graph takes and how an image is prepared for it: the resize rule, then
    the pixel convention (normalization applied inside the backbone graph). The fields come in
    that order (``ResizeSpec``'s first), in the constructor and in ``manifest.json``."""


@dataclass(frozen=True)
class DetectorSpec:
    """What the detector graphs (``rpn``, ``box_head``) compute, as trained and exported.

    The rpn graph keeps the ``pre_nms_top_n`` most objective anchors per level, runs proposal
    NMS at ``rpn_nms_threshold`` and returns at most ``post_nms_top_n`` proposals; the box_head
    graph returns the ``detections_per_image`` most confident raw detections (class score above
    ``score_threshold``), with rows of score ``padding_score`` at the end when fewer pass.
    ``nms_threshold`` is the detector's own NMS (the FPN baseline's post-processing).
    """

    pre_nms_top_n: int
    post_nms_top_n: int
    rpn_nms_threshold: float
    score_threshold: float
    detections_per_image: int
    nms_threshold: float
    padding_score: float


@dataclass(frozen=True)
class CheckpointInfo(CheckpointFile):
    """The training checkpoint the folder was exported from, and its training step."""

    step: int


@dataclass(frozen=True)
class Manifest(ManifestFile):
    """A checked manifest and the folder it describes."""

    FORMAT: ClassVar[str] = FORMAT
    FORMAT_VERSION: ClassVar[int] = FORMAT_VERSION

    folder: Path
    categories: tuple[Category, ...]
    maps: tuple[FeatureMap, ...]
    fpn_channels: int
    pool_size: int
    input: InputSpec
    refinement: RefineParams
    checkpoint: CheckpointInfo
    graphs: dict[str, dict[str, GraphEntry]]
    opset: int
    custom_opsets: dict[str, int]
    versions: dict[str, str] = field(default_factory=dict)
    detector: DetectorSpec | None = None

    @property
    def has_detector(self) -> bool:
        """Whether the folder holds the detector graphs (image in, boxes out)."""
        return self.detector is not None

    def roles(self) -> tuple[str, ...]:
        """The roles of the graphs the folder holds, per precision."""
        return GRAPH_ROLES + (DETECTOR_ROLES if self.has_detector else ())

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.categories]

    @property
    def category_ids(self) -> list[int]:
        return [c.id for c in self.categories]

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def map_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.maps)

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(m.stride for m in self.maps)

    def input_strides(self) -> dict[str, int]:
        """The graph inputs whose height and width follow the image's, with their strides (the
        image: 1)."""
        return {"image": 1, **{level.name: level.stride for level in self.maps}}

    def precisions(self) -> list[str]:
        """The precisions whose four graphs the folder holds."""
        return [p for p in PRECISIONS if p in self.graphs]

    def graph(self, role: str, precision: str = "fp32") -> GraphEntry:
        """The entry of one graph: file, sha256, inputs, outputs."""
        if precision not in self.graphs:
            raise ManifestError(
                f"{self.folder} has no {precision} graphs (it has {self.precisions()}); "
                f"export with `iounet export --fp16` for fp16"
            )
        return self.graphs[precision][role]

    def graph_path(self, role: str, precision: str = "fp32") -> Path:
        return self.folder / self.graph(role, precision).file


def load_manifest(folder: str | os.PathLike, verify: bool = True) -> Manifest:
    """The manifest of an exported model folder, checked (and the files' sha256 when `verify`)."""
    path, data = read_manifest_json(folder)
    manifest = _parse(path, data)
    if verify:
        verify_graph_files(
            path,
            [manifest.graph(role, p) for p in manifest.precisions() for role in manifest.roles()],
        )
    return manifest


def _parse(path: Path, data: object) -> Manifest:
    read = ManifestReader(path)
    data = read.header(data, FORMAT, READABLE_VERSIONS)
    categories = tuple(
        Category(read.get(c, "id", int, "categories[]"), read.get(c, "name", str, "categories[]"))
        for c in read.get(data, "categories", list)
    )
    if not categories:
        raise read.fail("categories must not be empty")
    if len({c.id for c in categories}) != len(categories):
        raise read.fail("category ids must be unique")
    maps = read.maps(data)
    if not maps or len({m.name for m in maps}) != len(maps):
        raise read.fail("maps must be a non-empty list of uniquely named levels")
    spec = read.get(data, "input", dict)
    sizes = {f.name: read.positive(spec, f.name, "input") for f in dataclasses.fields(ResizeSpec)}
    input_spec = InputSpec(**sizes, **dataclasses.asdict(read.pixels(spec)))
    settings = read.get(data, "refinement", dict)
    refinement = RefineParams(
        step=read.number(settings, "step", "refinement", low=0.0, low_open=True),
        iterations=read.count(settings, "iterations", "refinement"),
        early_stop=read.number(settings, "early_stop", "refinement", low=0.0),
        degrade_tolerance=read.number(settings, "degrade_tolerance", "refinement", high=0.0),
    )
    checkpoint = read.get(data, "checkpoint", dict)
    detector = None
    if data.get("detector") is not None:
        detector = _parse_detector(read, read.get(data, "detector", dict))
    roles = GRAPH_ROLES + (DETECTOR_ROLES if detector else ())
    return Manifest(
        folder=path.parent,
        categories=categories,
        maps=maps,
        fpn_channels=read.positive(data, "fpn_channels"),
        pool_size=read.positive(data, "pool_size"),
        input=input_spec,
        refinement=refinement,
        checkpoint=CheckpointInfo(
            **dataclasses.asdict(read.checkpoint_file(checkpoint)),
            step=read.count(checkpoint, "step", "checkpoint"),
        ),
        graphs=_parse_graphs(read, read.get(data, "graphs", dict), roles),
        opset=read.opset(data),
        custom_opsets=read.custom_opsets(data),
        versions=read.versions(data),
        detector=detector,
    )


def _parse_detector(read: ManifestReader, data: JSONObject) -> DetectorSpec:
    where = "detector"
    spec = DetectorSpec(
        pre_nms_top_n=read.positive(data, "pre_nms_top_n", where),
        post_nms_top_n=read.positive(data, "post_nms_top_n", where),
        rpn_nms_threshold=read.number(data, "rpn_nms_threshold", where, 0.0, 1.0),
        score_threshold=read.number(data, "score_threshold", where, 0.0, 1.0),
        detections_per_image=read.positive(data, "detections_per_image", where),
        nms_threshold=read.number(data, "nms_threshold", where, 0.0, 1.0),
        padding_score=read.number(data, "padding_score", where),
    )
    if spec.padding_score >= spec.score_threshold:
        raise read.fail(
            f"detector.padding_score must lie below detector.score_threshold "
            f"({spec.score_threshold:g}), got {spec.padding_score:g}"
        )
    return spec


def _parse_graphs(
    read: ManifestReader, graphs: JSONObject, roles: tuple[str, ...]
) -> dict[str, dict[str, GraphEntry]]:
    if "fp32" not in graphs:
        raise read.fail("graphs must hold at least the fp32 graphs")
    parsed: dict[str, dict[str, GraphEntry]] = {}
    for precision, entries in graphs.items():
        if precision not in PRECISIONS:
            raise read.fail(f"unknown precision {precision!r} in graphs")
        hint = " (the detector's graphs come with a detector section, and only with it)"
        parsed[precision] = read.graph_entries(entries, roles, f"graphs.{precision}", hint)
        for role, entry in parsed[precision].items():
            outputs = tuple(spec.name for spec in entry.outputs)
            if role in ROLE_OUTPUTS and outputs and outputs != ROLE_OUTPUTS[role]:
                raise read.fail(
                    f"graphs.{precision}.{role} has outputs {list(outputs)}, but a {role} graph "
                    f"has {list(ROLE_OUTPUTS[role])} (graphs swapped?)"
                )
    return parsed
