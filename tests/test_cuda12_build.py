"""The CUDA kernels for TITAN X (Pascal), TITAN Xp (sm_61) and TITAN V (sm_70), which CUDA 13
dropped.

Where NVIDIA's CUDA 12 toolkit is installed: the library built as `make cuda12` builds it, whose
cubins cuobjdump lists. In CI (nvcc 13, and CUDA 12.9's ptxas from the nvidia-cuda-nvcc-cu12
wheel of the test extra, which holds no nvcc): the kernels' device code as nvcc 13 writes it in
PTX for compute_75, retargeted to sm_61 and sm_70, assembles with CUDA 12.9's ptxas, so it uses
no instruction those GPUs lack.
"""

from __future__ import annotations

import importlib.util
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


#: PTX ISA version CUDA 12.9's ptxas reads at most.
PTX_ISA_OF_CUDA_12_9 = "8.8"


def _wheel_ptxas() -> Path:
    """CUDA 12.9's ptxas from the nvidia-cuda-nvcc-cu12 wheel (the test extra)."""
    spec = importlib.util.find_spec("nvidia")
    folders = [Path(p) for p in spec.submodule_search_locations or []] if spec else []
    found = [f / "cuda_nvcc" / "bin" / "ptxas" for f in folders]
    found = [p for p in found if p.is_file()]
    if not found:
        pytest.skip("no CUDA 12 ptxas: pip install nvidia-cuda-nvcc-cu12 (in the test extra)")
    return found[0]


def _cubin_arch(cubin: Path) -> int:
    """The SM version a cubin is for: the low byte of its ELF header's e_flags."""
    header = cubin.read_bytes()[:64]
    assert header[:4] == b"\x7fELF" and header[4] == 2, f"{cubin} is not a 64-bit ELF file"
    return int.from_bytes(header[48:52], "little") & 0xFF


def test_kernels_assemble_for_sm61_and_sm70(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc on the PATH: the PTX of the kernels cannot be written")
    ptxas = _wheel_ptxas()
    ptx = tmp_path / "prroi_pool_cuda.ptx"
    source = ROOT / "plugins" / "csrc" / "prroi_pool_cuda.cu"
    command = [nvcc, "-std=c++17", "-arch=compute_75", "-ptx", f"-I{source.parent}", str(source)]
    subprocess.run(
        [*command, "-o", str(ptx)], capture_output=True, text=True, timeout=600, check=True
    )
    text = ptx.read_text()
    assert re.search(r"^\.target sm_75$", text, flags=re.MULTILINE), "nvcc wrote no sm_75 PTX"
    assert "atom.global.add.f32" in text and "bar.sync" in text, "the PTX lacks the kernels"
    for arch in ARCHS:
        retargeted = tmp_path / f"sm_{arch}.ptx"
        version = f".version {PTX_ISA_OF_CUDA_12_9}"
        retargeted_text = re.sub(r"^\.version \d+\.\d+$", version, text, flags=re.MULTILINE)
        retargeted_text = re.sub(
            r"^\.target sm_75$", f".target sm_{arch}", retargeted_text, flags=re.MULTILINE
        )
        retargeted.write_text(retargeted_text)
        cubin = tmp_path / f"sm_{arch}.cubin"
        done = subprocess.run(
            [str(ptxas), f"-arch=sm_{arch}", str(retargeted), "-o", str(cubin)],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"ptxas for sm_{arch}:\n{done.stderr}"
        assert _cubin_arch(cubin) == int(arch)
