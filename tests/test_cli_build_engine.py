"""`iounet build-engine`: its messages without TensorRT or the plugin library, and the settings
it builds with (on a fake TensorRT)."""

from __future__ import annotations

import sys

import pytest
from engine_models import fake_model
from fake_tensorrt import FakeTensorRT

from iounet import cli
from iounet.export.engine import load_engine_metadata

# --- command line ------------------------------------------------------------------------------


def test_cli_without_tensorrt_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails
    model = fake_model(tmp_path / "model")
    argv = ["build-engine", str(model), "--boxes", "1:10:100", "--image-size", "64x64"]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("iounet build-engine: TensorRT is not installed")
    assert "pip install -e .[gpu]" in error
    assert error.count("\n") == 1 and "Traceback" not in error
    assert not (model / "engines" / "fp32").exists()


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [("--boxes", "10:1:100", "--boxes must have min <= opt <= max"), ("--image-size", "64", "HxW")],
)
def test_cli_bad_ranges_are_one_line(tmp_path, capsys, option, value, problem):
    arguments = {"--boxes": "1:10:100", "--image-size": "64x64", option: value}
    argv = ["build-engine", str(tmp_path), *[x for pair in arguments.items() for x in pair]]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("iounet build-engine: ") and problem in error
    assert error.count("\n") == 1


def test_cli_builds_with_the_given_settings(fake_trt, tmp_path, capsys):
    model = fake_model(tmp_path / "model", ("fp32", "fp16"))
    cache = tmp_path / "cache.bin"
    argv = ["build-engine", str(model), "--precision", "fp16", "--boxes", "8"]
    argv += ["--image-size", "64x96:128x128:256x320", "--workspace", "32"]
    argv += ["--timing-cache", str(cache)]
    assert cli.main(argv) == 0
    assert str(model / "engines" / "fp16") in capsys.readouterr().out
    metadata = load_engine_metadata(model / "engines" / "fp16")
    assert metadata["boxes"] == [8, 8, 8]
    assert metadata["image_size"] == [[64, 96], [128, 128], [256, 320]]
    assert metadata["workspace_mb"] == 32
    assert fake_trt.cache_given == [b""] and cache.read_bytes() == b"+"
    assert cli.main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert cli.main([*argv, "--force"]) == 0


def test_cli_without_the_plugin_library_says_how_to_build_it(monkeypatch, tmp_path, capsys):
    from iounet.plugins import trt_loader

    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT())
    monkeypatch.setenv(trt_loader.LIBRARY_ENV, str(tmp_path / "absent.so"))
    trt_loader.load_plugin_library.cache_clear()
    model = fake_model(tmp_path / "model")
    argv = ["build-engine", str(model), "--boxes", "1:8:16", "--image-size", "64x64"]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert "absent.so" in error and "make native TENSORRT_ROOT" in error
    assert not (model / "engines" / "fp32").exists()
