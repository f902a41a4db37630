"""ONNX Runtime sessions that run graphs with PrRoIPool / PrRoIPoolCoordGrad nodes on the CPU.

The nodes (domain ``iounet``, or ``mmcv`` for mmcv's exported ``PrRoIPool``; attributes
``pooled_height``, ``pooled_width``, ``spatial_scale``) are computed by the native CPU kernels
through onnxruntime-extensions Python ops. Those ops live in the ``ai.onnx.contrib`` domain, so
the graph's nodes are moved there before the session is created; the ops are registered once
per process (registering twice crashes ONNX Runtime), and any number of sessions may use them.
Tensors are float32.

An exception cannot cross from a Python op into ONNX Runtime (onnxruntime-extensions turns it
into std::terminate: the process would abort), so the ops have defined results instead: a roi
row with a batch index outside [0, N) or a NaN/Inf value pools to zeros with zero gradient (as in
the TensorRT plugin); inputs of the wrong rank or shape give an all-NaN output; an output larger
than ``MAX_OUTPUT_BYTES``, or one that cannot be allocated, is not computed and the op returns an
empty (0,) array instead (the nodes after it then fail with an ONNX Runtime error that Python
catches). Each of these logs a message on the ``iounet.plugins.onnxruntime`` logger, and no
exception of any kind leaves an op.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from iounet.plugins import native

if TYPE_CHECKING:
    import onnx
    import onnxruntime

_LOG = logging.getLogger(__name__)
CONTRIB_DOMAIN = "ai.onnx.contrib"
#: (domain, op_type) pairs that the session runs with the native kernels.
#: The largest output (bytes) an op computes; a larger request gets the empty result without
#: allocating. The runtime's backends feed chunks far below it (``iounet.runtime.budget.chunks``).
MAX_OUTPUT_BYTES = 2**32
CUSTOM_OPS = {
    ("iounet", "PrRoIPool"),
    ("iounet", "PrRoIPoolCoordGrad"),
    ("mmcv", "PrRoIPool"),
}


def onnxruntime_session(
    model: str | os.PathLike | bytes | onnx.ModelProto, **session_kwargs: Any
) -> onnxruntime.InferenceSession:
    """An InferenceSession for `model` (a path, serialized bytes or a ModelProto) with the ops.

    `session_kwargs` go to ``onnxruntime.InferenceSession`` (``sess_options``, ``providers``...);
    the providers default to the CPU.
    """
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    _register_ops()
    proto = _load_model(model)
    _move_custom_nodes(proto)
    options = session_kwargs.pop("sess_options", None) or ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    session_kwargs.setdefault("providers", ["CPUExecutionProvider"])
    return ort.InferenceSession(proto.SerializeToString(), sess_options=options, **session_kwargs)


def _load_model(model: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        return proto
    if isinstance(model, bytes):
        source, data = "the model bytes", model
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        source, data = str(path), path.read_bytes()
    else:
        raise TypeError(
            f"model must be a path, bytes or onnx.ModelProto, got {type(model).__name__}"
        )
    try:
        return onnx.load_model_from_string(data)
    except Exception as error:  # protobuf raises its own DecodeError
        raise ValueError(f"{source} is not a valid ONNX model: {error}") from error


def _move_custom_nodes(proto: onnx.ModelProto) -> None:
    """Put the custom nodes (graph, subgraphs and model functions) in the contrib domain."""
    from onnx import helper

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            if (node.domain, node.op_type) in CUSTOM_OPS:
                node.domain = CONTRIB_DOMAIN
            for attribute in node.attribute:
                for subgraph in [attribute.g, *attribute.graphs]:
                    visit(subgraph)

    visit(proto.graph)
    for function in proto.functions:
        for node in function.node:
            if (node.domain, node.op_type) in CUSTOM_OPS:
                node.domain = CONTRIB_DOMAIN
    if all(opset.domain != CONTRIB_DOMAIN for opset in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))


@functools.cache
def _register_ops() -> None:
    from onnxruntime_extensions import PyOp, onnx_op

    attrs = {
        "pooled_height": PyOp.dt_int64,
        "pooled_width": PyOp.dt_int64,
        "spatial_scale": PyOp.dt_float,
    }

    @onnx_op(
        op_type="PrRoIPool",
        inputs=[PyOp.dt_float, PyOp.dt_float],
        outputs=[PyOp.dt_float],
        attrs=attrs,
    )
    def prroi_pool(features: np.ndarray, rois: np.ndarray, **attributes: Any) -> np.ndarray:
        def run() -> np.ndarray:
            pooled, scale = _attributes(attributes)
            return native.prroi_pool(
                _tensor(features), _tensor(rois), pooled, scale, check_values=False
            ).numpy()

        size = (_rows(rois), _channels(features), *_pooled(attributes))
        return _defined(run, "PrRoIPool", size)

    @onnx_op(
        op_type="PrRoIPoolCoordGrad",
        inputs=[PyOp.dt_float, PyOp.dt_float, PyOp.dt_float],
        outputs=[PyOp.dt_float],
        attrs=attrs,
    )
    def prroi_pool_coord_grad(
        features: np.ndarray, rois: np.ndarray, grad_output: np.ndarray, **attributes: Any
    ) -> np.ndarray:
        def run() -> np.ndarray:
            pooled, scale = _attributes(attributes)
            grad = _tensor(grad_output)
            return native.prroi_pool_coord_grad(
                _tensor(features), _tensor(rois), grad, pooled, scale, check_values=False
            ).numpy()

        return _defined(run, "PrRoIPoolCoordGrad", (_rows(rois), 5))

    _return_arrays()


def _return_arrays() -> None:
    """Hand float results of Python ops to ONNX Runtime as flat arrays, not Python lists.

    onnxruntime-extensions converts each result with ``tolist()`` (about 50 ns per element: 70 ms
    for a (100, 256, 7, 7) PrRoIPool output); its native side takes any flat buffer of numbers,
    so a flat float array is as correct and 20x faster. Other results keep the package's
    conversion. This uses the package's internals (checked with 0.15); where they differ, the
    package's own conversion stays and a warning says so.
    """
    try:
        from onnxruntime_extensions._ocos import Opdef, PyCustomOpDef

        registry = Opdef._odlist
        install = PyCustomOpDef.install_hooker
    except (ImportError, AttributeError) as error:
        _LOG.warning("keeping onnxruntime-extensions' slow result conversion: %s", error)
        return

    def flat(result: Any) -> Any:
        if isinstance(result, np.ndarray) and result.dtype.kind == "f":
            return np.ascontiguousarray(result).reshape(-1)
        return result.flatten().tolist()

    def invoke(op_id: int, feed: Any, attributes: dict) -> tuple:
        try:
            op = registry[op_id]
            result = op.body(*feed, **op.cast_attributes(attributes))
            outputs = result if isinstance(result, tuple) else (result,)
            return (op_id, *(item for r in outputs for item in (r.shape, flat(r))))
        except BaseException as error:
            return _empty_result(op_id, error)

    install(invoke)


def _empty_result(op_id: int, error: BaseException) -> tuple:
    """The result of an op that failed outside its body: one empty float output, logged."""
    try:
        _LOG.error("custom op %s failed (%s); returning an empty output", op_id, error)
    except BaseException:
        pass
    return (op_id, (0,), [])


def _defined(run: Callable[[], np.ndarray], op: str, shape: tuple[int, ...]) -> np.ndarray:
    """run(), or a defined result after logging why not: an all-NaN array of the output `shape`
    when run() raised, an empty (0,) array when that shape exceeds ``MAX_OUTPUT_BYTES`` (checked
    before anything is allocated) or the NaN array cannot be allocated either."""
    size = math.prod(shape) * np.dtype(np.float32).itemsize
    if size > MAX_OUTPUT_BYTES:
        _LOG.error(
            "%s: output %s needs %d bytes, over the limit of %d; returning an empty output",
            op,
            shape,
            size,
            MAX_OUTPUT_BYTES,
        )
        return np.zeros(0, dtype=np.float32)
    try:
        return run()
    except BaseException as error:
        try:
            _LOG.error("%s: %s; returning NaN of shape %s", op, error, shape)
            return np.full(shape, np.nan, dtype=np.float32)
        except BaseException:
            return np.zeros(0, dtype=np.float32)


def _rows(rois: np.ndarray) -> int:
    return rois.shape[0] if rois.ndim == 2 else 0


def _channels(features: np.ndarray) -> int:
    return features.shape[1] if features.ndim == 4 else 0


def _pooled(attributes: dict[str, Any]) -> tuple[int, int]:
    return (
        max(0, int(attributes.get("pooled_height", 0))),
        max(0, int(attributes.get("pooled_width", 0))),
    )


def _attributes(attributes: dict[str, Any]) -> tuple[tuple[int, int], float]:
    missing = {"pooled_height", "pooled_width", "spatial_scale"} - attributes.keys()
    if missing:
        raise ValueError(f"PrRoIPool node lacks attribute(s) {sorted(missing)}")
    pooled = (int(attributes["pooled_height"]), int(attributes["pooled_width"]))
    return pooled, float(attributes["spatial_scale"])


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))
