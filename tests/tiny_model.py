"""Tiny IoU-Net checkpoints (the IoU head alone, and the joint detector) for export, runtime and
CLI tests."""

from __future__ import annotations

from pathlib import Path

import torch

from iounet.training.checkpoint import save_checkpoint
from iounet.training.config import RECIPES
from iounet.training.joint_model import DetectorConfig, JointIoUNet
from iounet.training.model import IoUNet, ModelConfig

TINY = ModelConfig(backbone="resnet18", fpn_channels=16, head_dim=32)
TINY_DETECTOR = DetectorConfig(
    anchor_size=16,
    rpn_pre_nms_top_n=200,
    rpn_post_nms_top_n=100,
    rpn_pre_nms_top_n_train=200,
    rpn_post_nms_top_n_train=100,
    rpn_batch_size=64,
    box_batch_size=32,
    detections_per_image=100,
)
CLASSES = ["ellipse", "rectangle", "triangle", "star", "ring"]


def write_tiny_checkpoint(
    path: Path, seed: int = 0, classes: list[str] = CLASSES, step: int = 1
) -> Path:
    """A randomly initialized tiny IoU-Net saved as `iounet train` would (recipe cpu-demo) after
    `step` steps."""
    torch.manual_seed(seed)
    model = IoUNet(TINY, len(classes))
    config = RECIPES["cpu-demo"].to_dict()
    state = {
        "model": model.state_dict(),
        "architecture": model.architecture(),
        "class_names": list(classes),
        "config": {**config, "model": {**config["model"], **TINY.__dict__}},
        "step": step,
    }
    return save_checkpoint(path, state)


def write_tiny_joint_checkpoint(
    path: Path,
    seed: int = 0,
    classes: list[str] = CLASSES,
    step: int = 1,
    iou_branch: bool = True,
    recipe: str = "joint-cpu-demo",
) -> Path:
    """A randomly initialized tiny joint IoU-Net (FPN baseline without `iou_branch`) saved as
    `iounet train --recipe RECIPE` would after `step` steps."""
    from dataclasses import replace

    torch.manual_seed(seed)
    detector = replace(TINY_DETECTOR, iou_branch=iou_branch)
    model = JointIoUNet(TINY, detector, len(classes))
    config = RECIPES[recipe].to_dict()
    state = {
        "model": model.state_dict(),
        "architecture": model.architecture(),
        "class_names": list(classes),
        "config": {
            **config,
            "model": TINY.__dict__,
            "detector": detector.__dict__,
            "data": {**config["data"], "min_size": 192, "max_size": 192},
        },
        "step": step,
    }
    return save_checkpoint(path, state)


def assert_gradient_matches_differences(backend, maps, rois, labels, grad, step=0.05) -> None:
    """`grad` (K, 4) agrees with central differences of `backend.iou_and_grad`'s IoU."""
    for k in range(4):
        plus, minus = rois.clone(), rois.clone()
        plus[:, 1 + k] += step
        minus[:, 1 + k] -= step
        numeric = (
            backend.iou_and_grad(maps, plus, labels)[0]
            - backend.iou_and_grad(maps, minus, labels)[0]
        ) / (2 * step)
        torch.testing.assert_close(grad[:, k], numeric, atol=2e-4, rtol=5e-2)
