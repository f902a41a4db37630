"""Read a pytracking checkpoint (``*.pth.tar``) without pytracking and without running its pickles.

A pytracking checkpoint is a ``torch.save`` of a dict whose ``net`` entry is the network's state
dict (``feature_extractor.*``, ``bb_regressor.*``...) beside pickled objects of pytracking's own
classes (``constructor``, ``settings``). ``torch.load`` runs here with a restricted unpickler:
tensors, storages and plain containers are rebuilt; every other global the pickle names becomes
an inert ``Placeholder`` subclass that only records its arguments and state, so nothing from the
file is imported or called. Both of torch's formats (zip, and the legacy format of torch < 1.6
that pytracking's released checkpoints use) go through it.
"""

from __future__ import annotations

import collections
import functools
import os
import pickle
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeGuard

import torch
from torch import Tensor


class Placeholder:
    """An object of a class the checkpoint names but that was not loaded (inert)."""

    module: str = ""
    qualname: str = ""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args, self.kwargs = args, kwargs
        self.state: object = None
        self.items: list[object] = []

    def __setstate__(self, state: object) -> None:
        self.state = state

    def __setitem__(self, key: object, value: object) -> None:
        self.items.append((key, value))

    def append(self, value: object) -> None:
        self.items.append(value)

    def extend(self, values: Iterable[object]) -> None:
        self.items.extend(values)

    def __call__(self, *args: object, **kwargs: object) -> Placeholder:
        """What calling the object would have made: another placeholder (nothing runs)."""
        return _placeholder(self.module, f"{self.qualname}()")(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<not loaded: {self.module}.{self.qualname}>"


@functools.cache
def _placeholder(module: str, name: str) -> type[Placeholder]:
    return type(name.replace(".", "_"), (Placeholder,), {"module": module, "qualname": name})


def _rebuild_tensor(
    storage: torch.TypedStorage,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *_: object,
) -> Tensor:
    """torch's tensor rebuilders without their hooks and metadata (only the data counts)."""
    return torch._utils._rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data: Tensor, *_: object) -> Tensor:
    return data


_ALLOWED: dict[tuple[str, str], Callable[..., object]] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("_codecs", "encode"): lambda text, encoding="utf-8": text.encode(encoding),
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors and plain containers; any other global becomes a ``Placeholder``."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _placeholder(module, name)


def _load(file: BinaryIO, **kwargs: object) -> object:
    return RestrictedUnpickler(file, **kwargs).load()


#: What ``torch.load`` takes as ``pickle_module``.
restricted_pickle = types.SimpleNamespace(
    __name__="iounet_restricted_pickle", Unpickler=RestrictedUnpickler, load=_load
)


@dataclass(frozen=True)
class PytrackingCheckpoint:
    """The network weights of a pytracking checkpoint and what it says about itself."""

    state: dict[str, Tensor]
    constructor: str | None  # e.g. "ltr.models.tracking.dimpnet.dimpnet50", when recorded
    net_type: str | None
    epoch: int | None


def read_checkpoint(path: str | os.PathLike) -> object:
    """The unpickled contents of a torch checkpoint file, with unknown classes as placeholders.

    Raises FileNotFoundError for a missing file and ValueError for a file torch cannot read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(
            path, map_location="cpu", pickle_module=restricted_pickle, weights_only=False
        )
    except RuntimeError as error:
        if "explicit pickle_module" not in str(error):  # TORCH_FORCE_WEIGHTS_ONLY_LOAD is set
            raise ValueError(f"{path} is not a readable PyTorch checkpoint: {error}") from error
    except Exception as error:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {error}") from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {error}") from error


def is_pytracking_checkpoint(contents: object) -> TypeGuard[dict[str, object]]:
    """Whether unpickled checkpoint contents are pytracking's: a dict with a ``net`` state dict."""
    return isinstance(contents, dict) and isinstance(contents.get("net"), dict)


def pytracking_checkpoint(contents: object, source: str = "checkpoint") -> PytrackingCheckpoint:
    """The weights and description of unpickled pytracking checkpoint contents."""
    if not is_pytracking_checkpoint(contents):
        found = sorted(map(str, contents))[:8] if isinstance(contents, dict) else None
        raise ValueError(
            f"{source} is not a pytracking checkpoint: it has no 'net' state dict "
            f"(top-level keys: {found})"
        )
    state = {str(k): v.detach() for k, v in contents["net"].items() if isinstance(v, Tensor)}
    return PytrackingCheckpoint(
        state=state,
        constructor=_constructor_name(contents.get("constructor")),
        net_type=contents.get("net_type") if isinstance(contents.get("net_type"), str) else None,
        epoch=contents.get("epoch") if isinstance(contents.get("epoch"), int) else None,
    )


def load_pytracking_checkpoint(path: str | os.PathLike) -> PytrackingCheckpoint:
    """Read a pytracking ``.pth.tar`` safely (see the module docstring)."""
    return pytracking_checkpoint(read_checkpoint(path), str(path))


def _constructor_name(constructor: object) -> str | None:
    """``fun_module.fun_name`` of pytracking's NetConstructor, read from its recorded state."""
    state = getattr(constructor, "state", None)
    if isinstance(state, dict) and isinstance(state.get("fun_name"), str):
        module = state.get("fun_module")
        return f"{module}.{state['fun_name']}" if isinstance(module, str) else state["fun_name"]
    return None
