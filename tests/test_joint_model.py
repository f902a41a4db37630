"""The joint IoU-Net: its inference stages against torchvision's own RPN and R-CNN (the oracle),
the padding contract, joint training (losses, exact resume, the FPN baseline) and the CLI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_model import TINY, TINY_DETECTOR
from torchvision.models.detection.image_list import ImageList

from iounet.training.checkpoint import load_checkpoint, load_model
from iounet.training.config import RECIPES, DataConfig, OptimConfig, TrainConfig, load_config
from iounet.training.images import pad_images
from iounet.training.joint_model import (
    PADDING_SCORE,
    DetectorConfig,
    JointIoUNet,
    drop_padding,
)
from iounet.training.joint_trainer import JointTrainer
from iounet.training.synthetic import generate_synthetic_dataset

CLASSES = 5
TINY_JOINT = replace(
    RECIPES["joint-cpu-demo"],
    model=replace(TINY, fpn_channels=8, head_dim=16),
    detector=replace(TINY_DETECTOR, rpn_batch_size=32, box_batch_size=16),
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


def _model(seed: int = 0, **detector: object) -> JointIoUNet:
    torch.manual_seed(seed)
    return JointIoUNet(TINY, replace(TINY_DETECTOR, **detector), CLASSES).eval()


@pytest.mark.parametrize(
    ("padded", "content"), [((64, 64), (64, 64)), ((224, 288), (214, 282)), ((192, 96), (170, 80))]
)
@torch.no_grad()
def test_stages_compute_what_torchvision_computes(padded, content):
    """proposals / raw_detections vs torchvision's eval-mode RegionProposalNetwork and RoIHeads
    on the same modules (an independent implementation of the same detector)."""
    model = _model()
    image = torch.rand(1, 3, *padded)
    maps = model.backbone(image)
    size = torch.tensor(content, dtype=torch.float32)
    proposals = model.proposals(maps, size)
    features = model.rpn_features(maps)
    expected, _ = model.rpn(ImageList(image, [content]), features)
    assert len(proposals) > 0
    torch.testing.assert_close(proposals, expected[0], rtol=0, atol=1e-5)
    boxes, scores, labels = drop_padding(*model.raw_detections(maps, proposals, size))
    found, _ = model.roi_heads(features, expected, [content])
    assert len(boxes) > 0
    torch.testing.assert_close(boxes, found[0]["boxes"], rtol=0, atol=1e-4)
    torch.testing.assert_close(scores, found[0]["scores"], rtol=0, atol=1e-6)
    assert torch.equal(labels, found[0]["labels"] - 1)  # torchvision counts background as 0


@torch.no_grad()
def test_raw_detections_are_padded_to_a_constant_count():
    """Fewer detections than detections_per_image pass the score threshold: the rest of the
    rows are padding at the end (score PADDING_SCORE); with a threshold above every score all
    rows are padding."""
    model = _model(score_threshold=0.19, detections_per_image=100)
    maps = model.backbone(torch.rand(1, 3, 64, 64))
    size = torch.tensor([64.0, 64.0])
    proposals = model.proposals(maps, size)[:7]
    boxes, scores, labels = model.raw_detections(maps, proposals, size)
    assert boxes.shape == (100, 4) and scores.shape == (100,) and labels.shape == (100,)
    real = int((scores > PADDING_SCORE).sum())
    assert 0 < real < 7 * CLASSES  # some of the 35 class scores pass 0.19, not all
    assert bool((scores[:real] > 0.19).all()) and bool((scores[real:] == PADDING_SCORE).all())
    assert bool((scores[:real][:-1] >= scores[:real][1:]).all())
    kept = drop_padding(boxes, scores, labels)
    assert [len(t) for t in kept] == [real] * 3
    none = _model(score_threshold=0.99)
    _, scores, _ = none.raw_detections(none.backbone(torch.rand(1, 3, 64, 64)), proposals, size)
    assert bool((scores == PADDING_SCORE).all())


@torch.no_grad()
def test_proposals_drop_boxes_outside_the_image_content():
    """Anchors over the padding only (clipped to zero width) are never proposals."""
    model = _model()
    maps = model.backbone(torch.rand(1, 3, 64, 128))
    proposals = model.proposals(maps, torch.tensor([64.0, 40.0]))
    assert len(proposals) > 0
    assert float(proposals[:, 2].max()) <= 40.0 and float(proposals[:, 3].max()) <= 64.0
    widths, heights = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
    assert bool((widths >= 1e-3).all() and (heights >= 1e-3).all())


def test_detector_config_is_checked():
    with pytest.raises(ValueError, match="rpn_post_nms_top_n"):
        DetectorConfig(rpn_post_nms_top_n=0)
    with pytest.raises(ValueError, match="score_threshold"):
        DetectorConfig(score_threshold=1.5)
    with pytest.raises(ValueError, match="kind"):
        TrainConfig(kind="segmentation")
    for recipe in ("joint-paper", "fpn-paper", "joint-cpu-demo", "fpn-cpu-demo"):
        config = load_config(None, recipe)
        assert config.kind == "joint"
        assert config.detector.iou_branch == recipe.startswith("joint")
        assert TrainConfig.from_dict(config.to_dict()) == config


def _parameters(trainer: JointTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_joint_training_sums_the_losses_and_resumes_exactly(data, tmp_path):
    trainer = JointTrainer(data, tmp_path / "probe", TINY_JOINT)
    images, targets = zip(*(trainer.dataset[i] for i in range(2)), strict=True)
    sizes = [tuple(image.shape[1:]) for image in images]
    from iounet.training.model import to_target
    from iounet.training.trainer import _global_generators, step_generator, training_boxes

    rois, labels, ious = training_boxes(list(targets), sizes, TINY_JOINT, step_generator(0, 0))
    trainer.model.train()
    with torch.no_grad():
        losses = trainer.model(
            pad_images(list(images)), sizes, list(targets), rois, labels, to_target(ious)
        )
    assert set(losses) == {
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_classifier",
        "loss_box_reg",
        "loss_iou",
    }
    assert all(bool(torch.isfinite(v)) and float(v) >= 0 for v in losses.values())
    totals = []
    for _ in range(2):  # torchvision's samplers draw from the global generators, seeded per step
        with _global_generators(step_generator(0, 0, salt=3), trainer):
            loss = trainer.compute_loss(list(images), list(targets), step_generator(0, 0))
        totals.append(float(loss.detach()))
    assert totals[0] == totals[1] > float(losses["loss_iou"]) > 0

    straight = JointTrainer(data, tmp_path / "straight", TINY_JOINT)
    straight.run(progress=False)
    first = JointTrainer(data, tmp_path / "resumed", TINY_JOINT)
    first.run(progress=False, until=2)
    second = JointTrainer(data, tmp_path / "resumed", TINY_JOINT)
    second.resume()
    assert second.step == 2
    second.run(progress=False)
    expected, actual = _parameters(straight), _parameters(second)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    fresh = _parameters(JointTrainer(data, tmp_path / "fresh", TINY_JOINT))
    assert any(not torch.equal(fresh[k], expected[k]) for k in expected)
    model, state = load_model(tmp_path / "straight" / "last.pt")
    assert isinstance(model, JointIoUNet) and model.head is not None
    assert state["architecture"]["kind"] == "joint" and state["step"] == 4


def test_the_fpn_baseline_trains_without_the_iou_branch(data, tmp_path):
    config = replace(TINY_JOINT, detector=replace(TINY_JOINT.detector, iou_branch=False))
    trainer = JointTrainer(data, tmp_path / "fpn", config)
    assert trainer.model.head is None
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run(progress=False, until=2)
    after = trainer.model.state_dict()
    assert not any(k.startswith("head.") for k in after)
    assert not torch.equal(before["rpn.head.conv.0.0.weight"], after["rpn.head.conv.0.0.weight"])
    model, _ = load_model(tmp_path / "fpn" / "last.pt")
    boxes, scores, labels = model.detect(torch.rand(1, 3, 64, 64), (64, 64))
    assert len(boxes) == len(scores) == len(labels)
    assert bool((scores > config.detector.score_threshold).all())


def test_a_joint_model_refuses_a_backbone_source(data, tmp_path):
    config = replace(TINY_JOINT, backbone_from=str(tmp_path / "detector.pt"))
    with pytest.raises(ValueError, match="trains its own backbone"):
        JointTrainer(data, tmp_path / "run", config)


def _tiny_toml(batch_size: int, steps: int, lr_step: int) -> str:
    """A TOML config of a tiny joint IoU-Net run."""
    return (
        'recipe = "joint-cpu-demo"\n'
        "[model]\nfpn_channels = 8\nhead_dim = 16\n"
        "[detector]\nrpn_batch_size = 16\nbox_batch_size = 16\n"
        "rpn_pre_nms_top_n_train = 50\nrpn_post_nms_top_n_train = 20\n"
        "[data]\nmin_size = 64\nmax_size = 64\nboxes_per_image = 4\nnum_workers = 0\n"
        f"[optim]\nbatch_size = {batch_size}\nsteps = {steps}\nwarmup_steps = 1\n"
        f"lr_steps = [{lr_step}]\n"
    )


def test_cli_trains_a_joint_model_by_its_recipe_kind(data, tmp_path):
    from iounet.cli import main

    config = tmp_path / "tiny.toml"
    config.write_text(_tiny_toml(batch_size=2, steps=2, lr_step=1))
    out = tmp_path / "run"
    arguments = ["train", "--data", str(data), "--out", str(out), "--config", str(config)]
    assert main([*arguments, "--no-progress", "--device", "cpu"]) == 0
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 2 and state["architecture"]["kind"] == "joint"
    assert state["architecture"]["detector"]["rpn_batch_size"] == 16


@pytest.mark.slow
def test_torchrun_two_processes_train_one_joint_model(data, tmp_path):
    import subprocess
    import sys

    config = tmp_path / "tiny.toml"
    config.write_text(_tiny_toml(batch_size=4, steps=3, lr_step=2))
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc-per-node", "2", "-m", "iounet.cli", "train"]
    command += ["--data", str(data), "--out", str(tmp_path / "run"), "--config", str(config)]
    subprocess.run([*command, "--no-progress"], check=True, capture_output=True, timeout=300)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 3 and state["architecture"]["kind"] == "joint"
