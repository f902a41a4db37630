"""The TensorRT backend: the engines of ``iounet build-engine`` on one CUDA stream.

Every tensor is a torch CUDA tensor whose memory TensorRT reads and writes directly, and every
engine call is enqueued on ``torch.cuda.current_stream()``: nothing waits for the GPU until the
caller reads a result, except for an output whose shape depends on the data (the detector's
proposals), whose memory TensorRT asks for through an output allocator once it knows the shape.
TensorRT is imported when a backend is created, not with this module.
"""

from __future__ import annotations

import math
import os
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from iounet.export.engine import (
    EngineMetadata,
    check_engine_metadata,
    check_within_profile,
    engine_folder,
    load_engine_metadata,
)
from iounet.export.manifest import Manifest, load_manifest
from iounet.plugins.trt_loader import import_tensorrt, load_plugin_library, plugin_library_version
from iounet.runtime.backend import Backend, Maps
from iounet.runtime.refinement import RefineState, Step, StepSettings

if TYPE_CHECKING:
    import tensorrt

    from iounet.export.tracking_manifest import TrackingManifest

#: Tensors by name: an engine's inputs or outputs.
NamedTensors = dict[str, Tensor]
#: TensorRT data type names -> torch dtypes.
_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}


def _current_device() -> torch.device:
    """The CUDA device the engines run on (the current one)."""
    return torch.device("cuda", torch.cuda.current_device())


def _stream_handle(device: torch.device) -> int:
    """The handle of the current CUDA stream of `device` (0 for a device without streams)."""
    if device.type != "cuda":
        return 0
    return torch.cuda.current_stream(device).cuda_stream


class ShapedOutputs(Protocol):
    """The outputs TensorRT sizes while an engine runs (``_output_allocator``)."""

    def begin(self, name: str, dtype: torch.dtype, device: torch.device) -> None:
        """Expect output `name` of `dtype` on `device` from the next run."""

    def result(self, name: str) -> Tensor:
        """Output `name` of the run, at the shape TensorRT gave it."""


def _output_allocator(trt: ModuleType, role: str) -> ShapedOutputs:
    """A ``trt.IOutputAllocator`` that gives the outputs whose shape depends on the data a new
    torch tensor each call (a result is never overwritten by the next call).

    ``begin(name, dtype, device)`` before the engine runs; TensorRT then calls
    ``reallocate_output(_async)`` for the bytes and ``notify_shape`` with the shape, and
    ``result(name)`` is the output as a tensor of that shape.
    """

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.pending: dict[str, tuple[torch.dtype, torch.device]] = {}
            self.buffers: NamedTensors = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def begin(self, name: str, dtype: torch.dtype, device: torch.device) -> None:
            self.pending[name] = (dtype, device)
            self.buffers.pop(name, None)
            self.shapes.pop(name, None)

        def reallocate_output(self, name: str, memory: int, size: int, alignment: int) -> int:
            if name not in self.pending:
                return 0  # TensorRT reports the failed allocation
            _, device = self.pending[name]
            # At least one element: TensorRT takes a null address as a failed allocation.
            size = max(int(size), int(alignment), 1)
            buffer = torch.empty(size, dtype=torch.uint8, device=device)
            self.buffers[name] = buffer
            return buffer.data_ptr()

        def reallocate_output_async(
            self, name: str, memory: int, size: int, alignment: int, stream: int
        ) -> int:
            return self.reallocate_output(name, memory, size, alignment)

        def notify_shape(self, name: str, shape: tensorrt.Dims) -> None:
            self.shapes[name] = tuple(int(d) for d in shape)

        def result(self, name: str) -> Tensor:
            dtype, _ = self.pending.pop(name)
            if name not in self.buffers or name not in self.shapes:
                raise RuntimeError(
                    f"TensorRT did not allocate or size the {role} engine's output {name!r}"
                )
            shape = self.shapes.pop(name)
            count = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            buffer = self.buffers.pop(name)
            if count > buffer.numel():
                raise RuntimeError(
                    f"the {role} engine's output {name!r} of shape {shape} does not fit the "
                    f"{buffer.numel()} bytes TensorRT asked for"
                )
            return buffer[:count].view(dtype).reshape(shape)

    return OutputAllocator()


class _Engine:
    """One deserialized engine with its execution context."""

    def __init__(
        self,
        trt: ModuleType,
        engine: tensorrt.ICudaEngine,
        role: str,
        metadata: EngineMetadata,
    ) -> None:
        self.trt = trt
        self.role = role
        self.metadata = metadata
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.dtypes = {name: _DTYPES[engine.get_tensor_dtype(name).name] for name in names}
        self.outputs = [
            name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT
        ]
        self.allocator: ShapedOutputs | None = None  # once an output's shape needs it

    def check(self, inputs: NamedTensors) -> None:
        """ValueError when an input's shape lies outside the engine's optimization profile."""
        for name, tensor in inputs.items():
            check_within_profile(self.metadata, self.role, name, tuple(tensor.shape))

    def run(self, inputs: NamedTensors, outputs: NamedTensors | None = None) -> NamedTensors:
        """Enqueue the engine on the current stream; new output tensors unless given.

        An output whose shape depends on the data (TensorRT gives -1 for a dimension once the
        input shapes are set) comes from the output allocator: TensorRT sizes it while it runs,
        so this call returns when its shape is known.
        """
        context = self.context
        self.check(inputs)
        device = next(iter(inputs.values())).device
        for name, tensor in inputs.items():
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(f"the {self.role} engine refused shape {tuple(tensor.shape)}")
            context.set_tensor_address(name, tensor.data_ptr())
        dynamic = []
        if outputs is None:
            outputs = {}
            for name in self.outputs:
                shape = tuple(context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    dynamic.append(name)
                else:
                    outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=device)
        for name in dynamic:
            if self.allocator is None:
                self.allocator = _output_allocator(self.trt, self.role)
            if not context.set_output_allocator(name, self.allocator):
                raise RuntimeError(f"TensorRT refused the output allocator of {name!r}")
            self.allocator.begin(name, self.dtypes[name], device)
        for name, tensor in outputs.items():
            context.set_tensor_address(name, tensor.data_ptr())
        if not context.execute_async_v3(_stream_handle(device)):
            raise RuntimeError(f"TensorRT could not enqueue the {self.role} engine")
        for name in dynamic:
            outputs[name] = self.allocator.result(name)
        return outputs


def open_engines(
    manifest: Manifest | TrackingManifest, precision: str, roles: tuple[str, ...]
) -> tuple[EngineMetadata, dict[str, _Engine]]:
    """The checked metadata and the engines of `roles` that ``iounet build-engine`` built for a
    model folder. ImportError without TensorRT (saying what to install), FileNotFoundError
    without engines, ValueError for engines of another TensorRT, plugin library or export."""
    trt = import_tensorrt()
    library = load_plugin_library()
    folder = engine_folder(manifest, precision)
    metadata = load_engine_metadata(folder, roles)
    if metadata["precision"] != precision:
        raise ValueError(f"{folder} holds {metadata['precision']} engines, not {precision}")
    check_engine_metadata(
        metadata,
        tensorrt_version=trt.__version__,
        plugin_version=plugin_library_version(library),
        manifest=manifest,
    )
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engines = {}
    for role in roles:
        path = folder / metadata["engines"][role]["file"]
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ValueError(f"TensorRT {trt.__version__} cannot deserialize {path}")
        engines[role] = _Engine(trt, engine, role, metadata)
        engines[role].keep_alive = (runtime, logger)  # the runtime must outlive its engines
    return metadata, engines


class TensorRTBackend(Backend[Maps]):
    """The TensorRT engines of an exported model (``iounet build-engine``) on the current GPU;
    the detector's (rpn, box_head) too when the model folder holds it."""

    name = "trt"

    def __init__(self, model_dir: str | os.PathLike, precision: str = "fp32") -> None:
        import_tensorrt()  # without TensorRT, say what to install before reading anything
        manifest = load_manifest(model_dir)
        roles = manifest.roles()
        metadata, self._engines = open_engines(manifest, precision, roles)
        self.device = _current_device()
        self.manifest = manifest
        self.refinement = manifest.refinement
        self.metadata = metadata
        self.precision = precision
        self.has_detector = manifest.has_detector
        self.max_boxes = min(
            int(metadata["engines"][role]["profile"]["rois"]["max"][0])
            for role in roles
            if "rois" in metadata["engines"][role]["profile"]
        )

    def features(self, image: Tensor) -> Maps:
        """FPN maps p2..p5 of ``image`` (torch CUDA tensors in the engines' dtype)."""
        backbone = self._engines["backbone"]
        image = self._input(backbone, "image", image)
        outputs = backbone.run({"image": image})
        return tuple(outputs[name] for name in self.manifest.map_names)

    def proposals(self, features: Maps, image_size: tuple[int, int]) -> Tensor:
        """The rpn engine's proposals (P, 4) float32 on this device; P is known only once the
        engine has run (its NMS decides), so this call waits for the rpn engine."""
        if not self.has_detector:
            raise ValueError(self._no_detector())
        rpn = self._engines["rpn"]
        inputs = self._map_inputs(rpn, features)
        inputs["image_size"] = self._image_size(rpn, image_size)
        return rpn.run(inputs)["proposals"]

    def raw_detections(
        self, features: Maps, proposals: Tensor, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The box_head engine's raw detections: boxes (D, 4), scores (D,), labels (D,) int64,
        padded at the end with the manifest's padding score; empty without proposals."""
        if not self.has_detector:
            raise ValueError(self._no_detector())
        if proposals.dim() != 2 or proposals.shape[1] != 4:
            raise ValueError(f"proposals must have shape (P, 4), got {tuple(proposals.shape)}")
        if len(proposals) == 0:
            empty = torch.zeros(0, device=self.device)
            labels = torch.zeros(0, dtype=torch.int64, device=self.device)
            return empty.reshape(0, 4), empty, labels
        box_head = self._engines["box_head"]
        inputs = self._map_inputs(box_head, features)
        inputs["proposals"] = self._input(box_head, "proposals", proposals)
        inputs["image_size"] = self._image_size(box_head, image_size)
        outputs = box_head.run(inputs)
        return outputs["boxes"], outputs["scores"], outputs["labels"]

    def iou(self, features: Maps, rois: Tensor, labels: Tensor) -> Tensor:
        if len(rois) == 0:
            return torch.zeros(0, device=self.device)
        head = self._engines["head"]
        return head.run(self._box_inputs(head, features, rois, labels))["iou"]

    def iou_and_grad(self, features: Maps, rois: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if len(rois) == 0:
            return torch.zeros(0, device=self.device), torch.zeros((0, 4), device=self.device)
        engine = self._engines["iou_grad"]
        outputs = engine.run(self._box_inputs(engine, features, rois, labels))
        return outputs["iou"], outputs["grad"]

    def fused_step(self, features: Maps, labels: Tensor) -> Step:
        """One call of the refine_step engine per step, queued on the current stream."""
        engine = self._engines["refine_step"]
        inputs = self._map_inputs(engine, features)
        inputs["labels"] = self._input(engine, "labels", labels)

        def step(state: RefineState, settings: StepSettings) -> RefineState:
            count = len(state.boxes)
            rois = torch.cat([state.boxes.new_zeros((count, 1)), state.boxes], dim=1)
            given = {"rois": rois, "iou": state.iou, "grad": state.grad, "active": state.active}
            given.update(settings.feeds())
            inputs.update({name: self._input(engine, name, value) for name, value in given.items()})
            outputs = engine.run(inputs)
            return RefineState(
                outputs["rois_next"][:, 1:].contiguous(),
                outputs["iou_next"],
                outputs["grad_next"],
                outputs["active_next"],
            )

        return step

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def _box_inputs(
        self, engine: _Engine, features: Maps, rois: Tensor, labels: Tensor
    ) -> NamedTensors:
        """The maps, rois and labels as the engine's input tensors on this device."""
        inputs = self._map_inputs(engine, features)
        inputs["rois"] = self._input(engine, "rois", rois)
        inputs["labels"] = self._input(engine, "labels", labels)
        return inputs

    def _map_inputs(self, engine: _Engine, features: Maps) -> NamedTensors:
        """The maps p2..p5 as the engine's input tensors on this device."""
        names = self.manifest.map_names
        if len(features) != len(names):
            raise ValueError(f"features must be the {len(names)} maps {names}")
        return {
            name: self._input(engine, name, value)
            for name, value in zip(names, features, strict=True)
        }

    def _image_size(self, engine: _Engine, image_size: tuple[int, int]) -> Tensor:
        """(height, width) as the engine's image_size input; ValueError for an image larger
        than the engines' profile (``--image-size`` of ``iounet build-engine``)."""
        height, width = (int(v) for v in image_size)
        high = self.metadata["image_size"][2]
        if height < 1 or width < 1 or height > high[0] or width > high[1]:
            low = self.metadata["image_size"][0]
            raise ValueError(
                f"image size {height}x{width} is outside the engine's profile "
                f"(min {low[0]}x{low[1]}, max {high[0]}x{high[1]}, before padding at most the "
                f"max); rebuild with --image-size"
            )
        return torch.tensor(
            [float(height), float(width)], dtype=engine.dtypes["image_size"], device=self.device
        )

    def _input(self, engine: _Engine, name: str, tensor: Tensor) -> Tensor:
        return tensor.to(self.device, engine.dtypes[name]).contiguous()
