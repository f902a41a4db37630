"""Training: exact resume, Ctrl-C safety, refusal to overwrite, and an end-to-end CLI smoke run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from iounet.cli import main
from iounet.training.checkpoint import load_checkpoint
from iounet.training.coco_dataset import collate
from iounet.training.config import RECIPES, DataConfig, OptimConfig, TrainConfig, load_config
from iounet.training.model import ModelConfig
from iounet.training.synthetic import generate_synthetic_dataset
from iounet.training.trainer import StepBatches, Trainer

TINY = replace(
    RECIPES["cpu-demo"],
    model=ModelConfig(backbone="resnet18", fpn_channels=8, head_dim=16),
    data=DataConfig(min_size=64, max_size=64, boxes_per_image=8, num_workers=0),
    optim=OptimConfig(
        lr=0.01, batch_size=2, steps=4, lr_steps=(3,), warmup_steps=1, warmup_lr=0.001
    ),
    checkpoint_every=2,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    generate_synthetic_dataset(out, train=6, val=3, size=64, seed=0)
    return out


def _parameters(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_resume_continues_exactly(data, tmp_path):
    straight = Trainer(data, tmp_path / "straight", TINY)
    straight.run(progress=False)

    first = Trainer(data, tmp_path / "resumed", TINY)
    first.run(progress=False, until=2)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == 2
    second = Trainer(data, tmp_path / "resumed", TINY)
    second.resume()
    assert second.step == 2
    second.run(progress=False)

    expected, actual = _parameters(straight), _parameters(second)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    changed = _parameters(Trainer(data, tmp_path / "fresh", TINY))
    assert any(not torch.equal(changed[k], expected[k]) for k in expected)


def test_resume_refuses_another_config(data, tmp_path):
    Trainer(data, tmp_path / "run", TINY).run(progress=False, until=2)
    other = Trainer(data, tmp_path / "run", replace(TINY, seed=5))
    with pytest.raises(ValueError, match="another config"):
        other.resume()


def test_interrupt_leaves_the_last_checkpoint_intact(data, tmp_path, monkeypatch):
    trainer = Trainer(data, tmp_path / "run", TINY)
    original = Trainer.train_step

    def interrupted(self, images, targets):
        if self.step == 3:
            raise KeyboardInterrupt
        return original(self, images, targets)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(progress=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 2
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["last.pt"]


def test_a_diverging_run_stops_before_writing_a_checkpoint(data, tmp_path, monkeypatch, capsys):
    trainer = Trainer(data, tmp_path / "run", TINY)
    trainer.run(progress=False, until=2)
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    original = Trainer.compute_loss

    def diverging(self, images, targets, generator):
        loss = original(self, images, targets, generator)
        return loss * float("nan") if self.step == 3 else loss

    monkeypatch.setattr(Trainer, "compute_loss", diverging)
    with pytest.raises(FloatingPointError, match="diverged at step 3"):
        trainer.run(progress=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 2 and state["tensor_sha256"] == saved["tensor_sha256"]
    config = tmp_path / "tiny.toml"
    config.write_text(_tiny_toml(batch_size=2, steps=4, lr_step=3))
    arguments = ["train", "--data", str(data), "--out", str(tmp_path / "cli"), "--config"]
    assert main([*arguments, str(config), "--no-progress"]) == 1
    assert "diverged at step 3" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "cli" / "last.pt")["step"] == 2


def test_a_loss_spike_moves_the_weights_by_the_clipped_gradient_only(data, tmp_path, monkeypatch):
    limit = 0.5
    config = replace(TINY, optim=replace(TINY.optim, clip_grad_norm=limit, weight_decay=0.0))
    trainer = Trainer(data, tmp_path / "run", config)
    original = Trainer.compute_loss
    monkeypatch.setattr(
        Trainer, "compute_loss", lambda self, *args: 1e6 * original(self, *args)
    )  # a spike: a gradient norm a million times the usual
    before = _parameters(trainer)
    trainer.train_step(*collate([trainer.dataset[i] for i in trainer.batch_order.indices(0)]))
    assert trainer.grad_norm > 1e3 * limit
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert (
        abs(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))) - limit) < 1e-3
    )
    after = _parameters(trainer)
    moved = torch.cat([(after[k] - before[k]).flatten().float() for k in before if k in dict(
        trainer.model.named_parameters())])  # fmt: skip
    lr = config.optim.lr_at(0)
    assert float(torch.linalg.vector_norm(moved)) <= lr * limit * (1 + 1e-4)


def test_batches_cover_every_image_each_epoch_and_split_over_processes():
    batches = StepBatches(size=10, batch_size=5, seed=3)
    epoch = sorted(batches.indices(0) + batches.indices(1))
    assert epoch == list(range(10))
    assert batches.indices(2) != batches.indices(0)  # a new permutation next epoch
    shares = [StepBatches(10, 4, 3, rank, 2).indices(1) for rank in range(2)]
    assert sorted(shares[0] + shares[1]) == sorted(StepBatches(10, 4, 3).indices(1))


def test_config_file_overrides_a_recipe(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('recipe = "cpu-demo"\nseed = 9\n[optim]\nsteps = 20\nlr_steps = [10, 15]\n')
    config = load_config(path)
    assert config.seed == 9 and config.optim.steps == 20 and config.optim.lr_steps == (10, 15)
    assert config.model == RECIPES["cpu-demo"].model
    path.write_text("[optim]\nstep = 3\n")
    with pytest.raises(ValueError, match="step"):
        load_config(path)
    path.write_text("recipe = 'fast'\n")
    with pytest.raises(ValueError, match="recipe"):
        load_config(path)
    assert TrainConfig.from_dict(config.to_dict()) == config


def _tiny_toml(batch_size: int, steps: int, lr_step: int) -> str:
    """A TOML config of a tiny IoU-Net run with its own (trainable) backbone."""
    return (
        'recipe = "cpu-demo"\ncheckpoint_every = 2\n'
        "[model]\nfpn_channels = 8\nhead_dim = 16\nfrozen_backbone = false\n"
        "[data]\nmin_size = 64\nmax_size = 64\nboxes_per_image = 8\nnum_workers = 0\n"
        f"[optim]\nbatch_size = {batch_size}\nsteps = {steps}\nwarmup_steps = 1\n"
        f"lr_steps = [{lr_step}]\n"
    )


def test_cli_train_then_eval(data, tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(_tiny_toml(batch_size=2, steps=2, lr_step=1))
    out = tmp_path / "run"
    arguments = ["train", "--data", str(data), "--out", str(out), "--config", str(config)]
    assert main([*arguments, "--no-progress"]) == 0
    assert main([*arguments, "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    report = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--images",
                str(data / "val" / "images"),
                "--annotations",
                str(data / "val" / "annotations.json"),
                "--checkpoint",
                str(out / "last.pt"),
                "--json",
                str(report),
                "--plots",
                str(tmp_path / "plots"),
            ]
        )
        == 0
    )
    figures = json.loads(report.read_text())
    assert -1.0 <= figures["pearson"]["jittered_predicted_iou"] <= 1.0
    assert figures["pearson"]["jittered_boxes"] > 0
    assert (tmp_path / "plots" / "pearson_jittered.png").stat().st_size > 1000


TINY_DETECTOR = replace(
    TINY,
    recipe="detector-cpu-demo",
    data=replace(TINY.data, boxes_per_image=16),
    optim=replace(TINY.optim, steps=2),
)


def test_detector_trains_detects_and_lends_its_frozen_backbone(data, tmp_path):
    from iounet.training.detector import DetectorTrainer, detect, load_detector

    DetectorTrainer(data, tmp_path / "detector", TINY_DETECTOR).run(progress=False)
    detector, state = load_detector(tmp_path / "detector" / "last.pt")
    assert state["architecture"]["kind"] == "faster_rcnn"
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    found = detect(detector, images)
    assert len(found) == 2
    for output in found:
        assert (
            output["boxes"].shape[1] == 4 and output["boxes"].shape[0] == output["scores"].shape[0]
        )
        assert bool((output["labels"] >= 0).all()) and bool((output["labels"] < 5).all())

    frozen = replace(
        TINY,
        model=replace(TINY.model, frozen_backbone=True),
        backbone_from=str(tmp_path / "detector" / "last.pt"),
    )
    trainer = Trainer(data, tmp_path / "head", frozen)
    detector_backbone = {
        k.removeprefix("backbone."): v
        for k, v in state["model"].items()
        if k.startswith("backbone.")
    }
    ours = {k.removeprefix("fpn."): v for k, v in trainer.model.backbone.state_dict().items()}
    assert detector_backbone.keys() == {k for k in ours if k in detector_backbone}
    for name, value in detector_backbone.items():
        assert torch.equal(ours[name], value), name
    head_before = trainer.model.head.fc1.weight.detach().clone()
    trainer.run(progress=False)
    after = {k.removeprefix("fpn."): v for k, v in trainer.model.backbone.state_dict().items()}
    for name, value in detector_backbone.items():
        assert torch.equal(after[name], value), f"frozen backbone changed: {name}"
    assert not torch.equal(trainer.model.head.fc1.weight, head_before)


def test_frozen_backbone_without_a_source_is_refused(data, tmp_path):
    frozen = replace(TINY, model=replace(TINY.model, frozen_backbone=True))
    with pytest.raises(ValueError, match="frozen backbone"):
        Trainer(data, tmp_path / "run", frozen)


def test_cli_train_detector_then_detect(data, tmp_path):
    config = tmp_path / "detector.toml"
    config.write_text(
        'recipe = "detector-cpu-demo"\n'
        "[model]\nfpn_channels = 8\nhead_dim = 16\n"
        "[data]\nmin_size = 64\nmax_size = 64\nboxes_per_image = 16\nnum_workers = 0\n"
        "[optim]\nbatch_size = 2\nsteps = 1\nwarmup_steps = 1\nlr_steps = [1]\n"
    )
    out = tmp_path / "detector"
    arguments = ["train-detector", "--data", str(data), "--out", str(out), "--config", str(config)]
    assert main([*arguments, "--no-progress"]) == 0
    results = tmp_path / "raw.json"
    detect = [
        "detect",
        "--checkpoint", str(out / "last.pt"),
        "--images", str(data / "val" / "images"),
        "--annotations", str(data / "val" / "annotations.json"),
        "--out", str(results),
    ]  # fmt: skip
    assert main(detect) == 0
    found = json.loads(results.read_text())
    val_ids = {
        image["id"]
        for image in json.loads((data / "val" / "annotations.json").read_text())["images"]
    }
    for entry in found:
        assert entry["image_id"] in val_ids and 1 <= entry["category_id"] <= 5
        assert len(entry["bbox"]) == 4 and entry["bbox"][2] >= 0 and 0 <= entry["score"] <= 1
    assert main(detect) == 2  # exists, no --force


@pytest.mark.slow
def test_torchrun_two_processes_train_one_model(data, tmp_path):
    import subprocess
    import sys

    config = tmp_path / "tiny.toml"
    config.write_text(_tiny_toml(batch_size=4, steps=3, lr_step=2))
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc-per-node", "2", "-m", "iounet.cli", "train"]
    command += ["--data", str(data), "--out", str(tmp_path / "run"), "--config", str(config)]
    subprocess.run([*command, "--no-progress"], check=True, capture_output=True, timeout=300)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3
