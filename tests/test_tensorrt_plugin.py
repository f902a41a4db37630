"""TensorRT engines from one-node ONNX graphs of each plugin, against the PyTorch op (GPU only)."""

from __future__ import annotations

import pytest
import torch
from onnx import TensorProto
from ort_graphs import one_node_model
from prroi_cases import BOX_CASES, make_features

from iounet.plugins import prroi_pool, prroi_pool_coord_grad, trt_loader

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]

CHANNELS = 3
POOLED = (3, 2)
SCALE = 0.75
MAX_BOXES = 64
# (features, rois) types and the tolerance against the float64 PyTorch op.
PRECISIONS = {
    "fp32": (TensorProto.FLOAT, TensorProto.FLOAT, torch.float32, torch.float32, 1e-4),
    "fp16": (TensorProto.FLOAT16, TensorProto.FLOAT16, torch.float16, torch.float16, 1e-2),
    "fp16-fp32-rois": (TensorProto.FLOAT16, TensorProto.FLOAT, torch.float16, torch.float32, 1e-2),
}


@pytest.fixture(scope="module")
def trt():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    tensorrt = pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    if not trt_loader.plugin_library_path().is_file():
        pytest.skip("plugin library not built: make native TENSORRT_ROOT=<TensorRT folder>")
    trt_loader.load_plugin_library()
    return tensorrt


def _engine(trt, model):
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
    profile.set_shape("features", (1, CHANNELS, 1, 1), (2, CHANNELS, 6, 7), (2, CHANNELS, 32, 32))
    profile.set_shape("rois", (1, 5), (16, 5), (MAX_BOXES, 5))
    if network.num_inputs == 3:
        grad = (CHANNELS, *POOLED)
        profile.set_shape("grad_output", (1, *grad), (16, *grad), (MAX_BOXES, *grad))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    assert serialized is not None, "engine build failed"
    return trt.Runtime(logger).deserialize_cuda_engine(serialized)


def _run(engine, inputs: dict[str, torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    context = engine.create_execution_context()
    for name, tensor in inputs.items():
        context.set_input_shape(name, tuple(tensor.shape))
        context.set_tensor_address(name, tensor.data_ptr())
    context.set_tensor_address("out", output.data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return output


def _inputs(boxes: int):
    rows = (BOX_CASES["inside"] + BOX_CASES["partly_outside"] + BOX_CASES["covers_map"]) * 10
    rois = torch.tensor(rows[:boxes], dtype=torch.float64)
    features = make_features(torch.float64, "cpu", shape=(2, CHANNELS, 6, 7))
    grad_output = torch.randn((boxes, CHANNELS, *POOLED), dtype=torch.float64)
    return features, rois, grad_output


@pytest.mark.parametrize("boxes", [1, 5, MAX_BOXES])
@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_prroi_pool_engine_matches_pytorch(trt, precision, boxes):
    f_type, r_type, f_dtype, r_dtype, tolerance = PRECISIONS[precision]
    engine = _engine(
        trt, one_node_model("PrRoIPool", POOLED, SCALE, "iounet", f_type, r_type, CHANNELS)
    )
    features, rois, _ = _inputs(boxes)
    output = torch.empty((boxes, CHANNELS, *POOLED), dtype=f_dtype, device="cuda")
    inputs = {"features": features.to("cuda", f_dtype), "rois": rois.to("cuda", r_dtype)}
    actual = _run(engine, inputs, output).double().cpu()
    expected = prroi_pool(features, rois, POOLED, SCALE)
    torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("boxes", [1, MAX_BOXES])
@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_coord_grad_engine_matches_pytorch(trt, precision, boxes):
    f_type, r_type, f_dtype, r_dtype, tolerance = PRECISIONS[precision]
    model = one_node_model("PrRoIPoolCoordGrad", POOLED, SCALE, "iounet", f_type, r_type, CHANNELS)
    engine = _engine(trt, model)
    features, rois, grad_output = _inputs(boxes)
    output = torch.empty((boxes, 5), dtype=r_dtype, device="cuda")
    inputs = {
        "features": features.to("cuda", f_dtype),
        "rois": rois.to("cuda", r_dtype),
        "grad_output": grad_output.to("cuda", f_dtype),
    }
    actual = _run(engine, inputs, output).double().cpu()
    expected = prroi_pool_coord_grad(features, rois, grad_output, POOLED, SCALE)
    scale = expected.abs().max().clamp_min(1.0)
    torch.testing.assert_close(actual / scale, expected / scale, rtol=tolerance, atol=tolerance)


def test_mmcv_node_builds_with_our_plugin(trt):
    engine = _engine(trt, one_node_model("PrRoIPool", POOLED, SCALE, "mmcv", channels=CHANNELS))
    features, rois, _ = _inputs(5)
    output = torch.empty((5, CHANNELS, *POOLED), device="cuda")
    inputs = {"features": features.float().cuda(), "rois": rois.float().cuda()}
    actual = _run(engine, inputs, output).double().cpu()
    torch.testing.assert_close(
        actual, prroi_pool(features, rois, POOLED, SCALE), rtol=1e-4, atol=1e-4
    )
