"""TensorRT engines of one-node ONNX graphs of the PrRoIPool plugins, run with the signatures of
iounet.plugins.prroi_pool and prroi_pool_coord_grad (CUDA tensors; GPU with TensorRT only)."""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import onnx
import torch
from onnx import TensorProto
from ort_graphs import one_node_model, pooled_pair

from iounet.plugins import trt_loader

#: The most boxes an engine takes (its profile: 1 to MAX_BOXES, optimized for 16).
MAX_BOXES = 64
ONNX_TYPES = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16}


@functools.cache
def load_tensorrt() -> ModuleType:
    """The tensorrt module with the plugin library loaded (where conftest.tensorrt_missing() is
    None)."""
    import tensorrt

    trt_loader.load_plugin_library()
    return tensorrt


def build_engine(model: onnx.ModelProto, channels: int, pooled: tuple[int, int]) -> Any:
    """The engine of a one-node model for `channels` channels, 1 to MAX_BOXES boxes and maps of
    1x1 to 32x32 cells, two images at most."""
    trt = load_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 0 if strongly_typed is None else 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model.SerializeToString()), [
        str(parser.get_error(i)) for i in range(parser.num_errors)
    ]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("features", (1, channels, 1, 1), (2, channels, 6, 7), (2, channels, 32, 32))
    profile.set_shape("rois", (1, 5), (16, 5), (MAX_BOXES, 5))
    if network.num_inputs == 3:
        grad = (channels, *pooled)
        profile.set_shape("grad_output", (1, *grad), (16, *grad), (MAX_BOXES, *grad))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    assert serialized is not None, "engine build failed"
    return trt.Runtime(logger).deserialize_cuda_engine(serialized)


def run_engine(engine: Any, inputs: dict[str, torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    """Run `engine` on CUDA `inputs` into `output` (its "out" tensor) and return `output`."""
    context = engine.create_execution_context()
    for name, tensor in inputs.items():
        context.set_input_shape(name, tuple(tensor.shape))
        context.set_tensor_address(name, tensor.data_ptr())
    context.set_tensor_address("out", output.data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return output


@functools.cache
def _engine(
    op_type: str,
    pooled: tuple[int, int],
    spatial_scale: float,
    domain: str,
    types: tuple[torch.dtype, torch.dtype],
    channels: int,
) -> Any:
    features_type, rois_type = (ONNX_TYPES[dtype] for dtype in types)
    model = one_node_model(
        op_type, pooled, spatial_scale, domain, features_type, rois_type, channels
    )
    return build_engine(model, channels, pooled)


def prroi_pool(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    domain: str = "iounet",
) -> torch.Tensor:
    """PrRoIPool through the plugin of the `domain::PrRoIPool` node (an engine built once per
    settings and types): (K, C, PH, PW) in the dtype of `features`."""
    pooled = pooled_pair(output_size)
    channels = features.shape[1]
    engine = _engine(
        "PrRoIPool", pooled, float(spatial_scale), domain, (features.dtype, rois.dtype), channels
    )
    output = features.new_empty((rois.shape[0], channels, *pooled))
    return run_engine(engine, {"features": features, "rois": rois}, output)


def prroi_pool_coord_grad(
    features: torch.Tensor,
    rois: torch.Tensor,
    grad_output: torch.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> torch.Tensor:
    """PrRoIPoolCoordGrad through its plugin: (K, 5) in the dtype of `rois`."""
    pooled = pooled_pair(output_size)
    types = (features.dtype, rois.dtype)
    engine = _engine(
        "PrRoIPoolCoordGrad", pooled, float(spatial_scale), "iounet", types, features.shape[1]
    )
    inputs = {"features": features, "rois": rois, "grad_output": grad_output.contiguous()}
    return run_engine(engine, inputs, rois.new_empty((rois.shape[0], 5)))
