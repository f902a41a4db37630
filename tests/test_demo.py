"""What `make demo` reuses from an earlier run."""

from __future__ import annotations

import shutil

from tiny_model import write_tiny_checkpoint

from iounet.demo import _exported_from, _trained
from iounet.training.config import RECIPES


def test_a_finished_training_is_reused_and_an_unfinished_one_is_not(tmp_path):
    steps = RECIPES["cpu-demo"].optim.steps
    assert not _trained(tmp_path / "none", "cpu-demo")
    write_tiny_checkpoint(tmp_path / "part" / "last.pt", step=steps - 1)
    assert not _trained(tmp_path / "part", "cpu-demo")
    write_tiny_checkpoint(tmp_path / "done" / "last.pt", step=steps)
    assert _trained(tmp_path / "done", "cpu-demo")


def test_an_export_is_reused_only_for_its_own_checkpoint(exported_model, tmp_path):
    checkpoint, folder = exported_model
    assert _exported_from(folder, checkpoint)
    other = write_tiny_checkpoint(tmp_path / "other.pt", seed=5)
    assert not _exported_from(folder, other)
    assert not _exported_from(tmp_path / "missing", checkpoint)
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "head.onnx").write_bytes(b"changed")
    assert not _exported_from(broken, checkpoint)
