"""One-node ONNX graphs of the PrRoIPool ops, run through iounet.plugins.onnxruntime_session."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from iounet.plugins import onnxruntime_session


def one_node_model(
    op_type: str,
    pooled: tuple[int, int],
    spatial_scale: float,
    domain: str = "iounet",
    features_type: int = TensorProto.FLOAT,
    rois_type: int = TensorProto.FLOAT,
    channels: int | str = "C",
) -> onnx.ModelProto:
    """A model whose single node is `domain::op_type` with dynamic N, K, H and W."""
    inputs = [
        helper.make_tensor_value_info("features", features_type, ["N", channels, "H", "W"]),
        helper.make_tensor_value_info("rois", rois_type, ["K", 5]),
    ]
    if op_type == "PrRoIPool":
        output = helper.make_tensor_value_info("out", features_type, ["K", channels, *pooled])
    else:
        inputs.append(
            helper.make_tensor_value_info("grad_output", features_type, ["K", channels, *pooled])
        )
        output = helper.make_tensor_value_info("out", rois_type, ["K", 5])
    node = helper.make_node(
        op_type,
        [value.name for value in inputs],
        ["out"],
        domain=domain,
        pooled_height=pooled[0],
        pooled_width=pooled[1],
        spatial_scale=spatial_scale,
    )
    graph = helper.make_graph([node], op_type, inputs, [output])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
    )
    onnx.checker.check_model(model)
    return model


@functools.cache
def session(op_type: str, pooled: tuple[int, int], spatial_scale: float, domain: str = "iounet"):
    """A cached session for the one-node model."""
    return onnxruntime_session(one_node_model(op_type, pooled, spatial_scale, domain))


def pooled_pair(output_size: int | tuple[int, int]) -> tuple[int, int]:
    """(pooled_height, pooled_width) of an `output_size` as iounet.plugins.prroi_pool takes it."""
    return (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)


def prroi_pool(features, rois, output_size, spatial_scale=1.0) -> torch.Tensor:
    """PrRoIPool through ONNX Runtime, with the signature of iounet.plugins.prroi_pool."""
    feeds = {"features": features.float().numpy(), "rois": rois.float().numpy()}
    run = session("PrRoIPool", pooled_pair(output_size), float(spatial_scale)).run
    return torch.from_numpy(run(None, feeds)[0])


def prroi_pool_coord_grad(features, rois, grad_output, output_size, spatial_scale=1.0):
    """PrRoIPoolCoordGrad through ONNX Runtime."""
    feeds = {
        "features": features.float().numpy(),
        "rois": rois.float().numpy(),
        "grad_output": np.ascontiguousarray(grad_output.float().numpy()),
    }
    run = session("PrRoIPoolCoordGrad", pooled_pair(output_size), float(spatial_scale)).run
    return torch.from_numpy(run(None, feeds)[0])
