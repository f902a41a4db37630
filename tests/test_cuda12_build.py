"""The CUDA library for TITAN X (Pascal), TITAN Xp (sm_61) and TITAN V (sm_70), built as
`make cuda12` builds it: CUDA 13 dropped these architectures, so a CUDA 12 toolkit's nvcc compiles
them. cuobjdump lists the GPU code in the library, one cubin per architecture."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("61", "70")
LIBRARY = "libiounet_prroi_cuda.so"


def _cuda_release(nvcc: Path) -> str:
    """The CUDA release of `nvcc` ("12.9"), from `nvcc --version`."""
    printed = subprocess.run(
        [str(nvcc), "--version"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    found = re.search(r"release (\d+\.\d+)", printed)
    assert found, f"{nvcc} --version names no release:\n{printed}"
    return found.group(1)


def _cuda12_nvcc() -> Path:
    """CUDA12_NVCC, else the newest /usr/local/cuda-12.*/bin/nvcc (as `make cuda12` picks)."""
    named = os.environ.get("CUDA12_NVCC")
    if named:
        nvcc = Path(named)
        assert _cuda_release(nvcc).startswith("12."), f"CUDA12_NVCC={named} is not CUDA 12"
        return nvcc
    installed = sorted(Path("/usr/local").glob("cuda-12.*/bin/nvcc"))
    if not installed:
        pytest.skip(
            "no CUDA 12 nvcc: install NVIDIA's CUDA 12.x toolkit (PyPI has no CUDA 12 nvcc) "
            "or set CUDA12_NVCC=<its bin/nvcc>"
        )
    return installed[-1]


def _cuobjdump(nvcc: Path) -> Path:
    """The toolkit's cuobjdump, else one on the PATH (any release lists sm_61 and sm_70 code)."""
    beside = nvcc.with_name("cuobjdump")
    found = beside if beside.exists() else shutil.which("cuobjdump")
    assert found, f"no cuobjdump beside {nvcc} or on the PATH: install the toolkit's cuobjdump"
    return Path(found)


def _build(nvcc: Path, archs: tuple[str, ...], build: Path) -> Path:
    """libiounet_prroi_cuda built for `archs` into `build`; nothing is copied into plugins/lib."""
    cmake = shutil.which("cmake") or str(Path(sys.executable).with_name("cmake"))
    configure = [cmake, "-S", str(ROOT), "-B", str(build), f"-DCMAKE_CUDA_COMPILER={nvcc}"]
    configure += [f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(archs)}", "-DIOUNET_PACKAGE_LIB_DIR="]
    configure += ["-DIOUNET_SANITIZE=OFF", "-DIOUNET_COVERAGE=OFF"]
    compile_ = [cmake, "--build", str(build), "-j", "2", "--target", "iounet_prroi_cuda"]
    for command in (configure, compile_):
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return build / "lib" / LIBRARY


def _elf_archs(cuobjdump: Path, library: Path) -> set[str]:
    """The architectures of the cubins in `library` ({"61", "70"}), from `cuobjdump --list-elf`."""
    listed = subprocess.run(
        [str(cuobjdump), "--list-elf", str(library)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return set(re.findall(r"\.sm_(\d+)\.cubin$", listed, flags=re.MULTILINE))


def test_cuda12_library_holds_sm61_and_sm70_code(tmp_path):
    nvcc = _cuda12_nvcc()
    library = _build(nvcc, ARCHS, tmp_path / "build")
    assert _elf_archs(_cuobjdump(nvcc), library) == set(ARCHS)
