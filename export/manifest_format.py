"""What every ``manifest.json`` of a model folder shares, detection and tracking alike.

Strict JSON loading, the format header, the typed reader that names the key of any problem, the
graph entries (file, sha256, tensor signatures) and the check of the files against them, the
pixel convention of the backbone's input, the source checkpoint (and the check that a file is
it), and writing a manifest dataclass back to JSON. ``iounet.export.manifest`` and
``iounet.export.tracking_manifest`` add their own fields, roles and checks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NoReturn, Protocol, TypeVar

MANIFEST_NAME = "manifest.json"
#: The ONNX opsets (default domain) the graphs are exported at: 20, or 17 for TensorRT 8.5/8.6,
#: whose ONNX parser reads opset 17 at most.
OPSETS = (17, 20)
DEFAULT_OPSET = 20

#: A JSON object as ``json.loads`` gives it (its values are checked where they are read).
JSONObject = dict[str, object]
#: The type a value read out of a manifest must have.
T = TypeVar("T")


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


def load_strict_json(path: Path, error: type[ValueError] = ManifestError) -> object:
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
class FeatureMap:
    """One feature map the backbone graph outputs and other graphs take: name and stride."""

    name: str
    stride: int


@dataclass(frozen=True)
class PixelSpec:
    """How the backbone graph takes its image: layout, type, colour order and value range, and
    the normalization applied inside the graph."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str = "NCHW"
    dtype: str = "float32"
    color: str = "RGB"
    range: tuple[float, float] = (0.0, 1.0)


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
class CheckpointFile:
    """The checkpoint a folder was exported from: its file name and sha256."""

    file: str
    sha256: str


class ExportedModel(Protocol):
    """A checked manifest: the folder it describes and the checkpoint it was exported from."""

    @property
    def folder(self) -> Path: ...

    @property
    def checkpoint(self) -> CheckpointFile: ...


class ManifestFile:
    """What a manifest dataclass writes: its fields but `folder`, under its format and version."""

    FORMAT: ClassVar[str]
    FORMAT_VERSION: ClassVar[int]

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


def _plain(value: object) -> object:
    """Dataclasses, tuples and dicts as JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest_json(folder: str | os.PathLike) -> tuple[Path, object]:
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


def check_exported_from(manifest: ExportedModel, checkpoint: str | os.PathLike) -> None:
    """ValueError unless `checkpoint` is the file the model folder was exported from."""
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    if sha256_file(checkpoint) != manifest.checkpoint.sha256:
        raise ValueError(f"{manifest.folder} was not exported from {checkpoint} (sha256 differs)")


class ManifestReader:
    """Reads typed values out of a manifest's JSON, naming the key of any problem."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, problem: str) -> ManifestError:
        """The error for `problem` in this manifest (to raise)."""
        return ManifestError(f"{self.path}: {problem}")

    def header(self, data: object, format_name: str, versions: tuple[int, ...]) -> JSONObject:
        """`data` if it is a JSON object of format `format_name` at one of `versions`."""
        if not isinstance(data, dict):
            raise self.fail("the manifest must be a JSON object")
        if data.get("format") != format_name:
            raise self.fail(f"format must be {format_name!r}, got {data.get('format')!r}")
        if data.get("format_version") not in versions:
            raise self.fail(
                f"format_version {data.get('format_version')!r} is not supported "
                f"(this iounet reads {list(versions)}); export the model again"
            )
        return data

    def get(
        self, data: object, key: str, kind: type[T] | tuple[type[T], ...], where: str = ""
    ) -> T:
        """`data[key]`, which must be of `kind` (a bool is no number)."""
        name = _name(where, key)
        if not isinstance(data, dict) or key not in data:
            raise self.fail(f"missing key {name!r}")
        value = data[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(f"{name} must be {_kind_name(kind)}, got {value!r}")
        if not isinstance(value, kind):
            raise self.fail(f"{name} must be {_kind_name(kind)}, got {value!r}")
        return value

    def positive(self, data: object, key: str, where: str = "") -> int:
        """An integer > 0."""
        value = self.get(data, key, int, where)
        if value <= 0:
            raise self.fail(f"{_name(where, key)} must be positive, got {value}")
        return value

    def count(self, data: object, key: str, where: str = "") -> int:
        """An integer >= 0."""
        value = self.get(data, key, int, where)
        if value < 0:
            raise self.fail(f"{_name(where, key)} must be >= 0, got {value}")
        return value

    def number(
        self,
        data: object,
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
        problem = range_problem(value, low, high, low_open)
        if problem:
            raise self.fail(f"{name} must {problem}, got {value:g}")
        return value

    def numbers(self, data: object, key: str, where: str, length: int) -> tuple[float, ...]:
        """A list of `length` finite numbers."""
        values = self.get(data, key, list, where)
        if len(values) != length or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and _is_finite(v)
            for v in values
        ):
            raise self.fail(
                f"{_name(where, key)} must be a list of {length} finite numbers, got {values!r}"
            )
        return tuple(float(v) for v in values)

    def maps(self, data: JSONObject) -> tuple[FeatureMap, ...]:
        """The ``maps`` list: each a name and a positive stride."""
        return tuple(
            FeatureMap(self.get(m, "name", str, "maps[]"), self.positive(m, "stride", "maps[]"))
            for m in self.get(data, "maps", list)
        )

    def pixels(self, spec: JSONObject, where: str = "input") -> PixelSpec:
        """The pixel convention in `spec`: positive std, a range [low, high] with low < high."""
        pixels = PixelSpec(
            mean=self.numbers(spec, "mean", where, 3),
            std=self.numbers(spec, "std", where, 3),
            layout=self.get(spec, "layout", str, where),
            dtype=self.get(spec, "dtype", str, where),
            color=self.get(spec, "color", str, where),
            range=self.numbers(spec, "range", where, 2),
        )
        if min(pixels.std) <= 0:
            raise self.fail(f"{where}.std must be positive, got {list(pixels.std)}")
        if not pixels.range[0] < pixels.range[1]:
            raise self.fail(
                f"{where}.range must be [low, high] with low < high, got {pixels.range}"
            )
        return pixels

    def checkpoint_file(self, source: JSONObject, where: str = "checkpoint") -> CheckpointFile:
        """The checkpoint's file name and sha256 in `source`."""
        return CheckpointFile(
            self.get(source, "file", str, where), self.get(source, "sha256", str, where)
        )

    def graph_entry(self, entry: object, where: str) -> GraphEntry:
        """One graph's entry: a plain file name, its sha256, its inputs and outputs."""
        file = self.get(entry, "file", str, where)
        if Path(file).name != file:
            raise self.fail(f"{where}.file must be a plain file name")
        return GraphEntry(
            file=file,
            sha256=self.get(entry, "sha256", str, where),
            inputs=self._tensors(self.get(entry, "inputs", list, where), where),
            outputs=self._tensors(self.get(entry, "outputs", list, where), where),
        )

    def graph_entries(
        self, entries: object, roles: tuple[str, ...], where: str, hint: str = ""
    ) -> dict[str, GraphEntry]:
        """The entries of the graphs of `roles`, by role, from `entries` (at `where`), which must
        hold exactly those; `hint` ends the message when it does not."""
        if not isinstance(entries, dict) or set(entries) != set(roles):
            raise self.fail(f"{where} must hold exactly {list(roles)}{hint}")
        return {role: self.graph_entry(entries[role], f"{where}.{role}") for role in roles}

    def opset(self, data: JSONObject) -> int:
        """The manifest's ONNX opset (one of ``OPSETS``)."""
        opset = self.get(data, "opset", int)
        if opset not in OPSETS:
            raise self.fail(f"opset must be one of {list(OPSETS)}, got {opset}")
        return opset

    def custom_opsets(self, data: JSONObject) -> dict[str, int]:
        """The manifest's custom opset domains and their (positive) versions."""
        opsets = self.get(data, "custom_opsets", dict)
        return {str(domain): self.positive(opsets, domain, "custom_opsets") for domain in opsets}

    def versions(self, data: JSONObject) -> dict[str, str]:
        """The versions of the software that exported the folder, by name."""
        return {str(k): str(v) for k, v in self.get(data, "versions", dict).items()}

    def _tensors(self, values: list, where: str) -> tuple[TensorSpec, ...]:
        specs = []
        for value in values:
            shape = self.get(value, "shape", list, f"{where}.inputs")
            if not all(
                isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
                for d in shape
            ):
                raise self.fail(
                    f"{where}: tensor shapes hold sizes (integers >= 0) or dimension names, "
                    f"got {shape!r}"
                )
            specs.append(
                TensorSpec(
                    self.get(value, "name", str, where),
                    self.get(value, "dtype", str, where),
                    tuple(shape),
                )
            )
        return tuple(specs)


def range_problem(
    value: float, low: float = -math.inf, high: float = math.inf, low_open: bool = False
) -> str | None:
    """What `value` must do when it is not a finite number in [low, high] (low excluded when
    `low_open`): "be a finite number", "be positive", "lie in [0, 1]", ...; None when it is."""
    if not _is_finite(value):
        return "be a finite number"
    if (value > low if low_open else value >= low) and value <= high:
        return None
    return _range_text(low, high, low_open)


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
