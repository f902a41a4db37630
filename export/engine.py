"""ONNX graphs of an exported model -> TensorRT engines, and the metadata that keeps them honest.

``build_engines`` writes ``DIR/engines/<precision>/<role>.engine`` for every graph of the model
folder (the four of a detection model, six with the detector of a joint IoU-Net, the seven of a
tracking model) and ``engines.json`` beside them: the TensorRT, plugin library and iounet
versions, and per engine its optimization profile, the sha256 of the ONNX it was built from and
of the engine file. The runtime checks that metadata against the model folder and its TensorRT
before it loads anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, NoReturn, TypedDict, cast

from iounet import version
from iounet.export.manifest import DETECTOR_ROLES, GRAPH_ROLES, PRECISIONS, Manifest
from iounet.export.manifest_format import load_strict_json, sha256_file
from iounet.export.model_folder import load_model_manifest
from iounet.files import atomic_path, check_output
from iounet.plugins.trt_loader import import_tensorrt, load_plugin_library, plugin_library_version

if TYPE_CHECKING:
    import tensorrt

    from iounet.export.tracking_manifest import TrackingManifest

ENGINES_FOLDER = "engines"
METADATA_NAME = "engines.json"
FORMAT = "iounet-engines"
FORMAT_VERSION = 1
#: Inputs whose first dimension is the number of boxes K; their other dimensions are fixed.
BOX_INPUTS = ("rois", "labels", "iou", "grad", "active")
#: The same for the graphs of a tracking model (proposals, or the boxes of a refinement step).
TRACKING_BOX_INPUTS = ("proposals", "boxes", "rel")
#: The detector's proposals (the box_head input): 1 .. the manifest's post_nms_top_n rows,
#: whatever ``--boxes`` says (the rpn graph returns at most that many).
PROPOSALS = "proposals"
#: The oldest TensorRT whose ONNX parser reads the graphs of each export opset (onnx-tensorrt's
#: operator lists: TensorRT 8.5 and 8.6 read opsets up to 17, TensorRT 10.0 opsets 9 to 20).
TENSORRT_FOR_OPSET = {17: "8.5", 20: "10"}

Range = tuple[int, int, int]
SizeRange = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
Shapes = tuple[list[int], list[int], list[int]]


class FileEntry(TypedDict):
    """A file of the folder and its sha256."""

    file: str
    sha256: str


class ProfileEntry(TypedDict):
    """One input's shapes in an engine's optimization profile."""

    min: list[int]
    opt: list[int]
    max: list[int]


class EngineEntry(FileEntry):
    """One engine of ``engines.json``: its file, the ONNX graph it was built from and its
    optimization profile, by input name."""

    onnx: FileEntry
    profile: dict[str, ProfileEntry]


class EngineMetadata(TypedDict):
    """``engines.json``: how and from what the engines of one precision were built."""

    format: str
    format_version: int
    precision: str
    versions: dict[str, str]
    boxes: list[int]
    image_size: list[list[int]]
    workspace_mb: int | None
    engines: dict[str, EngineEntry]


def _precision_hint(manifest: Manifest | TrackingManifest) -> str:
    """How to get the graphs of a precision the model folder lacks."""
    if isinstance(manifest, Manifest):
        return "export the model with `iounet export --fp16` to build fp16 engines"
    return "tracking models are exported in fp32 only"


def _box_inputs(manifest: Manifest | TrackingManifest) -> tuple[str, ...]:
    """The inputs whose first dimension is the number of boxes (``--boxes``)."""
    return BOX_INPUTS if isinstance(manifest, Manifest) else TRACKING_BOX_INPUTS


def _counts(manifest: Manifest | TrackingManifest) -> dict[str, Range]:
    """The inputs whose first dimension has its own (min, opt, max), not ``--boxes``."""
    if isinstance(manifest, Manifest) and manifest.detector is not None:
        top_n = manifest.detector.post_nms_top_n
        return {PROPOSALS: (1, top_n, top_n)}
    return {}


def tensorrt_note(opset: int) -> str:
    """Which TensorRT parses the graphs of a model folder exported at ONNX opset `opset`."""
    note = f"graphs at opset {opset}: TensorRT {TENSORRT_FOR_OPSET[opset]} or newer"
    if opset > 17:  # beyond the ONNX parser of TensorRT 8.5/8.6
        note += "; export with --opset 17 for TensorRT 8.5/8.6"
    return note


def parse_range(text: str, name: str) -> Range:
    """``"MIN:OPT:MAX"`` or ``"N"`` (all three N) as positive ints with min <= opt <= max."""
    parts = text.split(":")
    if len(parts) not in (1, 3) or not all(re.fullmatch(r"\d+", p.strip()) for p in parts):
        raise ValueError(f"{name} must be MIN:OPT:MAX or N (positive integers), got {text!r}")
    values = [int(p) for p in parts] * (3 if len(parts) == 1 else 1)
    _check_ordered(values, name, text)
    return values[0], values[1], values[2]


def parse_image_size(text: str) -> SizeRange:
    """``"HxW"`` or ``"HxW:HxW:HxW"`` (min, opt, max) with each of H and W positive and ordered."""
    name = "--image-size"
    parts = text.split(":")
    sizes = [re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", p) for p in parts]
    if len(parts) not in (1, 3) or not all(sizes):
        raise ValueError(f"{name} must be HxW or HxW:HxW:HxW (positive integers), got {text!r}")
    pairs = [(int(m.group(1)), int(m.group(2))) for m in sizes] * (3 if len(parts) == 1 else 1)
    _check_ordered([h for h, _ in pairs], f"{name} (heights)", text)
    _check_ordered([w for _, w in pairs], f"{name} (widths)", text)
    return pairs[0], pairs[1], pairs[2]


def _check_ordered(values: list[int], name: str, text: str) -> None:
    if min(values) < 1:
        raise ValueError(f"{name} must be positive, got {text!r}")
    if not values[0] <= values[1] <= values[2]:
        raise ValueError(f"{name} must have min <= opt <= max, got {text!r}")


def engine_profiles(
    manifest: Manifest | TrackingManifest,
    role: str,
    boxes: Range,
    image_size: SizeRange,
    precision: str = "fp32",
) -> dict[str, Shapes]:
    """The (min, opt, max) shape of every input of one graph for the given ranges.

    image: (1, 3, H, W); map p_l: (1, C, ceil(H / s), ceil(W / s)) with s its stride (tracking:
    layer2/layer3 and the IoU features feat3/feat4 of them, strides 8/16); the first dimension of
    the box inputs: the number of boxes; the first dimension of the detector's proposals (box_head):
    1 .. the manifest's post_nms_top_n (opt: post_nms_top_n), unless the graph fixes it; every
    other dimension (the modulation vectors, a step's settings, the detector's image_size (2,))
    as the manifest has it.
    """
    strides, counts, box_inputs = manifest.input_strides(), _counts(manifest), _box_inputs(manifest)
    profiles: dict[str, Shapes] = {}
    for tensor in manifest.graph(role, precision).inputs:
        name, shape = tensor.name, list(tensor.shape)
        where = f"{manifest.folder}: {role} input {name}"
        if name in strides:
            stride = strides[name]
            channels = _fixed(shape[1:2], where)
            profiles[name] = tuple(
                [1, *channels, math.ceil(h / stride), math.ceil(w / stride)] for h, w in image_size
            )
        elif name in counts and shape and not _is_size(shape[0]):
            rest = _fixed(shape[1:], where)
            profiles[name] = tuple([k, *rest] for k in counts[name])
        elif name in box_inputs:
            rest = _fixed(shape[1:], where)
            profiles[name] = tuple([k, *rest] for k in boxes)
        else:
            fixed = _fixed(shape, where)
            profiles[name] = (fixed, list(fixed), list(fixed))
    return profiles


def _is_size(dim: int | str) -> bool:
    return isinstance(dim, int) and not isinstance(dim, bool) and dim > 0


def _fixed(dims: list[int | str], where: str) -> list[int]:
    if not all(_is_size(d) for d in dims):
        raise ValueError(f"{where} has dimensions {dims}; expected fixed positive sizes")
    return list(dims)


def engine_folder(manifest: Manifest | TrackingManifest, precision: str) -> Path:
    """``DIR/engines/<precision>`` of a model folder."""
    return manifest.folder / ENGINES_FOLDER / precision


def build_engines(
    model_dir: str | os.PathLike,
    precision: str,
    boxes: Range,
    image_size: SizeRange,
    workspace_mb: int | None = None,
    timing_cache: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Build the engines of an exported model (detection: four, six with a joint IoU-Net's
    detector; tracking: seven) with TensorRT; return their folder.

    One optimization profile per engine (see ``engine_profiles``); the network is strongly typed,
    so fp16 engines come from the fp16 graphs, and fp32 engines do not use TensorFloat-32.
    ``workspace_mb`` limits TensorRT's workspace; ``timing_cache`` is read when it exists and
    written back. An existing folder is replaced only with ``force``; a failed build leaves it
    as it was.
    """
    manifest = load_model_manifest(model_dir)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision not in manifest.precisions():
        hint = _precision_hint(manifest)
        raise ValueError(f"{manifest.folder} has no {precision} graphs: {hint}")
    if workspace_mb is not None and workspace_mb < 1:
        raise ValueError(f"the workspace must be a positive number of MB, got {workspace_mb}")
    output = check_output(
        engine_folder(manifest, precision), force, _is_engine_folder, "engine folder", folder=True
    )
    trt = import_tensorrt()
    plugin_version = plugin_library_version(load_plugin_library())
    builder = _Builder(
        trt,
        workspace_mb,
        Path(timing_cache) if timing_cache else None,
        tensorrt_note(manifest.opset),
    )

    with output.staged() as staging:
        engines: dict[str, EngineEntry] = {}
        for role in manifest.roles():
            graph = manifest.graph(role, precision)
            profile = engine_profiles(manifest, role, boxes, image_size, precision)
            data = builder.build(manifest.folder / graph.file, precision, profile)
            file = f"{role}.engine"
            _write(staging / file, data)
            engines[role] = {
                "file": file,
                "sha256": hashlib.sha256(data).hexdigest(),
                "onnx": {"file": graph.file, "sha256": graph.sha256},
                "profile": {
                    name: ProfileEntry(min=low, opt=opt, max=high)
                    for name, (low, opt, high) in profile.items()
                },
            }
        metadata: EngineMetadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "precision": precision,
            "versions": {
                "tensorrt": trt.__version__,
                "plugin_library": plugin_version,
                "iounet": version.__version__,
            },
            "boxes": list(boxes),
            "image_size": [list(size) for size in image_size],
            "workspace_mb": workspace_mb,
            "engines": engines,
        }
        _write(staging / METADATA_NAME, (json.dumps(metadata, indent=2) + "\n").encode())
        builder.save_timing_cache()
    return output.path


def _is_engine_folder(folder: Path) -> bool:
    """Whether `folder` holds engines this package built (what ``force`` may replace)."""
    return (folder / METADATA_NAME).is_file()


class _Builder:
    """One TensorRT builder, logger and (optional) timing cache shared by a folder's builds;
    `opset_note` (``tensorrt_note``) ends the message of a graph TensorRT cannot parse."""

    def __init__(
        self,
        trt: ModuleType,
        workspace_mb: int | None,
        timing_cache: Path | None,
        opset_note: str,
    ) -> None:
        self.trt = trt
        self.opset_note = opset_note
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.builder = trt.Builder(self.logger)
        self.workspace_mb = workspace_mb
        self.cache_path = timing_cache
        self.cache = None

    def build(self, onnx_path: Path, precision: str, profile: dict[str, Shapes]) -> bytes:
        """The serialized engine of one ONNX file with one optimization profile."""
        trt = self.trt
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        flags = 0 if strongly_typed is None else 1 << int(strongly_typed)
        network = self.builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            messages = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ValueError(
                f"TensorRT {trt.__version__} cannot parse {onnx_path}: "
                f"{messages or 'no message'} ({self.opset_note})"
            )
        config = self.builder.create_builder_config()
        if precision == "fp32":
            config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32, not TensorFloat-32
        if self.workspace_mb is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mb << 20)
        self._attach_timing_cache(config)
        optimization_profile = self.builder.create_optimization_profile()
        for index in range(network.num_inputs):
            tensor = network.get_input(index)
            if tensor.name not in profile:
                raise ValueError(f"{onnx_path} has input {tensor.name!r}, which the manifest lacks")
            if any(d < 0 for d in tensor.shape):
                optimization_profile.set_shape(tensor.name, *profile[tensor.name])
        config.add_optimization_profile(optimization_profile)
        serialized = self.builder.build_serialized_network(network, config)
        if serialized is None:
            raise ValueError(
                f"TensorRT could not build an engine from {onnx_path} (its messages are above); "
                f"a larger --workspace may help"
            )
        return bytes(serialized)

    def _attach_timing_cache(self, config: tensorrt.IBuilderConfig) -> None:
        if self.cache_path is None:
            return
        if self.cache is None:
            data = self.cache_path.read_bytes() if self.cache_path.is_file() else b""
            self.cache = config.create_timing_cache(data)
        if not config.set_timing_cache(self.cache, False):
            raise ValueError(
                f"timing cache {self.cache_path} was made by another TensorRT or GPU: delete it"
            )

    def save_timing_cache(self) -> None:
        """Write the timing cache back to its file (atomically), when one is used."""
        if self.cache is not None:
            _write(self.cache_path, bytes(self.cache.serialize()))


def _write(path: Path, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def load_engine_metadata(
    folder: str | os.PathLike, roles: tuple[str, ...] = GRAPH_ROLES
) -> EngineMetadata:
    """The checked ``engines.json`` of an engine folder with the engines of `roles` (those of a
    detection model unless told; ``Manifest.roles()`` for a folder that may hold the detector,
    ``TRACKING_ROLES`` for a tracking model)."""
    folder = Path(folder)
    path = folder / METADATA_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no TensorRT engines in {folder} ({METADATA_NAME} missing): "
            f"build them with `iounet build-engine`"
        )
    data = load_strict_json(path, ValueError)
    return _checked_metadata(path, data, roles)


def _checked_metadata(path: Path, data: object, roles: tuple[str, ...]) -> EngineMetadata:
    """`data` (the JSON of ``engines.json`` at `path`) once its structure is checked."""

    def fail(problem: str) -> NoReturn:
        raise ValueError(f"{path}: {problem}; rebuild the engines with `iounet build-engine`")

    if not isinstance(data, dict):
        fail("the metadata must be a JSON object")
    if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        fail(f"expected format {FORMAT!r} version {FORMAT_VERSION}")
    if data.get("precision") not in PRECISIONS:
        fail(f"precision must be one of {PRECISIONS}")
    versions = data.get("versions")
    if not (
        isinstance(versions, dict)
        and all(isinstance(versions.get(k), str) for k in ("tensorrt", "plugin_library", "iounet"))
    ):
        fail("versions must hold the tensorrt, plugin_library and iounet versions")
    if not _is_int_list(data.get("boxes"), 3):
        fail("boxes must be [min, opt, max]")
    sizes = data.get("image_size")
    if not (isinstance(sizes, list) and len(sizes) == 3 and all(_is_int_list(s, 2) for s in sizes)):
        fail("image_size must be [[h, w], [h, w], [h, w]] (min, opt, max)")
    workspace = data.get("workspace_mb")
    if workspace is not None and not (_is_int_list([workspace]) and workspace > 0):
        fail(f"workspace_mb must be a positive integer or null, got {workspace!r}")
    engines = data.get("engines")
    if not isinstance(engines, dict) or set(engines) != set(roles):
        fail(f"engines must hold exactly {list(roles)}")
    for role, entry in engines.items():
        if not (
            isinstance(entry, dict)
            and _is_file_entry(entry)
            and _is_file_entry(entry.get("onnx"))
            and isinstance(entry.get("profile"), dict)
            and all(_is_profile(p) for p in entry["profile"].values())
        ):
            fail(f"engines.{role} needs file, sha256, onnx {{file, sha256}} and profile")
    return cast(EngineMetadata, data)


def _is_int_list(value: object, length: int | None = None) -> bool:
    return (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def _is_file_entry(entry: object) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("file"), str)
        and Path(entry["file"]).name == entry["file"]
        and isinstance(entry.get("sha256"), str)
    )


def _is_profile(profile: object) -> bool:
    return (
        isinstance(profile, dict)
        and all(_is_int_list(profile.get(k)) for k in ("min", "opt", "max"))
        and len(profile["min"]) == len(profile["opt"]) == len(profile["max"])
    )


def check_engine_metadata(
    metadata: EngineMetadata,
    *,
    tensorrt_version: str,
    plugin_version: str,
    manifest: Manifest | TrackingManifest,
) -> None:
    """Raise ValueError unless the engines fit this TensorRT, plugin library and model export.

    The engine files are those of ``engine_folder(manifest, metadata["precision"])``; each must
    exist and match its sha256.
    """
    precision = metadata["precision"]
    folder = engine_folder(manifest, precision)
    path = folder / METADATA_NAME
    rebuild = _rebuild_hint(manifest, metadata)
    built = metadata["versions"]
    if built["tensorrt"] != tensorrt_version:
        raise ValueError(
            f"{path}: the engines were built with TensorRT {built['tensorrt']}, "
            f"this is TensorRT {tensorrt_version}; {rebuild}"
        )
    if built["plugin_library"] != plugin_version:
        raise ValueError(
            f"{path}: the engines were built with plugin library {built['plugin_library']}, "
            f"the loaded one is {plugin_version}; {rebuild}"
        )
    roles = manifest.roles()
    if set(metadata["engines"]) != set(roles):
        raise ValueError(f"{path}: the engines are not those of {manifest.folder}; {rebuild}")
    for role in roles:
        entry = metadata["engines"][role]
        if entry["onnx"]["sha256"] != manifest.graph(role, precision).sha256:
            raise ValueError(
                f"{path}: the {role} engine was built from another export of the model "
                f"({entry['onnx']['file']} has changed since); {rebuild}"
            )
        engine = folder / entry["file"]
        if not engine.is_file():
            raise ValueError(f"{path} lists {engine}, which is missing; {rebuild}")
        if sha256_file(engine) != entry["sha256"]:
            raise ValueError(
                f"{engine} does not match its sha256 in {path} (changed or corrupt); {rebuild}"
            )


def _rebuild_hint(manifest: Manifest | TrackingManifest, metadata: EngineMetadata) -> str:
    boxes = ":".join(str(b) for b in metadata["boxes"])
    sizes = ":".join(f"{h}x{w}" for h, w in metadata["image_size"])
    return (
        f"rebuild them with `iounet build-engine {manifest.folder} --precision "
        f"{metadata['precision']} --boxes {boxes} --image-size {sizes} --force`"
    )


def check_within_profile(
    metadata: EngineMetadata, role: str, name: str, shape: tuple[int, ...]
) -> None:
    """Raise ValueError when an input shape lies outside the engine's optimization profile."""
    profile = metadata["engines"][role]["profile"].get(name)
    if profile is None:
        raise ValueError(f"the {role} engine has no input {name!r}")
    low, high = profile["min"], profile["max"]
    shape = tuple(int(d) for d in shape)
    if len(shape) != len(low):
        raise ValueError(f"{name} has shape {shape}, the {role} engine expects {len(low)} dims")
    outside = [i for i, d in enumerate(shape) if not low[i] <= d <= high[i]]
    if not outside:
        return
    if role in DETECTOR_ROLES and name == PROPOSALS and outside == [0]:
        count = shape[0]
        if count > high[0]:
            raise ValueError(
                f"{count} proposals exceed the {role} engine's profile (max {high[0]}, the "
                f"detector's post_nms_top_n); pass at most {high[0]}"
            )
        raise ValueError(
            f"{count} proposals are fewer than the {role} engine's profile allows (min {low[0]})"
        )
    if name in BOX_INPUTS + TRACKING_BOX_INPUTS and outside == [0]:
        count = shape[0]
        if count > high[0]:
            raise ValueError(
                f"{count} boxes exceed the engine's profile (max {high[0]}); rebuild with --boxes"
            )
        raise ValueError(
            f"{count} boxes are fewer than the engine's profile allows (min {low[0]}); "
            f"rebuild with --boxes"
        )
    if len(shape) == 4 and set(outside) <= {2, 3}:  # the image or a feature map
        what = "image size" if name == "image" else f"feature map {name} size"
        raise ValueError(
            f"{what} {shape[2]}x{shape[3]} is outside the engine's profile "
            f"(min {low[2]}x{low[3]}, max {high[2]}x{high[3]}); rebuild with --image-size"
        )
    raise ValueError(
        f"{name} of shape {shape} is outside the {role} engine's profile "
        f"(min {tuple(low)}, max {tuple(high)})"
    )
