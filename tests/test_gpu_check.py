"""`make gpu-check` as far as a machine without a GPU goes: its refusal, its test selection, its
skip rule and the import shim it uses where the package is not installed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_refuses_without_a_gpu():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "no CUDA device is visible" in result.stderr


def test_selects_the_gpu_tests_and_leaves_out_what_needs_missing_packages(monkeypatch):
    gpu_check = _module()
    monkeypatch.setattr(gpu_check, "NEEDS", (("no_such_package_here", "tests/x.py::test_y"),))
    command = gpu_check._pytest_command()
    marker = command.index("gpu and not tensorrt")
    assert command[marker - 1] == "-m" and command[:3] == [sys.executable, "-m", "pytest"]
    assert command[command.index("--deselect") + 1] == "tests/x.py::test_y"
    assert all((ROOT / name).is_file() for name in gpu_check.GPU_TEST_FILES)


@pytest.mark.parametrize(
    ("tests", "skipped", "passes"), [(12, 0, True), (12, 1, False), (0, 0, False)]
)
def test_a_skipped_or_missing_gpu_test_fails_the_check(
    tmp_path, monkeypatch, tests, skipped, passes
):
    gpu_check = _module()
    monkeypatch.setattr(gpu_check, "BUILD", tmp_path)
    (tmp_path / "gpu-tests.xml").write_text(
        f'<testsuites><testsuite tests="{tests}" skipped="{skipped}"/></testsuites>'
    )
    assert gpu_check._no_skips() is passes


def test_import_shim_finds_this_checkout(monkeypatch):
    import site

    gpu_check = _module()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    shim = gpu_check._python_path().split(":")[0]
    # No site processing (-S): the editable install's import hook stays out; torch comes from the
    # site-packages folders appended after the shim.
    setup = f"import sys; sys.path[:0] = [{shim!r}]; sys.path += {site.getsitepackages()!r}"
    script = "import iounet.runtime.pipeline as p, iounet.plugins.ops; print(p.__file__)"
    result = subprocess.run(
        [sys.executable, "-S", "-c", f"{setup}; {script}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = Path(result.stdout.strip())
    assert str(found).startswith(shim)
    assert found.resolve() == ROOT / "runtime" / "pipeline.py"
