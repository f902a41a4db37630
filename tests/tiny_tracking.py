"""Tiny pytracking-style checkpoints (random weights) for the tracking tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from iounet.training.tracking_model import TrackingConfig, TrackingNet

TINY_TRACKING = TrackingConfig(backbone="resnet18", pred_input_dim=(16, 24), pred_inter_dim=(8, 12))


def random_tracking_net(config: TrackingConfig = TINY_TRACKING, seed: int = 0) -> TrackingNet:
    """A TrackingNet with random weights and BatchNorm statistics (so eval mode matters)."""
    torch.manual_seed(seed)
    model = TrackingNet(config)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    with torch.no_grad():
        model.bb_regressor.iou_predictor.weight.mul_(20.0)  # boxes move by pixels when refined
    return model.eval()


def pytracking_state(model: TrackingNet) -> dict[str, torch.Tensor]:
    """The model's weights as a pytracking ``net`` state dict: plus layer4, fc and a classifier."""
    state = dict(model.state_dict())
    state["feature_extractor.layer4.0.conv1.weight"] = torch.zeros(1)
    state["feature_extractor.fc.weight"] = torch.zeros(1)
    state["classifier.filter_initializer.weight"] = torch.zeros(1)
    return state


def write_pytracking_checkpoint(path: Path, model: TrackingNet, **extra: object) -> Path:
    """`model` saved the way pytracking's trainer saves a network (a dict with ``net``)."""
    torch.save(
        {"epoch": 50, "net_type": "TrackingNet", "net": pytracking_state(model), **extra}, path
    )
    return path
