"""Shared fixtures and parametrizations."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# The oracle modules sit beside the tests (tests/ is not a package under importlib mode).
sys.path.insert(0, str(Path(__file__).parent))

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ],
    ),
]


@pytest.fixture(params=["device", "reference"])
def kernel(request):
    """Run the test on the ops' kernel for the device ("device": the native CPU library, or the
    CUDA library on a GPU) and on the plain PyTorch reference kernels ("reference")."""
    from iounet.plugins import native, reference_kernels

    if request.param == "reference":
        with reference_kernels():
            yield request.param
        return
    if not native.available():
        pytest.skip("the native CPU library is not built (make native)")
    yield request.param


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory):
    """(checkpoint, model folder): a tiny IoU-Net exported with fp32 and fp16 graphs."""
    from tiny_model import write_tiny_checkpoint

    from iounet.export.onnx_export import export_model

    root = tmp_path_factory.mktemp("exported")
    checkpoint = write_tiny_checkpoint(root / "last.pt")
    export_model(checkpoint, root / "model", fp16=True)
    return checkpoint, root / "model"


def tensorrt_missing() -> str | None:
    """Why TensorRT engines cannot run here (no CUDA device, no TensorRT, no plugin library), or
    None."""
    import importlib.util

    if not torch.cuda.is_available():
        return "no CUDA device"
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    from iounet.plugins.trt_loader import plugin_library_path

    if not plugin_library_path().is_file():
        return "plugin library not built: make native TENSORRT_ROOT=<TensorRT folder>"
    return None


def exported_at(factory: pytest.TempPathFactory, checkpoint: Path, opset: int) -> Path:
    """The model folder `iounet export --opset OPSET` makes of `checkpoint` (fp16 graphs too for
    an IoU-Net checkpoint), exported once per test session: the folder is kept beside the
    session's other temporary folders and reused when it is there."""
    from iounet.cli import main

    folder = factory.getbasetemp() / f"{checkpoint.parent.name}-opset{opset}"
    if not (folder / "manifest.json").is_file():
        argv = ["export", str(checkpoint), "--out", str(folder), "--opset", str(opset)]
        assert main([*argv, *([] if checkpoint.suffix == ".tar" else ["--fp16"])]) == 0
    return folder


@pytest.fixture(scope="session")
def exported_joint_model_17(exported_joint_model, tmp_path_factory):
    """The model folder of exported_joint_model's checkpoint exported at opset 17 (TensorRT 8.x)."""
    return exported_at(tmp_path_factory, exported_joint_model[0], 17)


@pytest.fixture(scope="session")
def exported_joint_model(tmp_path_factory):
    """(checkpoint, model folder): a tiny joint IoU-Net (detector included) exported with fp32
    and fp16 graphs."""
    from tiny_model import write_tiny_joint_checkpoint

    from iounet.export.onnx_export import export_model

    root = tmp_path_factory.mktemp("exported_joint")
    checkpoint = write_tiny_joint_checkpoint(root / "last.pt")
    export_model(checkpoint, root / "model", fp16=True)
    return checkpoint, root / "model"


@pytest.fixture
def fake_trt(monkeypatch):
    """The fake ``tensorrt`` module (tests/fake_tensorrt.py) in place of TensorRT."""
    from fake_tensorrt import install_fake_tensorrt

    return install_fake_tensorrt(monkeypatch)


@pytest.fixture
def fake_trt_on_cpu(fake_trt, monkeypatch):
    """The fake TensorRT, with the TensorRT backend on the CPU (the fake reads host memory)."""
    from iounet.runtime import trt_backend

    monkeypatch.setattr(trt_backend, "_current_device", lambda: torch.device("cpu"))
    return fake_trt
