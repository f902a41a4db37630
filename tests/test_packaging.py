"""Packaging: `pip wheel .` builds a wheel with the CPU library inside the package, and the
loaders find the native libraries in the package's lib folder (in a checkout and installed)."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import iounet
from iounet.plugins import libraries, native, trt_loader

ROOT = Path(__file__).resolve().parents[1]
#: Source folder -> its place in the wheel (the mapping in pyproject.toml).
PACKAGES = {
    "iounet": "iounet",
    "plugins": "iounet/plugins",
    "training": "iounet/training",
    "export": "iounet/export",
    "runtime": "iounet/runtime",
}
CPU_LIBRARY = f"iounet/plugins/lib/{native.LIBRARY_NAME}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel . --no-deps --no-build-isolation` builds from this checkout."""
    if importlib.util.find_spec("scikit_build_core") is None:
        pytest.fail("scikit-build-core is not installed: `make test` installs it (extra `test`)")
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps"]
    command += ["--no-build-isolation", "--no-cache-dir", "--quiet", "-w", str(out)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout}\n{built.stderr}"
    (path,) = out.glob("iounet-*.whl")
    return path


def _dist_info(archive: zipfile.ZipFile, name: str) -> str:
    return archive.read(f"iounet-{iounet.__version__}.dist-info/{name}").decode()


def test_wheel_holds_the_cpu_library_and_every_module(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert CPU_LIBRARY in names
    expected = {
        f"{target}/{path.relative_to(ROOT / source).as_posix()}"
        for source, target in PACKAGES.items()
        for path in (ROOT / source).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert expected <= names, sorted(expected - names)
    for module in ("plugins/pytorch.py", "plugins/native.py", "runtime/pipeline.py", "cli.py"):
        assert f"iounet/{module}" in names
    # Only the built libraries, no C++ sources, no bytecode and nothing outside the package.
    assert not [n for n in names if n.endswith((".cpp", ".cu", ".h", ".pyc"))]
    assert {n.split("/")[0] for n in names} == {"iounet", f"iounet-{iounet.__version__}.dist-info"}


def test_wheel_metadata_has_the_version_and_the_console_script(wheel):
    assert wheel.name.startswith(f"iounet-{iounet.__version__}-")
    with zipfile.ZipFile(wheel) as archive:
        metadata = _dist_info(archive, "METADATA").splitlines()
        entry_points = _dist_info(archive, "entry_points.txt")
        wheel_file = _dist_info(archive, "WHEEL")
    assert f"Version: {iounet.__version__}" in metadata
    assert "[console_scripts]" in entry_points
    assert "iounet = iounet.cli:main" in entry_points
    assert "Root-Is-Purelib: false" in wheel_file  # it holds a platform library


def test_library_in_the_wheel_loads_and_reports_the_package_version(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(CPU_LIBRARY, tmp_path)
    library = ctypes.CDLL(str(tmp_path / CPU_LIBRARY))
    library.iounet_prroi_version.restype = ctypes.c_char_p
    assert library.iounet_prroi_version().decode() == iounet.__version__


def test_unpacked_wheel_finds_its_own_library(wheel, tmp_path):
    """Imported from the unpacked wheel (not the checkout), native loads iounet/plugins/lib."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path)
    script = textwrap.dedent(
        f"""
        import sys
        # Leave out the editable install's import redirect, so that the wheel's files are used.
        sys.meta_path[:] = [
            f for f in sys.meta_path if not type(f).__module__.lstrip("_").startswith("editable")
        ]
        sys.path.insert(0, {str(tmp_path)!r})
        from iounet.plugins import native
        print(native.__file__)
        print(native.library_path())
        print(native.library_version())
        """
    )
    env = {k: v for k, v in os.environ.items() if k != native.LIBRARY_ENV}
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    module, library, version = run.stdout.split()
    assert Path(module) == tmp_path / "iounet/plugins/native.py"
    assert Path(library) == tmp_path / CPU_LIBRARY
    assert version == iounet.__version__


def test_loaders_look_in_the_package_lib_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(native.LIBRARY_ENV, raising=False)
    monkeypatch.delenv(trt_loader.LIBRARY_ENV, raising=False)
    assert libraries.LIBRARY_DIR == Path(native.__file__).resolve().parent / "lib"
    assert native.library_path() == libraries.LIBRARY_DIR / native.LIBRARY_NAME
    assert trt_loader.plugin_library_path() == libraries.LIBRARY_DIR / trt_loader.LIBRARY_NAME
    # The environment variables still name another file.
    monkeypatch.setenv(native.LIBRARY_ENV, str(tmp_path / "cpu.so"))
    monkeypatch.setenv(trt_loader.LIBRARY_ENV, str(tmp_path / "trt.so"))
    assert native.library_path() == tmp_path / "cpu.so"
    assert trt_loader.plugin_library_path() == tmp_path / "trt.so"


def test_version_lives_in_one_place():
    """The C++ gets the version from the build (IOUNET_VERSION), never as a literal in code."""
    version = f'"{iounet.__version__}"'
    sources = [
        path
        for folder in ("plugins", "tests/cpp")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in {".h", ".cpp", ".cu", ".cuh"}
    ]
    assert sources
    literals = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in sources
        for line in path.read_text().splitlines()
        if version in line and not line.strip().startswith(("//", "/*", "*"))
    ]
    assert not literals
