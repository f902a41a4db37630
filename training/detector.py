"""A small torchvision Faster R-CNN (ResNet-FPN) whose mistakes IoU-Net post-processes.

Its backbone is built by the same code as IoU-Net's (FPNBackbone), so an IoU head can be trained
on the detector's frozen FPN features and a deployment runs one backbone. Its detections are
kept before NMS (`box_nms_thresh` 1.0): the post-processing under study is ours.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import AnchorGenerator

from iounet.training.checkpoint import check_compatible, load_checkpoint
from iounet.training.config import TrainConfig
from iounet.training.model import IMAGE_MEAN, IMAGE_STD, FPNBackbone
from iounet.training.trainer import Trainer

#: Raw detections kept per image, and their lowest score.
DETECTIONS_PER_IMAGE = 300
SCORE_THRESHOLD = 0.05


def detector_architecture(config: TrainConfig, num_classes: int) -> dict:
    """What a detector checkpoint must match."""
    return {
        "kind": "faster_rcnn",
        "config": asdict(config.model),
        "num_classes": num_classes,
        "image_size": [config.data.min_size, config.data.max_size],
    }


def build_detector(config: TrainConfig, num_classes: int) -> FasterRCNN:
    """Faster R-CNN with IoU-Net's FPN backbone; labels 1..num_classes (0 is background).

    Anchors start at 16 px for images under 600 px (the synthetic benchmark), else at 32 px.
    """
    model = config.model
    base = 16 if config.data.min_size < 600 else 32
    anchors = AnchorGenerator(
        sizes=tuple((base * 2**level,) for level in range(5)),
        aspect_ratios=((0.5, 1.0, 2.0),) * 5,
    )
    rois = config.data.boxes_per_image
    return FasterRCNN(
        FPNBackbone(model).fpn,
        num_classes=None,
        min_size=config.data.min_size,
        max_size=config.data.max_size,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        rpn_anchor_generator=anchors,
        rpn_batch_size_per_image=rois,
        rpn_pre_nms_top_n_train=2 * DETECTIONS_PER_IMAGE,
        rpn_post_nms_top_n_train=DETECTIONS_PER_IMAGE,
        rpn_pre_nms_top_n_test=2 * DETECTIONS_PER_IMAGE,
        rpn_post_nms_top_n_test=DETECTIONS_PER_IMAGE,
        box_head=TwoMLPHead(model.fpn_channels * model.pool_size**2, model.head_dim),
        box_predictor=FastRCNNPredictor(model.head_dim, num_classes + 1),
        box_batch_size_per_image=rois,
        box_score_thresh=SCORE_THRESHOLD,
        box_nms_thresh=1.0,
        box_detections_per_img=DETECTIONS_PER_IMAGE,
    )


class DetectorTrainer(Trainer):
    """Trains the Faster R-CNN on the IoU-Net training loop (same data, schedule, checkpoints)."""

    def build_model(self, weights: str | Path | None) -> nn.Module:
        if weights is not None:
            raise ValueError("the detector takes no backbone weights file here")
        return build_detector(self.config, len(self.class_names))

    def architecture(self) -> dict:
        return detector_architecture(self.config, len(self.class_names))

    def compute_loss(
        self, images: list[Tensor], targets: list[dict[str, Tensor]], generator: torch.Generator
    ) -> Tensor:
        del generator  # the detector samples its own anchors and proposals
        device_targets = [
            {"boxes": t["boxes"].to(self.device), "labels": t["labels"].to(self.device) + 1}
            for t in targets
        ]
        losses = self.parallel([image.to(self.device) for image in images], device_targets)
        return sum(losses.values())


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> tuple[FasterRCNN, dict]:
    """The detector stored in a checkpoint (eval mode, on `device`) and the checkpoint."""
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    architecture = detector_architecture(config, len(state["class_names"]))
    check_compatible(state, architecture, state["class_names"], str(path))
    model = build_detector(config, len(state["class_names"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state


@torch.no_grad()
def detect(model: FasterRCNN, images: list[Tensor]) -> list[dict[str, Tensor]]:
    """Raw (pre-NMS) detections per image: boxes (D, 4) in input pixels, scores, labels 0..C-1."""
    device = next(model.parameters()).device
    outputs = model([image.to(device) for image in images])
    return [
        {"boxes": o["boxes"].cpu(), "scores": o["scores"].cpu(), "labels": o["labels"].cpu() - 1}
        for o in outputs
    ]
