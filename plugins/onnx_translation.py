"""The ONNX translation of the registered ops for torch's dynamo exporter.

``torch.onnx.export(..., dynamo=True, custom_translation_table=translation_table(opset))`` turns
``torch.ops.iounet.prroi_pool`` into an ``iounet::PrRoIPool`` node and
``torch.ops.iounet.prroi_pool_coord_grad`` into ``iounet::PrRoIPoolCoordGrad`` (attributes
``pooled_height``, ``pooled_width``, ``spatial_scale``; domain ``iounet`` version 1), the nodes
the ONNX Runtime ops and the TensorRT plugins implement, and ``torch.ops.iounet.nms`` into
standard ops of the graph's opset (NonMaxSuppression, Unsqueeze, Gather, Constant: the same
nodes at every opset from 13 on). Importing this module registers the two
nodes' schemas with ``onnx`` (types: the maps' output follows the maps, the box gradient the
boxes), so the exporter and ``onnx.checker`` know their signatures.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
import onnxscript
import torch
from onnx.defs import OpSchema

import iounet.plugins.nms_op  # registers torch.ops.iounet.nms
import iounet.plugins.ops  # noqa: F401 - registers torch.ops.iounet.prroi_pool*

#: The custom ONNX domain of the nodes and its version.
DOMAIN = "iounet"
DOMAIN_VERSION = 1
_FLOATS = ["tensor(float16)", "tensor(bfloat16)", "tensor(float)", "tensor(double)"]


def _schema(
    name: str, inputs: list[tuple[str, str]], output: tuple[str, str], doc: str
) -> OpSchema:
    attributes = [
        OpSchema.Attribute("pooled_height", OpSchema.AttrType.INT, "bins along y"),
        OpSchema.Attribute("pooled_width", OpSchema.AttrType.INT, "bins along x"),
        OpSchema.Attribute("spatial_scale", OpSchema.AttrType.FLOAT, "box -> map coordinates"),
    ]
    return OpSchema(
        name,
        DOMAIN,
        DOMAIN_VERSION,
        doc,
        inputs=[OpSchema.FormalParameter(n, t) for n, t in inputs],
        outputs=[OpSchema.FormalParameter(*output)],
        type_constraints=[("T", _FLOATS, "feature maps"), ("R", _FLOATS, "boxes")],
        attributes=attributes,
    )


def _register_schemas() -> None:
    schemas = (
        _schema(
            "PrRoIPool",
            [("features", "T"), ("rois", "R")],
            ("output", "T"),
            "Precise RoI pooling: (K, C, pooled_height, pooled_width).",
        ),
        _schema(
            "PrRoIPoolCoordGrad",
            [("features", "T"), ("rois", "R"), ("grad_output", "T")],
            ("grad_rois", "R"),
            "Gradient of sum(PrRoIPool * grad_output) w.r.t. the rois: (K, 5).",
        ),
    )
    for schema in schemas:
        if not onnx.defs.has(schema.name, DOMAIN):
            onnx.defs.register_schema(schema)


_register_schemas()
_iounet = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)


def _prroi_pool(
    input: onnxscript.ir.Value,
    rois: onnxscript.ir.Value,
    pooled_height: int,
    pooled_width: int,
    spatial_scale: float,
) -> onnxscript.ir.Value:
    return _iounet.PrRoIPool(
        input,
        rois,
        pooled_height=pooled_height,
        pooled_width=pooled_width,
        spatial_scale=spatial_scale,
    )


def _prroi_pool_coord_grad(
    input: onnxscript.ir.Value,
    rois: onnxscript.ir.Value,
    grad_output: onnxscript.ir.Value,
    pooled_height: int,
    pooled_width: int,
    spatial_scale: float,
) -> onnxscript.ir.Value:
    return _iounet.PrRoIPoolCoordGrad(
        input,
        rois,
        grad_output,
        pooled_height=pooled_height,
        pooled_width=pooled_width,
        spatial_scale=spatial_scale,
    )


#: NonMaxSuppression's cap on the boxes kept (per batch and class): all of them.
_KEEP_ALL = 1 << 31
#: The oldest ONNX opset the translation's standard ops have their current form in.
MIN_OPSET = 13

Translation = dict[torch._ops.OpOverload, Callable[..., onnxscript.ir.Value]]


def translation_table(opset: int) -> Translation:
    """``custom_translation_table`` for ``torch.onnx.export`` of a graph at ONNX opset `opset`."""
    if opset < MIN_OPSET:
        raise ValueError(f"the translation needs ONNX opset {MIN_OPSET} or newer, got {opset}")
    op = onnxscript.values.Opset("", opset)

    def nms(
        boxes: onnxscript.ir.Value,
        scores: onnxscript.ir.Value,
        iou_threshold: float,
        score_threshold: float,
    ) -> onnxscript.ir.Value:
        """nms(boxes (N, 4), scores (N,), iou_threshold, score_threshold) -> kept indices (M,)."""
        selected = op.NonMaxSuppression(
            op.Unsqueeze(boxes, op.Constant(value_ints=[0])),
            op.Unsqueeze(scores, op.Constant(value_ints=[0, 1])),
            op.Constant(value_ints=[_KEEP_ALL]),
            op.Constant(value_floats=[float(iou_threshold)]),
            op.Constant(value_floats=[float(score_threshold)]),
        )
        return op.Gather(selected, op.Constant(value_int=2), axis=1)

    return {
        torch.ops.iounet.prroi_pool.default: _prroi_pool,
        torch.ops.iounet.prroi_pool_coord_grad.default: _prroi_pool_coord_grad,
        torch.ops.iounet.nms.default: nms,
    }


#: The table at opset 20, the exporter's default.
TRANSLATION_TABLE: Translation = translation_table(20)
