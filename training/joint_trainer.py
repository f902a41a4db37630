"""Trains the joint IoU-Net (or its FPN baseline) on the IoU-Net training loop: the same data,
schedule, checkpoints, exact resume, DDP and AMP; the loss is the sum of the detector's and the
IoU branch's losses."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from iounet.training.images import pad_images
from iounet.training.joint_model import JointIoUNet
from iounet.training.model import to_target
from iounet.training.trainer import Trainer


class JointTrainer(Trainer):
    """RPN + R-CNN losses, plus smooth-L1 on the normalized IoU of jittered ground truth
    sampled uniformly in IoU (as the IoU-Net trainer samples it) when the IoU branch is on."""

    def build_model(self, weights: str | Path | None) -> nn.Module:
        if self.config.backbone_from:
            raise ValueError("a joint model trains its own backbone: backbone_from is not used")
        return JointIoUNet(self.config.model, self.config.detector, len(self.class_names), weights)

    def architecture(self) -> dict:
        return self.model.architecture()

    def compute_loss(
        self, images: list[Tensor], targets: list[dict[str, Tensor]], generator: torch.Generator
    ) -> Tensor:
        sizes, rois, labels, ious = self.jittered_boxes(images, targets, generator)
        device = self.device
        losses = self.parallel(
            pad_images(images).to(device),
            sizes,
            [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets],
            rois.to(device),
            labels.to(device),
            to_target(ious.to(device)),
            self.config.optim.smooth_l1_beta,
        )
        return sum(losses.values())
