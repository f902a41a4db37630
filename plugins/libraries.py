"""Where the package's native libraries are: one rule for a checkout and an installed wheel.

The libraries that Python loads (libiounet_prroi_cpu, and libiounet_prroi_cuda and the TensorRT
plugin libraries when built) sit in the ``lib`` folder of this package: ``iounet/plugins/lib`` in
an installed wheel (CMake installs them there), ``plugins/lib`` in a checkout (``make native``
copies them there, so an editable install finds them the same way). An environment variable
naming a file overrides the rule for one library.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The package's native libraries.
LIBRARY_DIR = Path(__file__).resolve().parent / "lib"
#: What to tell someone whose checkout lacks a library.
BUILD_HINT = "build it with `make native` (it copies the libraries into plugins/lib)"


def library_file(name: str, env: str) -> Path:
    """$`env` when set, else `name` in the package's library folder."""
    override = os.environ.get(env)
    if override:
        return Path(override)
    return LIBRARY_DIR / name
