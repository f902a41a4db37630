"""Exported graphs with their PrRoIPool nodes replaced by standard ops, built with TensorRT-RTX.

TensorRT-RTX builds engines ahead of time without a GPU, but takes no user plugins: it aborts
the process on a PrRoIPool node. ``replace_custom_nodes`` swaps every ``iounet::PrRoIPool`` and
``iounet::PrRoIPoolCoordGrad`` node for a stand-in of standard ONNX ops with the node's output
shape and dtype that depends on all of the node's inputs (so nothing upstream is dropped), and
leaves every other node as the exporter wrote it. With ``nms=True`` it also swaps each
NonMaxSuppression node (the detector's proposal NMS), which TensorRT-RTX parses into an NMS layer
but has no implementation of ("has no runners that implement it"; full TensorRT has one), for a
TopK stand-in with the same output type and rank.

Run as a script, this file builds the graphs a job file lists (JSON: name, onnx, profile,
inputs, outputs, and optionally ``layers``: {layer type: count} the parsed network must hold,
and ``build``: false to stop after parsing) with TensorRT-RTX, strongly typed, one optimization
profile each, checks the parsed network's inputs and outputs (names, dtypes) against the
manifest, and prints one line per graph; it imports only TensorRT-RTX, so the test runs it in a
subprocess, where an abort fails the test instead of killing pytest.
"""

from __future__ import annotations

import collections
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

CUSTOM_DOMAIN = "iounet"
POOL = "PrRoIPool"
COORD_GRAD = "PrRoIPoolCoordGrad"
NMS = "NonMaxSuppression"
#: In the name of every node (and every new tensor but the output) of a stand-in.
STANDIN_TAG = "__standin"


def replace_custom_nodes(model: Any, nms: bool = False) -> tuple[Any, collections.Counter]:
    """A copy of `model` with each iounet node (and with `nms` each NonMaxSuppression node)
    replaced by its stand-in; the replaced op types.

    The stand-in's output keeps the node's output name, so the rest of the graph is unchanged:
    PrRoIPool (features (N, C, H, W), rois (K, 5)) -> (K, C, PH, PW) in the features' dtype,
    PrRoIPoolCoordGrad (features, rois, grad_output (K, C, PH, PW)) -> (K, 5) in the rois' dtype,
    NonMaxSuppression (boxes (1, N, 4), scores (1, 1, N), max_output_boxes_per_class, ...) ->
    selected_indices (M, 3) int64: [0, 0, i] for the M = min(N, max_output_boxes_per_class)
    highest scores (TopK), keeping none out by overlap or score threshold.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    types = {
        value.name: value.type.tensor_type.elem_type
        for value in [*graph.input, *graph.value_info, *graph.output]
    }
    types.update({tensor.name: tensor.data_type for tensor in graph.initializer})
    replaced: collections.Counter = collections.Counter()
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    nodes = []
    constants = []

    def constant(name: str, values: list[int]) -> str:
        constants.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
        return name

    for node in graph.node:
        if nms and node.op_type == NMS and node.domain in ("", "ai.onnx"):
            nodes += _nms_standin(node, constant)
            replaced[NMS] += 1
            continue
        if node.domain != CUSTOM_DOMAIN:
            nodes.append(node)
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if len(node.output) != 1:
            raise ValueError(f"{node.name}: {len(node.output)} outputs, expected 1")
        out = node.output[0]
        tag = f"{out}{STANDIN_TAG}"
        first = len(nodes)
        if node.op_type == POOL and len(node.input) == 2:
            features, rois = node.input
            dtype = types[features]
            size = [1, 1, attributes["pooled_height"], attributes["pooled_width"]]
            nodes += [
                # (1, C, 1, 1): the mean of every channel, in the features' dtype
                # axes: an input from opset 18, an attribute before
                helper.make_node(
                    "ReduceMean", [features, constant(f"{tag}_nhw", [0, 2, 3])], [f"{tag}_mean"]
                )
                if opset >= 18
                else helper.make_node("ReduceMean", [features], [f"{tag}_mean"], axes=[0, 2, 3]),
                # (K, 1, 1, 1): zero per roi, computed from the rois
                helper.make_node(
                    "ReduceSum", [rois, constant(f"{tag}_c", [1])], [f"{tag}_sum"], keepdims=1
                ),
                helper.make_node("Cast", [f"{tag}_sum"], [f"{tag}_cast"], to=dtype),
                helper.make_node("Sub", [f"{tag}_cast", f"{tag}_cast"], [f"{tag}_zero"]),
                helper.make_node(
                    "Unsqueeze", [f"{tag}_zero", constant(f"{tag}_hw", [2, 3])], [f"{tag}_k"]
                ),
                helper.make_node("Add", [f"{tag}_mean", f"{tag}_k"], [f"{tag}_kc"]),
                helper.make_node("Expand", [f"{tag}_kc", constant(f"{tag}_size", size)], [out]),
            ]
        elif node.op_type == COORD_GRAD and len(node.input) == 3:
            features, rois, grad_output = node.input
            dtype = types[rois]
            nodes += [
                # a scalar from the features, (K, 1) from grad_output, both in the rois' dtype
                helper.make_node("ReduceMean", [features], [f"{tag}_mean"], keepdims=0),
                helper.make_node("Cast", [f"{tag}_mean"], [f"{tag}_fcast"], to=dtype),
                helper.make_node(
                    "ReduceSum",
                    [grad_output, constant(f"{tag}_chw", [1, 2, 3])],
                    [f"{tag}_gsum"],
                    keepdims=0,
                ),
                helper.make_node("Cast", [f"{tag}_gsum"], [f"{tag}_gcast"], to=dtype),
                helper.make_node(
                    "Unsqueeze", [f"{tag}_gcast", constant(f"{tag}_c", [1])], [f"{tag}_g"]
                ),
                helper.make_node("Mul", [f"{tag}_g", f"{tag}_fcast"], [f"{tag}_gf"]),
                # (K, 5): rois - rois + the above
                helper.make_node("Sub", [rois, rois], [f"{tag}_zero"]),
                helper.make_node("Add", [f"{tag}_zero", f"{tag}_gf"], [out]),
            ]
        else:
            raise ValueError(f"{node.name}: unexpected {node.domain}::{node.op_type} node")
        if out in types and types[out] != dtype:
            raise ValueError(
                f"{node.name}: the graph declares {out} as "
                f"{helper.tensor_dtype_to_np_dtype(types[out])}, the op gives "
                f"{helper.tensor_dtype_to_np_dtype(dtype)}"
            )
        for index, added in enumerate(nodes[first:]):
            added.name = f"{tag}_{index}"
        replaced[node.op_type] += 1
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    imports = [o for o in model.opset_import if o.domain != CUSTOM_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(imports)
    return model, replaced


def _nms_standin(node: Any, constant: Any) -> list[Any]:
    """The nodes of the NonMaxSuppression stand-in (see ``replace_custom_nodes``)."""
    from onnx import helper

    boxes, scores, *rest = node.input
    limit = rest[0] if rest and rest[0] else ""
    (out,) = node.output
    tag = f"{out}{STANDIN_TAG}"
    nodes = [
        helper.make_node("Reshape", [scores, constant(f"{tag}_flat", [-1])], [f"{tag}_scores"]),
        helper.make_node("Shape", [f"{tag}_scores"], [f"{tag}_n"]),
    ]
    count = f"{tag}_n"
    if limit:
        nodes += [
            helper.make_node("Reshape", [limit, constant(f"{tag}_one", [1])], [f"{tag}_limit"]),
            helper.make_node("Min", [f"{tag}_n", f"{tag}_limit"], [f"{tag}_k"]),
        ]
        count = f"{tag}_k"
    nodes += [
        helper.make_node(
            "TopK", [f"{tag}_scores", count], [f"{tag}_values", f"{tag}_indices"], axis=0
        ),
        helper.make_node(
            "Unsqueeze", [f"{tag}_indices", constant(f"{tag}_axis", [1])], [f"{tag}_column"]
        ),
        helper.make_node("Sub", [f"{tag}_column", f"{tag}_column"], [f"{tag}_zero"]),
        helper.make_node("Concat", [f"{tag}_zero", f"{tag}_zero", f"{tag}_column"], [out], axis=1),
    ]
    for index, added in enumerate(nodes):
        added.name = f"{tag}_{index}"
    del boxes  # the boxes reach the graph's output through the gather of the selected ones
    return nodes


def build(jobs: list[dict[str, Any]]) -> int:
    """Build every job's graph with TensorRT-RTX; print one line per engine; 0 when all built."""
    importlib.import_module("tensorrt_rtx_libs")  # loads the libraries the bindings link to
    import tensorrt_rtx_bindings as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED  # TensorRT-RTX's default
    print(f"TensorRT-RTX {trt.__version__}", flush=True)
    failures = 0
    for job in jobs:
        name = job["name"]
        start = time.perf_counter()
        network = builder.create_network(1 << int(strongly_typed))
        assert network.get_flag(strongly_typed)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(job["onnx"]):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            print(f"FAILED {name}: parse: {errors or 'no message'}", flush=True)
            failures += 1
            continue
        tensors = {
            kind: [(t.name, t.dtype) for t in map(get, range(count))]
            for kind, get, count in (
                ("inputs", network.get_input, network.num_inputs),
                ("outputs", network.get_output, network.num_outputs),
            )
        }
        expected = {
            kind: [(t["name"], getattr(trt, t["dtype"])) for t in job[kind]]
            for kind in ("inputs", "outputs")
        }
        if tensors != expected:
            print(f"FAILED {name}: network {tensors}, manifest {expected}", flush=True)
            failures += 1
            continue
        layers = collections.Counter(
            network.get_layer(i).type.name for i in range(network.num_layers)
        )
        wanted = job.get("layers", {})
        if any(layers[kind] != count for kind, count in wanted.items()):
            found = {kind: layers[kind] for kind in wanted}
            print(f"FAILED {name}: layers {found}, expected {wanted}", flush=True)
            failures += 1
            continue
        if not job.get("build", True):
            print(f"parsed {name}: {network.num_layers} layers, {dict(wanted)}", flush=True)
            continue
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            if any(d < 0 for d in tensor.shape):
                profile.set_shape(tensor.name, *job["profile"][tensor.name])
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - start
        if serialized is None or serialized.nbytes == 0:
            print(f"FAILED {name}: no engine (TensorRT-RTX's messages are above)", flush=True)
            failures += 1
            continue
        print(f"built {name}: {serialized.nbytes} bytes in {seconds:.1f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(build(json.loads(Path(sys.argv[1]).read_text())))
