"""The runtime's backends by name, for the tests that run each on one exported model: which can
run here, and each opened on a model folder. "trt-fake" is the TensorRT backend on the CPU with the
fake TensorRT (tests/fake_tensorrt.py), which runs the graphs with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tensorrt_missing
from engine_models import linked_model

from iounet.export.engine import build_engines
from iounet.export.manifest import load_manifest
from iounet.plugins import native
from iounet.runtime.backend import Backend
from iounet.runtime.pipeline import open_backend

GPU = pytest.mark.gpu
NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
NO_TENSORRT = pytest.mark.skipif(tensorrt_missing() is not None, reason=str(tensorrt_missing()))
NO_NATIVE = pytest.mark.skipif(not native.available(), reason="native library not built")

#: The backends other than "torch" (the PyTorch model, every table's reference).
OTHER_BACKENDS = [
    pytest.param("torch-native", marks=NO_NATIVE),
    "ort",
    "trt-fake",
    pytest.param("torch-cuda", marks=[GPU, NO_GPU]),
    pytest.param("trt", marks=[GPU, pytest.mark.tensorrt, NO_TENSORRT]),
]
BACKENDS = ["torch", *OTHER_BACKENDS]


def open_test_backend(
    request: pytest.FixtureRequest,
    name: str,
    checkpoint: Path,
    folder: Path,
    boxes: tuple[int, int, int],
    image_sizes: tuple[tuple[int, int], ...],
) -> Backend:
    """The backend `name` on the model exported from `checkpoint` to `folder`; "trt" and
    "trt-fake" on fp32 engines for `boxes` and `image_sizes` (build-engine's ranges), built in a
    temporary folder linked to `folder`."""
    if name not in ("trt", "trt-fake"):
        options = {"checkpoint": checkpoint} if name.startswith("torch") else {}
        return open_backend(load_manifest(folder), name, **options)
    if name == "trt-fake":
        request.getfixturevalue("fake_trt_on_cpu")
    linked = linked_model(folder, request.getfixturevalue("tmp_path") / "model")
    build_engines(linked, "fp32", boxes, image_sizes)
    return open_backend(load_manifest(linked), "trt")


def matched_share(boxes: torch.Tensor, reference: torch.Tensor, tol: float) -> float:
    """The share of the reference boxes with a box within `tol` pixels in `boxes`."""
    if len(reference) == 0:
        return 1.0
    distance = (boxes[:, None, :] - reference[None, :, :]).abs().amax(dim=2)
    return float((distance.amin(dim=0) <= tol).float().mean())
