"""Training checkpoints: written atomically with a checksum of their tensors, checked when read
and against the run they are loaded into."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NotRequired, TypedDict

import torch
import torchvision

from iounet import version
from iounet.files import atomic_path
from iounet.training.config import TrainConfig
from iounet.training.joint_model import JointIoUNet
from iounet.training.model import IoUNet

LAST_NAME = "last.pt"
#: The key of the sha256 over every tensor of the checkpoint (names, dtypes, shapes, bytes).
CHECKSUM_KEY = "tensor_sha256"


class Checkpoint(TypedDict):
    """What a training checkpoint holds (``Trainer.state``): the model's state dict, its
    architecture, the optimizer's and the gradient scaler's states, the step, the config
    (``TrainConfig.to_dict``) and the class names; ``save_checkpoint`` adds the versions and the
    tensor checksum (``CHECKSUM_KEY``)."""

    model: dict[str, torch.Tensor]
    architecture: dict[str, object]
    optimizer: NotRequired[dict[str, object]]
    scaler: NotRequired[dict[str, object]]
    step: int
    config: dict[str, object]
    class_names: list[str]
    versions: NotRequired[dict[str, str]]
    tensor_sha256: NotRequired[str]


class CheckpointWarning(UserWarning):
    """A checkpoint without a checksum was loaded: its tensors could not be checked."""


def versions() -> dict[str, str]:
    """Versions recorded in every checkpoint."""
    return {
        "iounet": version.__version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
    }


def save_checkpoint(path: str | Path, state: Checkpoint) -> Path:
    """Write `state` to `path` atomically: a complete file appears, or the old one stays."""
    path = Path(path)
    state = {key: value for key, value in state.items() if key != CHECKSUM_KEY}
    state = {**state, "versions": versions()}
    with atomic_path(path) as temporary:
        torch.save({**state, CHECKSUM_KEY: tensor_checksum(state)}, temporary)
    return path


def tensor_checksum(state: object) -> str:
    """sha256 (hex) over every tensor in `state` (nested dicts, lists and tuples): each one's
    place, dtype, shape and bytes, in order; other values are not part of it."""
    digest = hashlib.sha256()
    for place, tensor in _tensors(state, ""):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{place}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _tensors(value: object, place: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        yield place, value
    elif isinstance(value, dict):
        for key, item in value.items():
            if not (place == "" and key == CHECKSUM_KEY):
                yield from _tensors(item, f"{place}/{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{place}/{index}")


def verify_checksum(state: Checkpoint, source: str) -> None:
    """ValueError when the tensors of a loaded checkpoint differ from its checksum (a corrupt
    file); a CheckpointWarning when it has none (written by an older iounet)."""
    expected = state.get(CHECKSUM_KEY)
    if expected is None:
        warnings.warn(
            f"{source} has no tensor checksum (written by an older iounet): loaded unchecked",
            CheckpointWarning,
            stacklevel=3,
        )
        return
    if tensor_checksum(state) != expected:
        raise ValueError(
            f"{source} is corrupt: its tensors do not match the checksum saved with them"
        )


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by save_checkpoint; clear errors for missing or corrupt files
    (tensors checked against their checksum; older files without one load with a warning)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"{path} is not a readable iounet checkpoint: {first}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not an iounet checkpoint: it holds no dictionary")
    missing = {"model", "architecture", "class_names", "config", "step"} - set(state)
    if missing:
        raise ValueError(f"{path} is not an iounet checkpoint: it lacks {sorted(missing)}")
    verify_checksum(state, str(path))
    return state


def check_compatible(
    state: Checkpoint, architecture: dict, class_names: list[str], source: str
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
) -> tuple[IoUNet | JointIoUNet, Checkpoint]:
    """The model stored in a checkpoint (in eval mode on `device`): an IoUNet (``iounet train``
    of kind "iou") or a JointIoUNet (kind "joint"), and the checkpoint itself."""
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    classes = len(state["class_names"])
    if isinstance(state["architecture"], dict) and state["architecture"].get("kind") == "joint":
        model: IoUNet | JointIoUNet = JointIoUNet(config.model, config.detector, classes)
    else:
        model = IoUNet(config.model, classes)
    check_compatible(state, model.architecture(), state["class_names"], str(path))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state
