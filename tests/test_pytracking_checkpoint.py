"""Reading pytracking checkpoints without running their pickles."""

from __future__ import annotations

import collections
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from iounet.training.pytracking_checkpoint import (
    Placeholder,
    load_pytracking_checkpoint,
    pytracking_checkpoint,
    read_checkpoint,
)


class _SideEffect:
    """Unpickling this (as pickle would) creates the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Appender:
    """Unpickling this with pickle would call Path.touch on `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def pytracking_classes(monkeypatch):
    """A stand-in for pytracking's NetConstructor under its real module path."""

    class NetConstructor:
        def __init__(self, fun_name: str, fun_module: str) -> None:
            self.fun_name, self.fun_module, self.args, self.kwds = fun_name, fun_module, (), {}

    NetConstructor.__module__ = "ltr.admin.model_constructor"
    NetConstructor.__qualname__ = "NetConstructor"
    for name in ("ltr", "ltr.admin", "ltr.admin.model_constructor"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["ltr.admin.model_constructor"].NetConstructor = NetConstructor
    return NetConstructor


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_unknown_classes_become_inert_and_tensors_load(tmp_path, pytracking_classes, zip_format):
    marker, second = tmp_path / "was_run", tmp_path / "also_run"
    weights = collections.OrderedDict(
        [("bb_regressor.iou_predictor.weight", torch.arange(6.0).reshape(1, 6)),
         ("feature_extractor.conv1.weight", torch.full((2, 3), 0.5, dtype=torch.float64))]
    )  # fmt: skip
    contents = {
        "epoch": 50,
        "net_type": "DiMPnet",
        "net": weights,
        "constructor": pytracking_classes("dimpnet50", "ltr.models.tracking.dimpnet"),
        "settings": _SideEffect(marker),
        "stats": [_Appender(second)],
    }
    path = tmp_path / "DiMPnet_ep0050.pth.tar"
    torch.save(contents, path, _use_new_zipfile_serialization=zip_format)
    for name in ("ltr", "ltr.admin", "ltr.admin.model_constructor"):
        del sys.modules[name]  # as on a machine without pytracking

    found = load_pytracking_checkpoint(path)
    raw = read_checkpoint(path)

    assert not marker.exists() and not second.exists()
    assert isinstance(raw["settings"], Placeholder)
    assert (raw["settings"].module, raw["settings"].qualname) in {
        ("posix", "system"),
        ("nt", "system"),
    }
    assert raw["settings"].args == (f"touch {marker}",)
    assert set(found.state) == set(weights)
    for key, value in weights.items():
        assert found.state[key].dtype == value.dtype
        torch.testing.assert_close(found.state[key], value, rtol=0, atol=0)
    assert found.constructor == "ltr.models.tracking.dimpnet.dimpnet50"
    assert (found.epoch, found.net_type) == (50, "DiMPnet")


def test_files_that_are_not_pytracking_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.pth.tar")
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(junk)
    plain = tmp_path / "plain.pt"
    torch.save({"model": {"w": torch.ones(1)}}, plain)
    with pytest.raises(ValueError, match=r"not a pytracking checkpoint.*'model'"):
        load_pytracking_checkpoint(plain)
    with pytest.raises(ValueError, match="not a pytracking checkpoint"):
        pytracking_checkpoint([1, 2, 3])
