"""The IoU branch trained on a frozen detector: its feature cache, its checkpoint, exact resume,
bad `--from` checkpoints; and the eager per-level pooling it relies on."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from unittest import mock

import pytest
import torch
from tiny_model import TINY, write_tiny_checkpoint, write_tiny_joint_checkpoint

from iounet.cli import main
from iounet.staging import temporary_name
from iounet.training.checkpoint import load_checkpoint, load_model
from iounet.training.config import load_config
from iounet.training.feature_cache import IDENTITY_NAME, CachedImage, FeatureCache
from iounet.training.images import pad_images
from iounet.training.iou_branch_trainer import CACHE_FOLDER, IoUBranchTrainer
from iounet.training.model import pool_levels
from iounet.training.synthetic import generate_synthetic_dataset

TOML = """recipe = "iou-branch-cpu-demo"
seed = 4
checkpoint_every = 2
[data]
boxes_per_image = 8
cache_memory_mb = {memory}
cache_disk_mb = {disk}
flip = {flip}
[optim]
batch_size = 2
steps = 4
lr_steps = [3]
warmup_steps = 1
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    generate_synthetic_dataset(out, train=5, val=2, size=64, seed=1)
    return out


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    """A tiny FPN baseline checkpoint (no IoU branch), trained on the synthetic classes."""
    path = tmp_path_factory.mktemp("fpn") / "last.pt"
    return write_tiny_joint_checkpoint(path, seed=2, step=3, iou_branch=False)


def _config(tmp_path: Path, detector: Path, memory: int = 64, disk: int = 64, flip: bool = True):
    path = tmp_path / "branch.toml"
    toml = TOML.format(memory=memory, disk=disk, flip=str(flip).lower())
    path.write_text(toml)
    return replace(load_config(path), detector_from=str(detector))


def _entry(value: float, size: int = 64) -> CachedImage:
    maps = [torch.full((2, size, size), value)]
    return CachedImage(maps, (size, size), torch.zeros((1, 4)), torch.zeros(1, dtype=torch.long))


def test_the_trained_checkpoint_is_a_joint_iou_net_with_the_detector_unchanged(
    data, detector, tmp_path
):
    trainer = IoUBranchTrainer(data, tmp_path / "run", _config(tmp_path, detector))
    result = trainer.run(progress=False)
    assert result.step == 4
    model, state = load_model(result.checkpoint)
    assert state["architecture"]["kind"] == "joint" and model.head is not None
    assert state["architecture"]["detector"]["iou_branch"] is True
    source = load_checkpoint(detector)["model"]
    trained = state["model"]
    for name, value in source.items():  # every detector weight (and BatchNorm statistic) kept
        assert torch.equal(trained[name], value), name
    fresh = IoUBranchTrainer(data, tmp_path / "fresh", _config(tmp_path, detector))
    assert any(
        not torch.equal(trained[name], value)
        for name, value in fresh.model.state_dict().items()
        if name.startswith("head.")
    )
    # the checkpoint's config describes the model it holds (export reads it)
    assert state["config"]["model"] == load_checkpoint(detector)["config"]["model"]
    assert (
        state["config"]["data"]["min_size"]
        == load_checkpoint(detector)["config"]["data"]["min_size"]
    )


def test_resume_continues_exactly_and_reuses_the_cache_on_disk(data, detector, tmp_path):
    config = _config(tmp_path, detector, memory=0)  # every entry on disk
    straight = IoUBranchTrainer(data, tmp_path / "straight", config)
    straight.run(progress=False)

    first = IoUBranchTrainer(data, tmp_path / "resumed", config)
    first.run(progress=False, until=2)
    assert first.cache is not None and first.cache.counts["computed"] == 10  # 5 images, 2 flips
    second = IoUBranchTrainer(data, tmp_path / "resumed", config)
    second.resume()
    second.run(progress=False)
    assert second.cache is not None and second.cache.counts["computed"] == 0
    for name, value in straight.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[name], value), name


def test_cached_maps_pool_like_the_images_own_maps(data, detector, tmp_path):
    trainer = IoUBranchTrainer(data, tmp_path / "run", _config(tmp_path, detector))
    entries = [trainer._compute(0, False), trainer._compute(3, True)]
    rois = torch.tensor([[0, 2.0, 3.0, 40.0, 50.0], [1, 10.0, 5.0, 63.0, 60.0]])
    config = trainer.config.model
    batch = [pad_images([e.maps[level] for e in entries], 1) for level in range(4)]
    together = pool_levels(batch, rois, config)
    for index, entry in enumerate(entries):
        own = rois[index : index + 1].clone()
        own[:, 0] = 0
        alone = pool_levels([m[None] for m in entry.maps], own, config)
        torch.testing.assert_close(together[index : index + 1], alone, rtol=0, atol=0)
    # the mirrored entry is the mirror image's maps and boxes
    image, target = trainer.dataset[3]
    width = image.shape[2]
    expected = target["boxes"].clone()
    expected[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    torch.testing.assert_close(entries[1].boxes, expected)


def test_eager_pooling_equals_the_traced_all_levels_form_bit_for_bit():
    torch.manual_seed(0)
    maps = [torch.randn(2, 8, 64 // s, 64 // s, requires_grad=True) for s in (4, 8, 16, 32)]
    corner = torch.rand(300, 2) * 60
    rois = torch.cat(
        [torch.randint(-1, 3, (300, 1)).float(), corner, corner + 1 + torch.rand(300, 2) * 200], 1
    )
    grad = torch.randn(300, 8, 7, 7)
    eager = pool_levels(maps, rois, TINY)
    eager.backward(grad)
    eager_grads = [m.grad.clone() for m in maps]
    for m in maps:
        m.grad = None
    with mock.patch("torch.compiler.is_compiling", return_value=True):
        traced = pool_levels(maps, rois, TINY)
    traced.backward(grad)
    assert torch.equal(eager, traced)
    assert all(torch.equal(a, m.grad) for a, m in zip(eager_grads, maps, strict=True))


def test_the_cache_keeps_memory_then_disk_then_nothing_within_its_budgets(tmp_path):
    computed = []

    def compute(index: int, flipped: bool) -> CachedImage:
        computed.append((index, flipped))
        return _entry(float(index))

    probe = tmp_path / "probe"
    probe.mkdir()
    FeatureCache(compute, {}, 0, probe, 1 << 30).fill([(0, False)])
    file_size = (probe / "0000000.pt").stat().st_size
    folder = tmp_path / "cache"
    memory = _entry(0.0).nbytes
    cache = FeatureCache(compute, {"a": 1}, memory, folder, disk_bytes=int(file_size * 3.5))
    cache.fill([(i, False) for i in range(6)])
    assert (cache.counts["memory"], cache.counts["disk"], cache.counts["uncached"]) == (1, 3, 2)
    assert sorted(p.name for p in folder.glob("*.pt")) == [f"000000{i}.pt" for i in (1, 2, 3)]
    computed.clear()
    assert [float(cache.get(i, False).maps[0][0, 0, 0]) for i in range(6)] == list(range(6))
    assert computed == [(4, False), (5, False)]  # past both budgets: recomputed when drawn


def test_the_cache_reuses_only_a_folder_of_its_own_identity(tmp_path):
    calls = []

    def compute(index: int, flipped: bool) -> CachedImage:
        calls.append(index)
        return _entry(float(index))

    big = 1 << 20
    FeatureCache(compute, {"backbone": "x"}, 0, tmp_path, big).fill([(0, False), (1, True)])
    assert len(calls) == 2
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    stale = temporary_name(tmp_path / "0000002.pt").name.replace(
        f"-{os.getpid()}-", f"-{int(dead.stdout)}-"
    )
    (tmp_path / stale).write_bytes(b"partial")  # a write interrupted by a killed run
    again = FeatureCache(compute, {"backbone": "x"}, 0, tmp_path, big)
    again.fill([(0, False), (1, True)])
    assert len(calls) == 2 and not list(tmp_path.glob(".*.tmp"))
    other = FeatureCache(compute, {"backbone": "y"}, 0, tmp_path, big)  # weights changed
    other.fill([(0, False)])
    assert len(calls) == 3
    assert '"y"' in (tmp_path / IDENTITY_NAME).read_text()
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(FileExistsError, match="did not write"):
        FeatureCache(compute, {"backbone": "z"}, 0, tmp_path, big)
    assert (tmp_path / "thesis.tex").read_text() == "mine"


def test_cli_trains_the_branch_and_the_result_exports(data, detector, tmp_path, capsys):
    config = tmp_path / "branch.toml"
    config.write_text(TOML.format(memory=64, disk=0, flip="false"))
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--config", str(config),
                 "--from", str(detector), "--no-progress"]) == 0  # fmt: skip
    assert not (out / CACHE_FOLDER).exists() or not list((out / CACHE_FOLDER).glob("*.pt"))
    assert main(["export", str(out / "last.pt"), "--out", str(tmp_path / "model")]) == 0
    assert (tmp_path / "model" / "box_head.onnx").is_file()
    assert (tmp_path / "model" / "head.onnx").is_file()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "checkpoint not found"),
        ("corrupt", "not a readable iounet checkpoint"),
        ("iou", "not a detector checkpoint"),
        ("classes", "was trained on classes"),
    ],
)
def test_a_bad_from_checkpoint_is_refused_before_any_work(data, tmp_path, capsys, case, message):
    source = tmp_path / "source.pt"
    if case == "corrupt":
        source.write_bytes(b"not a checkpoint")
    elif case == "iou":
        write_tiny_checkpoint(source)
    elif case == "classes":
        write_tiny_joint_checkpoint(source, classes=["a", "b"], iou_branch=False)
    config = tmp_path / "branch.toml"
    config.write_text(TOML.format(memory=64, disk=0, flip="false"))
    out = tmp_path / "run"
    status = main(["train", "--data", str(data), "--out", str(out), "--config", str(config),
                   "--from", str(source), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (out / "last.pt").exists()


def test_from_is_refused_for_other_recipes_and_required_for_the_branch(
    data, detector, tmp_path, capsys
):
    out = str(tmp_path / "run")
    status = main(["train", "--data", str(data), "--out", out, "--recipe", "fpn-cpu-demo",
                   "--from", str(detector)])  # fmt: skip
    assert status == 2 and "--from is for iou-branch" in capsys.readouterr().err
    status = main(["train", "--data", str(data), "--out", out, "--recipe", "iou-branch-cpu-demo"])
    assert status == 2 and "pass --from" in capsys.readouterr().err
