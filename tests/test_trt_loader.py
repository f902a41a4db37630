"""The TensorRT plugin loader's messages where TensorRT or the library is missing."""

from __future__ import annotations

import importlib.util

import pytest

from iounet.plugins import trt_loader


def test_missing_tensorrt_says_what_to_install(monkeypatch):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(ImportError, match=r"pip install -e \.\[gpu\]"):
        trt_loader.import_tensorrt()


def test_missing_library_says_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setenv(trt_loader.LIBRARY_ENV, str(tmp_path / "absent.so"))
    with pytest.raises(FileNotFoundError, match="make native TENSORRT_ROOT"):
        trt_loader.plugin_library_version()
