"""Modules -> the ONNX graphs of a model folder, detection or tracking alike: each graph exported
at the asked opset with the iounet custom ops, checked, and described for its manifest entry."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from iounet import version
from iounet.export.manifest_format import (
    DEFAULT_OPSET,
    OPSETS,
    GraphEntry,
    TensorSpec,
    sha256_file,
)
from iounet.plugins.onnx_translation import translation_table

#: Per example input, the dimensions that stay dynamic in the graph (None: all fixed).
DynamicShapes = tuple[dict[int, torch.export.Dim] | None, ...]


@dataclass(frozen=True)
class GraphSpec:
    """One graph to export: the module, example inputs to trace it with, their dynamic
    dimensions, and the names of its inputs and outputs."""

    module: nn.Module
    inputs: tuple[Tensor, ...]
    dims: DynamicShapes
    input_names: list[str]
    output_names: list[str]


def check_opset(opset: object, name: str = "opset") -> int:
    """`opset` if it is one of ``OPSETS``, else a ValueError naming `name` and those values."""
    if type(opset) is not int or opset not in OPSETS:
        allowed = " or ".join(str(o) for o in OPSETS)
        raise ValueError(f"{name} must be {allowed} (17 for TensorRT 8.5/8.6), got {opset!r}")
    return opset


def parse_opset(text: str | None) -> int:
    """The opset of ``--opset TEXT`` (one of ``OPSETS``; ``DEFAULT_OPSET`` without the option)."""
    if text is None:
        return DEFAULT_OPSET
    return check_opset(int(text) if text.strip().isdecimal() else text, "--opset")


def export_graphs(
    specs: dict[str, GraphSpec], folder: Path, opset: int, suffix: str = ""
) -> dict[str, GraphEntry]:
    """Export each graph to ``folder/<role><suffix>.onnx`` at ONNX opset `opset`; their manifest
    entries by role."""
    entries = {}
    for role, spec in specs.items():
        path = folder / f"{role}{suffix}.onnx"
        export_graph(spec, path, opset)
        entries[role] = GraphEntry(path.name, sha256_file(path), *graph_signature(path))
    return entries


def export_graph(spec: GraphSpec, path: Path, opset: int) -> None:
    """Export one graph at ONNX opset `opset` to `path` and check it (full check, its opset and
    input names)."""
    import onnx

    with _quiet():
        program = torch.onnx.export(
            spec.module.eval(),
            spec.inputs,
            dynamo=True,
            dynamic_shapes=spec.dims,
            custom_translation_table=translation_table(opset),
            input_names=spec.input_names,
            output_names=spec.output_names,
            opset_version=opset,
            verbose=False,
        )
        program.save(str(path))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    found = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if found != [opset]:
        raise RuntimeError(f"{path.name}: exported at ONNX opset {found}, not the asked {opset}")
    actual = [value.name for value in model.graph.input]
    if actual != spec.input_names:
        raise RuntimeError(f"{path.name}: exported inputs {actual}, expected {spec.input_names}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the exporter's (and its version converter's) progress lines and warnings off the
    user's terminal."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            torch.no_grad(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def graph_signature(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The graph's inputs and outputs: name, element type and shape (ints or dimension names)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        return TensorSpec(value.name, dtype, shape)

    return (
        tuple(describe(v) for v in model.graph.input),
        tuple(describe(v) for v in model.graph.output),
    )


def export_versions() -> dict[str, str]:
    """The versions of the software that exports the graphs (the manifest's ``versions``)."""
    import onnx

    return {
        "iounet": version.__version__,
        "torch": str(torch.__version__),
        "onnx": onnx.__version__,
    }
