"""A tiny IoU-Net checkpoint for export, runtime and CLI tests."""

from __future__ import annotations

from pathlib import Path

import torch

from iounet.training.checkpoint import save_checkpoint
from iounet.training.config import RECIPES
from iounet.training.model import IoUNet, ModelConfig

TINY = ModelConfig(backbone="resnet18", fpn_channels=16, head_dim=32)
CLASSES = ["ellipse", "rectangle", "triangle", "star", "ring"]


def write_tiny_checkpoint(path: Path, seed: int = 0, classes: list[str] = CLASSES) -> Path:
    """A randomly initialized tiny IoU-Net saved as `iounet train` would (recipe cpu-demo)."""
    torch.manual_seed(seed)
    model = IoUNet(TINY, len(classes))
    config = RECIPES["cpu-demo"].to_dict()
    state = {
        "model": model.state_dict(),
        "architecture": model.architecture(),
        "class_names": list(classes),
        "config": {**config, "model": {**config["model"], **TINY.__dict__}},
        "step": 1,
    }
    return save_checkpoint(path, state)
