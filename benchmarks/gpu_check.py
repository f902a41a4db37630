"""`make gpu-check`: build, test and benchmark the CUDA half on a GPU machine, in one command.

For machines with Python, PyTorch (CUDA), nvcc and CMake but no registry access and no
TensorRT. Steps, each printed with its time:

1. build the native code for this GPU's architecture (`build-gpu/`; the CPU and CUDA libraries
   land in plugins/lib), then ctest (the CUDA API test runs its device checks here);
2. compute-sanitizer memcheck and racecheck over the CUDA API test, when the tool is there;
3. `pytest -m "gpu and not tensorrt"` on the files holding GPU tests: the CUDA kernels against
   the float64 oracle and finite differences (float32, float16), opcheck on CUDA, the IoU-NMS
   kernel against Algorithm 1, torch-cuda against the CPU reference (and ONNX Runtime where
   onnxruntime-extensions is installed);
4. the latency table and targets of benchmarks/gpu_bench.py.

It fails when no CUDA device is visible, when a step fails, or when any test it runs is skipped
(tests that need a package the machine lacks are left out by name, and said so).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build-gpu"
GPU_TEST_FILES = (
    "tests/test_prroi_pool.py",
    "tests/test_prroi_backends.py",
    "tests/test_prroi_ops.py",
    "tests/test_nms.py",
    "tests/test_refinement.py",
    "tests/test_torch_cuda.py",
    "tests/test_detection_parity.py",
)
#: Tests that need a package a GPU machine may lack: (package, test id).
NEEDS = (
    ("onnxruntime_extensions", "tests/test_torch_cuda.py::test_torch_cuda_matches_onnxruntime"),
    ("onnxruntime_extensions", "tests/test_detection_parity.py"),
    ("onnxscript", "tests/test_detection_parity.py"),
)


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device is visible", file=sys.stderr)
        return 1
    major, minor = torch.cuda.get_device_capability()
    print(
        f"gpu-check: {torch.cuda.get_device_name()} (sm_{major}{minor}), torch {torch.__version__}"
    )
    started = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": _python_path()}
    steps = [
        ("build", _build(f"{major}{minor}")),
        ("ctest", [["ctest", "--output-on-failure"]]),
        ("compute-sanitizer", _sanitizers()),
        ("pytest -m gpu", [_pytest_command()]),
        ("latency", [[sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py")]]),
    ]
    for name, commands in steps:
        step_start = time.perf_counter()
        print(f"\n== {name}", flush=True)
        for command in commands:
            cwd = BUILD if name == "ctest" else ROOT
            if subprocess.run(command, cwd=cwd, env=env, check=False).returncode != 0:
                print(f"gpu-check: {name} failed: {' '.join(command)}", file=sys.stderr)
                return 1
        if name == "pytest -m gpu" and not _no_skips():
            return 1
        print(f"== {name}: {time.perf_counter() - step_start:.0f} s", flush=True)
    print(f"\ngpu-check passed in {time.perf_counter() - started:.0f} s")
    return 0


def _build(arch: str) -> list[list[str]]:
    jobs = str(os.cpu_count() or 2)
    configure = [
        "cmake", "-S", str(ROOT), "-B", str(BUILD), f"-DCMAKE_CUDA_ARCHITECTURES={arch}",
        "-DIOUNET_SANITIZE=OFF", "-DIOUNET_COVERAGE=OFF", "-DIOUNET_CUDA_EMULATION=OFF",
        "-DCMAKE_BUILD_TYPE=Release",
    ]  # fmt: skip
    return [configure, ["cmake", "--build", str(BUILD), "-j", jobs]]


def _sanitizers() -> list[list[str]]:
    tool = shutil.which("compute-sanitizer")
    if tool is None:
        candidate = (
            Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "compute-sanitizer"
        )
        tool = str(candidate) if candidate.is_file() else None
    if tool is None:
        print("compute-sanitizer not found: skipped")
        return []
    test = str(BUILD / "bin" / "test_prroi_cuda_api")
    return [
        [tool, "--tool", check, "--error-exitcode", "1", test]
        for check in ("memcheck", "racecheck")
    ]


def _pytest_command() -> list[str]:
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "-m", "gpu and not tensorrt", f"--junitxml={BUILD / 'gpu-tests.xml'}", *GPU_TEST_FILES,
    ]  # fmt: skip
    for package, test in NEEDS:
        if importlib.util.find_spec(package) is None:
            print(f"left out (needs {package}, not installed here): {test}")
            command += ["--deselect", test]
    return command


def _no_skips() -> bool:
    suites = list(ElementTree.parse(BUILD / "gpu-tests.xml").getroot().iter("testsuite"))
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "skipped")}
    print(f"gpu tests: {counts['tests']} run, {counts['skipped']} skipped")
    if counts["skipped"] or not counts["tests"]:
        print(
            "gpu-check: a gpu test was skipped (or none ran): that is a failure here",
            file=sys.stderr,
        )
        return False
    return True


def _python_path() -> str:
    """A path on which `import iounet` finds this checkout: as installed, or through a tree of
    links (the package maps top-level folders to subpackages, so the checkout alone is not)."""
    found = importlib.util.find_spec("iounet")
    if found is not None and Path(found.origin or "").resolve().parent == ROOT / "iounet":
        return os.environ.get("PYTHONPATH", "")
    shim = Path(tempfile.mkdtemp(prefix="iounet-gpu-check-")) / "iounet"
    shim.mkdir()
    for source in (ROOT / "iounet").glob("*.py"):
        (shim / source.name).symlink_to(source)
    for package in ("plugins", "training", "export", "runtime"):
        (shim / package).symlink_to(ROOT / package)
    return os.pathsep.join(filter(None, [str(shim.parent), os.environ.get("PYTHONPATH", "")]))


if __name__ == "__main__":
    sys.exit(main())
