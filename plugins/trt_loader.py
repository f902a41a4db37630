"""Finding and registering the TensorRT plugin library (libiounet_trt_plugin, built by CMake).

TensorRT is imported only when a function here is called; without it the error says what to
install. The library is looked for in the package's lib folder (:mod:`iounet.plugins.libraries`),
or at $IOUNET_TRT_PLUGIN_LIB when set.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path
from types import ModuleType

from iounet.plugins.libraries import bind, library_file

LIBRARY_NAME = "libiounet_trt_plugin.so"
LIBRARY_ENV = "IOUNET_TRT_PLUGIN_LIB"
PLUGIN_NAMES = ("PrRoIPool", "PrRoIPoolCoordGrad")
PLUGIN_VERSION = "1"


def import_tensorrt() -> ModuleType:
    """The tensorrt module, or ImportError saying how to install it."""
    try:
        import tensorrt
    except ImportError as error:
        raise ImportError(
            "TensorRT is not installed: on a machine with an NVIDIA GPU, "
            "`pip install -e .[gpu]` (tensorrt >= 10) or NVIDIA's TensorRT wheels"
        ) from error
    return tensorrt


def plugin_library_path() -> Path:
    """$IOUNET_TRT_PLUGIN_LIB, else libiounet_trt_plugin.so in the package's lib folder."""
    return library_file(LIBRARY_NAME, LIBRARY_ENV)


def _checked_path(path: str | os.PathLike | None) -> Path:
    library = Path(path) if path is not None else plugin_library_path()
    if not library.is_file():
        raise FileNotFoundError(
            f"TensorRT plugin library not found at {library}: build it with "
            f"`make native TENSORRT_ROOT=<TensorRT folder>`, or point {LIBRARY_ENV} at it"
        )
    return library


def plugin_library_version(path: str | os.PathLike | None = None) -> str:
    """The version string the plugin library reports (kept in engine metadata)."""
    library = bind(_checked_path(path), {"iounetPluginLibraryVersion": (ctypes.c_char_p, ())})
    return library.iounetPluginLibraryVersion().decode()


@functools.cache
def load_plugin_library(path: str | os.PathLike | None = None) -> Path:
    """Register the plugins with TensorRT's plugin registry once per process; return the library."""
    trt = import_tensorrt()
    library = _checked_path(path)
    registry = trt.get_plugin_registry()
    if registry.get_creator(PLUGIN_NAMES[0], PLUGIN_VERSION, "") is None:
        registry.load_library(str(library))
    missing = [n for n in PLUGIN_NAMES if registry.get_creator(n, PLUGIN_VERSION, "") is None]
    if missing:
        raise RuntimeError(f"{library} did not register the TensorRT plugin(s) {missing}")
    return library
