"""Training checkpoints: written atomically, checked against the run they are loaded into."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision

from iounet._version import __version__
from iounet.files import atomic_path
from iounet.training.config import TrainConfig
from iounet.training.model import IoUNet

LAST_NAME = "last.pt"


def versions() -> dict[str, str]:
    """Versions recorded in every checkpoint."""
    return {
        "iounet": __version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
    }


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically: a complete file appears, or the old one stays."""
    path = Path(path)
    with atomic_path(path) as temporary:
        torch.save({**state, "versions": versions()}, temporary)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by save_checkpoint; clear errors for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable iounet checkpoint: {error}") from error
    missing = {"model", "architecture", "class_names", "config", "step"} - set(state)
    if missing:
        raise ValueError(f"{path} is not an iounet checkpoint: it lacks {sorted(missing)}")
    return state


def check_compatible(
    state: dict[str, Any], architecture: dict, class_names: list[str], source: str
) -> None:
    """Raise ValueError when a checkpoint was made for another architecture or class list."""
    if state["class_names"] != list(class_names):
        raise ValueError(
            f"{source} was trained on classes {state['class_names']}, not {list(class_names)}"
        )
    if state["architecture"] != architecture:
        raise ValueError(f"{source} holds architecture {state['architecture']}, not {architecture}")


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[IoUNet, dict[str, Any]]:
    """The IoUNet stored in a checkpoint (in eval mode on `device`) and the checkpoint itself."""
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    model = IoUNet(config.model, len(state["class_names"]))
    check_compatible(state, model.architecture(), state["class_names"], str(path))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state
