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
import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from iounet.export.refine_step import RefineParams

MANIFEST_NAME = "manifest.json"
FORMAT = "iounet-model"
FORMAT_VERSION = 3
#: Versions this iounet reads (2: written before the detector graphs; it has none).
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
#: The ONNX opsets (default domain) the graphs are exported at: 20, or 17 for TensorRT 8.5/8.6,
#: whose ONNX parser reads opset 17 at most.
OPSETS = (17, 20)
DEFAULT_OPSET = 20

JSONObject = dict[str, Any]


class ManifestError(ValueError):
    """A model folder whose manifest is missing, malformed or does not match its files."""


class _NonStandardNumber(Exception):
    """A number that standard JSON cannot hold (NaN, an infinity, or a float out of range)."""


def _refuse_constant(token: str) -> NoReturn:
    raise _NonStandardNumber(f"{token} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonStandardNumber(f"{text} is out of the range of a finite number")
    return value


def load_strict_json(path: Path, error: type[ValueError] = ManifestError) -> Any:
    """The value of the standard JSON file at `path`.

    `error` naming the file when the file is not UTF-8 JSON, nests too deeply, or holds a number
    standard JSON cannot hold (NaN, Infinity, -Infinity, or a float beyond the finite range).
    """
    try:
        return json.loads(
            path.read_text(), parse_constant=_refuse_constant, parse_float=_finite_float
        )
    except _NonStandardNumber as problem:
        raise error(f"{path} is not standard JSON: {problem}") from None
    except RecursionError:
        raise error(f"{path} nests its JSON too deeply") from None
    except ValueError as problem:  # JSONDecodeError, UnicodeDecodeError, an overlong integer
        raise error(f"{path} is not valid JSON: {problem}") from problem


@dataclass(frozen=True)
class Category:
    """One class: its COCO category id and name (the label is its position in the list)."""

    id: int
    name: str


@dataclass(frozen=True)
class FeatureMap:
    """One FPN level the backbone graph outputs and the head graphs take: name and stride."""

    name: str
    stride: int


@dataclass(frozen=True)
class InputSpec:
    """What the backbone graph takes and how an image is prepared for it."""

    min_size: int  # the shorter side is resized to this ...
    max_size: int  # ... unless the longer side would exceed this
    size_divisor: int  # images are zero-padded (bottom, right) to a multiple of this
    mean: tuple[float, float, float]  # normalization, applied inside the backbone graph
    std: tuple[float, float, float]
    layout: str = "NCHW"
    dtype: str = "float32"
    color: str = "RGB"
    range: tuple[float, float] = (0.0, 1.0)


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
class TensorSpec:
    """A graph input or output: name, element type and shape (ints or dimension names)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class GraphEntry:
    """One exported graph: its file in the folder, sha256, inputs and outputs."""

    file: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class CheckpointInfo:
    """The training checkpoint the folder was exported from."""

    file: str
    sha256: str
    step: int


class ManifestFile:
    """What a manifest dataclass writes: its fields but `folder`, under its format and version."""

    FORMAT: ClassVar[str] = FORMAT
    FORMAT_VERSION: ClassVar[int] = FORMAT_VERSION

    def to_json(self) -> JSONObject:
        """The manifest as written to ``manifest.json``."""
        data = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "folder"
        }
        return {"format": self.FORMAT, "format_version": self.FORMAT_VERSION, **_plain(data)}

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``manifest.json`` into `folder` (the staging folder of an export)."""
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


@dataclass(frozen=True)
class Manifest(ManifestFile):
    """A checked manifest and the folder it describes."""

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


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def read_manifest_json(folder: str | os.PathLike) -> tuple[Path, Any]:
    """The path and parsed JSON of a model folder's manifest; clear errors when either is amiss."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    if not path.is_file():
        raise ManifestError(f"{folder} is not an exported iounet model: {MANIFEST_NAME} missing")
    return path, load_strict_json(path)


def verify_graph_files(path: Path, entries: Iterable[GraphEntry]) -> None:
    """ManifestError unless every graph file the manifest at `path` lists is there, unchanged."""
    for entry in entries:
        file = path.parent / entry.file
        if not file.is_file():
            raise ManifestError(f"{path} lists {entry.file}, which is missing")
        if sha256_file(file) != entry.sha256:
            raise ManifestError(f"{file} does not match its sha256 in {path} (changed or corrupt)")


def _plain(value: Any) -> Any:
    """Dataclasses, tuples and dicts as JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


class _Reader:
    """Reads typed values out of the JSON object, naming the key of any problem."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, problem: str) -> ManifestError:
        return ManifestError(f"{self.path}: {problem}")

    def get(self, data: Any, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
        name = f"{where}.{key}" if where else key
        if not isinstance(data, dict) or key not in data:
            raise self.fail(f"missing key {name!r}")
        value = data[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(f"{name} must be {_kind_name(kind)}, got {value!r}")
        if not isinstance(value, kind):
            raise self.fail(f"{name} must be {_kind_name(kind)}, got {value!r}")
        return value

    def positive(self, data: Any, key: str, where: str = "") -> int:
        value = self.get(data, key, int, where)
        if value <= 0:
            raise self.fail(f"{_name(where, key)} must be positive, got {value}")
        return value

    def count(self, data: Any, key: str, where: str = "") -> int:
        """An integer >= 0."""
        value = self.get(data, key, int, where)
        if value < 0:
            raise self.fail(f"{_name(where, key)} must be >= 0, got {value}")
        return value

    def number(
        self,
        data: Any,
        key: str,
        where: str,
        low: float = -math.inf,
        high: float = math.inf,
        low_open: bool = False,
    ) -> float:
        """A finite number in [low, high] (low excluded when `low_open`)."""
        name = _name(where, key)
        given = self.get(data, key, (int, float), where)
        if not _is_finite(given):
            raise self.fail(f"{name} must be a finite number, got {given!r}")
        value = float(given)
        if not ((value > low if low_open else value >= low) and value <= high):
            raise self.fail(f"{name} must {_range_text(low, high, low_open)}, got {value:g}")
        return value

    def numbers(self, data: Any, key: str, where: str, length: int) -> tuple[float, ...]:
        values = self.get(data, key, list, where)
        if len(values) != length or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and _is_finite(v)
            for v in values
        ):
            raise self.fail(
                f"{_name(where, key)} must be a list of {length} finite numbers, got {values!r}"
            )
        return tuple(float(v) for v in values)


def _is_finite(value: float) -> bool:
    """Whether a JSON number is a finite float (an integer too large for a float is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _name(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _range_text(low: float, high: float, low_open: bool) -> str:
    if high == math.inf:
        if low == 0:
            return "be positive" if low_open else "be >= 0"
        return f"be {'>' if low_open else '>='} {low:g}"
    if low == -math.inf:
        return f"be <= {high:g}"
    return f"lie in {'(' if low_open else '['}{low:g}, {high:g}]"


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({int: "an integer", float: "a number", str: "a string", list: "a list",
                        dict: "an object"}.get(k, k.__name__) for k in kinds)  # fmt: skip


def _parse(path: Path, data: Any) -> Manifest:
    read = _Reader(path)
    if not isinstance(data, dict):
        raise read.fail("the manifest must be a JSON object")
    if data.get("format") != FORMAT:
        raise read.fail(f"format must be {FORMAT!r}, got {data.get('format')!r}")
    if data.get("format_version") not in READABLE_VERSIONS:
        raise read.fail(
            f"format_version {data.get('format_version')!r} is not supported "
            f"(this iounet reads {list(READABLE_VERSIONS)}); export the model again"
        )
    categories = tuple(
        Category(read.get(c, "id", int, "categories[]"), read.get(c, "name", str, "categories[]"))
        for c in read.get(data, "categories", list)
    )
    if not categories:
        raise read.fail("categories must not be empty")
    if len({c.id for c in categories}) != len(categories):
        raise read.fail("category ids must be unique")
    maps = tuple(
        FeatureMap(read.get(m, "name", str, "maps[]"), read.positive(m, "stride", "maps[]"))
        for m in read.get(data, "maps", list)
    )
    if not maps or len({m.name for m in maps}) != len(maps):
        raise read.fail("maps must be a non-empty list of uniquely named levels")
    spec = read.get(data, "input", dict)
    input_spec = InputSpec(
        min_size=read.positive(spec, "min_size", "input"),
        max_size=read.positive(spec, "max_size", "input"),
        size_divisor=read.positive(spec, "size_divisor", "input"),
        mean=read.numbers(spec, "mean", "input", 3),
        std=read.numbers(spec, "std", "input", 3),
        layout=read.get(spec, "layout", str, "input"),
        dtype=read.get(spec, "dtype", str, "input"),
        color=read.get(spec, "color", str, "input"),
        range=read.numbers(spec, "range", "input", 2),
    )
    if min(input_spec.std) <= 0:
        raise read.fail(f"input.std must be positive, got {list(input_spec.std)}")
    if not input_spec.range[0] < input_spec.range[1]:
        raise read.fail(f"input.range must be [low, high] with low < high, got {input_spec.range}")
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
            read.get(checkpoint, "file", str, "checkpoint"),
            read.get(checkpoint, "sha256", str, "checkpoint"),
            read.count(checkpoint, "step", "checkpoint"),
        ),
        graphs=_parse_graphs(read, read.get(data, "graphs", dict), roles),
        opset=_opset(read, data),
        custom_opsets=_custom_opsets(read, data),
        versions={str(k): str(v) for k, v in read.get(data, "versions", dict).items()},
        detector=detector,
    )


def _opset(read: _Reader, data: JSONObject) -> int:
    """The manifest's ONNX opset (one of ``OPSETS``)."""
    opset = read.get(data, "opset", int)
    if opset not in OPSETS:
        raise read.fail(f"opset must be one of {list(OPSETS)}, got {opset}")
    return opset


def _custom_opsets(read: _Reader, data: JSONObject) -> dict[str, int]:
    """The manifest's custom opset domains and their (positive) versions."""
    opsets = read.get(data, "custom_opsets", dict)
    return {str(domain): read.positive(opsets, domain, "custom_opsets") for domain in opsets}


def _parse_detector(read: _Reader, data: JSONObject) -> DetectorSpec:
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
    read: _Reader, graphs: JSONObject, roles: tuple[str, ...]
) -> dict[str, dict[str, GraphEntry]]:
    if "fp32" not in graphs:
        raise read.fail("graphs must hold at least the fp32 graphs")
    parsed: dict[str, dict[str, GraphEntry]] = {}
    for precision, entries in graphs.items():
        if precision not in PRECISIONS:
            raise read.fail(f"unknown precision {precision!r} in graphs")
        if not isinstance(entries, dict) or set(entries) != set(roles):
            raise read.fail(
                f"graphs.{precision} must hold exactly {list(roles)} (the detector's graphs "
                "come with a detector section, and only with it)"
            )
        parsed[precision] = {}
        for role, entry in entries.items():
            where = f"graphs.{precision}.{role}"
            file = read.get(entry, "file", str, where)
            if Path(file).name != file:
                raise read.fail(f"{where}.file must be a plain file name")
            parsed[precision][role] = GraphEntry(
                file=file,
                sha256=read.get(entry, "sha256", str, where),
                inputs=_tensors(read, read.get(entry, "inputs", list, where), where),
                outputs=_tensors(read, read.get(entry, "outputs", list, where), where),
            )
            outputs = tuple(spec.name for spec in parsed[precision][role].outputs)
            if role in ROLE_OUTPUTS and outputs and outputs != ROLE_OUTPUTS[role]:
                raise read.fail(
                    f"{where} has outputs {list(outputs)}, but a {role} graph has "
                    f"{list(ROLE_OUTPUTS[role])} (graphs swapped?)"
                )
    return parsed


def _tensors(read: _Reader, values: list, where: str) -> tuple[TensorSpec, ...]:
    specs = []
    for value in values:
        shape = read.get(value, "shape", list, f"{where}.inputs")
        if not all(
            isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
            for d in shape
        ):
            raise read.fail(
                f"{where}: tensor shapes hold sizes (integers >= 0) or dimension names, "
                f"got {shape!r}"
            )
        specs.append(
            TensorSpec(
                read.get(value, "name", str, where),
                read.get(value, "dtype", str, where),
                tuple(shape),
            )
        )
    return tuple(specs)
