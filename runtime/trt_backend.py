"""The TensorRT backend: the four engines of ``iounet build-engine`` on one CUDA stream.

Every tensor is a torch CUDA tensor whose memory TensorRT reads and writes directly, and every
engine call is enqueued on ``torch.cuda.current_stream()``: nothing waits for the GPU until the
caller reads a result. TensorRT is imported when a backend is created, not with this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from iounet.export.engine import (
    check_engine_metadata,
    check_within_profile,
    engine_folder,
    load_engine_metadata,
)
from iounet.export.manifest import GRAPH_ROLES, Manifest, load_manifest
from iounet.plugins.trt_loader import import_tensorrt, load_plugin_library, plugin_library_version
from iounet.runtime.backend import Backend, Features, RefineParams

if TYPE_CHECKING:
    from iounet.export.tracking_manifest import TrackingManifest

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


class _Engine:
    """One deserialized engine with its execution context."""

    def __init__(self, trt: Any, engine: Any, role: str, metadata: dict[str, Any]) -> None:
        self.role = role
        self.metadata = metadata
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.dtypes = {name: _DTYPES[engine.get_tensor_dtype(name).name] for name in names}
        self.outputs = [
            name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT
        ]

    def check(self, inputs: dict[str, Tensor]) -> None:
        """ValueError when an input's shape lies outside the engine's optimization profile."""
        for name, tensor in inputs.items():
            check_within_profile(self.metadata, self.role, name, tuple(tensor.shape))

    def run(
        self, inputs: dict[str, Tensor], outputs: dict[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Enqueue the engine on the current stream; new output tensors unless given."""
        context = self.context
        self.check(inputs)
        for name, tensor in inputs.items():
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(f"the {self.role} engine refused shape {tuple(tensor.shape)}")
            context.set_tensor_address(name, tensor.data_ptr())
        if outputs is None:
            device = next(iter(inputs.values())).device
            outputs = {
                name: torch.empty(
                    tuple(context.get_tensor_shape(name)), dtype=self.dtypes[name], device=device
                )
                for name in self.outputs
            }
        for name, tensor in outputs.items():
            context.set_tensor_address(name, tensor.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError(f"TensorRT could not enqueue the {self.role} engine")
        return outputs


def open_engines(
    manifest: Manifest | TrackingManifest, precision: str, roles: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, _Engine]]:
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


class TensorRTBackend(Backend):
    """The TensorRT engines of an exported model (``iounet build-engine``) on the current GPU."""

    name = "trt"

    def __init__(self, model_dir: str | os.PathLike, precision: str = "fp32") -> None:
        import_tensorrt()  # without TensorRT, say what to install before reading anything
        manifest = load_manifest(model_dir)
        metadata, self._engines = open_engines(manifest, precision, GRAPH_ROLES)
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.manifest = manifest
        self.precision = precision
        self.max_boxes = min(
            int(metadata["engines"][role]["profile"]["rois"]["max"][0])
            for role in GRAPH_ROLES
            if "rois" in metadata["engines"][role]["profile"]
        )

    def features(self, image: Tensor) -> Features:
        """FPN maps p2..p5 of ``image`` (torch CUDA tensors in the engines' dtype)."""
        backbone = self._engines["backbone"]
        image = self._input(backbone, "image", image)
        outputs = backbone.run({"image": image})
        return tuple(outputs[name] for name in self.manifest.map_names)

    def iou(self, features: Features, rois: Tensor, labels: Tensor) -> Tensor:
        if len(rois) == 0:
            return torch.zeros(0, device=self.device)
        head = self._engines["head"]
        return head.run(self._box_inputs(head, features, rois, labels))["iou"]

    def iou_and_grad(
        self, features: Features, rois: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        if len(rois) == 0:
            return torch.zeros(0, device=self.device), torch.zeros((0, 4), device=self.device)
        engine = self._engines["iou_grad"]
        outputs = engine.run(self._box_inputs(engine, features, rois, labels))
        return outputs["iou"], outputs["grad"]

    def refine(
        self,
        features: Features,
        boxes: Tensor,
        labels: Tensor,
        image_size: tuple[int, int],
        params: RefineParams | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Algorithm 2 with the fused step engine: one engine call per step, no host sync."""
        params = params or self.manifest.refinement
        boxes = boxes.to(self.device, torch.float32)
        if len(boxes) == 0:
            return boxes.clone(), torch.zeros(0, device=self.device)
        step = self._engines["refine_step"]
        rois = torch.cat([boxes.new_zeros((len(boxes), 1)), boxes], dim=1)
        inputs = self._box_inputs(step, features, rois, labels)
        rois = inputs.pop("rois")
        iou, grad = self.iou_and_grad(features, rois, inputs["labels"])
        if on_step is not None:
            on_step(0)
        height, width = image_size
        constants = {
            "upper": [width, height, width, height],
            "step": [params.step],
            "early_stop": [params.early_stop],
            "degrade_tolerance": [params.degrade_tolerance],
        }
        for name, values in constants.items():
            inputs[name] = torch.tensor(values, dtype=step.dtypes[name], device=self.device)
        active = torch.ones(len(boxes), dtype=torch.bool, device=self.device)
        state = {"rois": rois, "iou": iou, "grad": grad, "active": active}
        spare = {f"{name}_next": torch.empty_like(value) for name, value in state.items()}
        for index in range(params.iterations):
            outputs = step.run({**inputs, **state}, spare)
            spare = {f"{name}_next": value for name, value in state.items()}
            state = {name: outputs[f"{name}_next"] for name in state}
            if on_step is not None:
                on_step(index + 1)
        return state["rois"][:, 1:].contiguous(), state["iou"]

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def _box_inputs(
        self, engine: _Engine, features: Features, rois: Tensor, labels: Tensor
    ) -> dict[str, Tensor]:
        """The maps, rois and labels as the engine's input tensors on this device."""
        names = self.manifest.map_names
        if len(features) != len(names):
            raise ValueError(f"features must be the {len(names)} maps {names}")
        tensors = {**dict(zip(names, features, strict=True)), "rois": rois, "labels": labels}
        return {name: self._input(engine, name, value) for name, value in tensors.items()}

    def _input(self, engine: _Engine, name: str, tensor: Tensor) -> Tensor:
        return tensor.to(self.device, engine.dtypes[name]).contiguous()
