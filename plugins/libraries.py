"""Where the package's native libraries are, and how Python binds them: one rule for a checkout and
an installed wheel, one way to declare their C functions.

The libraries that Python loads (libiounet_prroi_cpu, and libiounet_prroi_cuda and the TensorRT
plugin libraries when built) sit in the ``lib`` folder of this package: ``iounet/plugins/lib`` in
an installed wheel (CMake installs them there), ``plugins/lib`` in a checkout (``make native``
copies them there, so an editable install finds them the same way). An environment variable
naming a file overrides the rule for one library.

Each binding declares its library's C functions in one signature table, name -> (restype,
argtypes), which :func:`bind` applies: ctypes then converts and checks every argument.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from iounet import version

#: The package's native libraries.
LIBRARY_DIR = Path(__file__).resolve().parent / "lib"
#: What to tell someone whose checkout lacks a library.
BUILD_HINT = "build it with `make native` (it copies the libraries into plugins/lib)"

#: C function name -> (restype, argtypes), as ctypes takes them.
Signatures = Mapping[str, tuple[Any, Sequence[Any]]]

#: A pointer argument: a tensor's ``data_ptr()``, or None for NULL.
POINTER = ctypes.c_void_p


def library_file(name: str, env: str) -> Path:
    """$`env` when set, else `name` in the package's library folder."""
    override = os.environ.get(env)
    if override:
        return Path(override)
    return LIBRARY_DIR / name


def bind(path: Path, signatures: Signatures) -> ctypes.CDLL:
    """The library at `path` with `signatures` declared; OSError when it does not load,
    AttributeError when it lacks a function of the table."""
    library = ctypes.CDLL(str(path))
    for name, (restype, argtypes) in signatures.items():
        function = getattr(library, name)
        function.restype = restype
        function.argtypes = list(argtypes)
    return library


def load_package_library(
    name: str,
    env: str,
    signatures: Signatures,
    version_function: str,
    error: type[Exception],
    build_hint: str = BUILD_HINT,
) -> ctypes.CDLL:
    """Bind the package library `name` (:func:`library_file`) and check that `version_function`
    (no arguments, a C string) returns this package's version; raise `error` saying how to build
    it when it is missing, does not load, lacks a function or comes from another version."""
    path = library_file(name, env)
    if not path.is_file():
        raise error(f"{name} not found at {path}: {build_hint}, or point {env} at it")
    try:
        library = bind(path, {**signatures, version_function: (ctypes.c_char_p, ())})
    except (OSError, AttributeError) as failure:
        raise error(f"cannot load {path}: {failure}") from failure
    built = getattr(library, version_function)().decode()
    if built != version.__version__:
        raise error(
            f"{path} was built from iounet {built}, this is iounet {version.__version__}: "
            f"{BUILD_HINT}"
        )
    return library
