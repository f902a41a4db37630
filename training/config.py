"""Training configuration: typed, documented, with the paper's recipe and a CPU demo recipe.

A TOML file picks a recipe and overrides any field, section by section:

    recipe = "cpu-demo"
    seed = 3
    [optim]
    steps = 2000
    [model]
    head_dim = 512
"""

from __future__ import annotations

import difflib
import math
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import TypeVar

from iounet.training.joint_model import DetectorConfig
from iounet.training.model import ModelConfig

#: What `iounet train` trains: the IoU head on a backbone ("iou"), the whole detector with the
#: IoU branch beside its R-CNN branch ("joint"; detector.iou_branch=False: the FPN baseline), or
#: only the IoU branch of a trained detector, on its frozen backbone ("iou-branch").
KINDS = ("iou", "joint", "iou-branch")
#: Seeds are in [0, SEED_LIMIT).
SEED_LIMIT = 2**32
#: A config dataclass (``TrainConfig`` or one of its sections).
ConfigT = TypeVar("ConfigT")


def _require(ok: bool, name: str, rule: str, value: object) -> None:
    """Raise ValueError "`name` must be `rule`, got `value`" unless `ok`."""
    if not ok:
        raise ValueError(f"{name} must be {rule}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """How images and training boxes are prepared.

    Attributes:
        min_size, max_size: resize so the short side is min_size unless the long side would
            exceed max_size (paper: 800 / 1200).
        flip: random horizontal flips.
        boxes_per_image: jittered training boxes sampled per image.
        min_iou, iou_bins: keep jittered boxes with IoU >= min_iou, balanced over iou_bins bins.
        num_workers: DataLoader worker processes.
        cache_memory_mb, cache_disk_mb: byte budgets (MiB, per process) of the frozen maps that
            kind "iou-branch" computes once per training image: in memory, then on disk in the
            run's folder; images past both are recomputed when drawn.

    Raises:
        ValueError: a value out of its range (sizes and counts >= 1, 0 <= min_iou < 1).
    """

    min_size: int = 800
    max_size: int = 1200
    flip: bool = True
    boxes_per_image: int = 128
    min_iou: float = 0.5
    iou_bins: int = 10
    num_workers: int = 2
    cache_memory_mb: int = 4096
    cache_disk_mb: int = 65536

    def __post_init__(self) -> None:
        for name in ("min_size", "max_size", "boxes_per_image", "iou_bins"):
            _require(getattr(self, name) >= 1, f"data.{name}", ">= 1", getattr(self, name))
        _require(0.0 <= self.min_iou < 1.0, "data.min_iou", "in [0, 1)", self.min_iou)
        for name in ("num_workers", "cache_memory_mb", "cache_disk_mb"):
            _require(getattr(self, name) >= 0, f"data.{name}", ">= 0", getattr(self, name))


@dataclass(frozen=True)
class OptimConfig:
    """SGD with linear warm-up then step decay (the paper: lr 0.01, batch 16, 160k steps).

    Attributes:
        lr, momentum, weight_decay: SGD settings.
        batch_size: images per step, over all processes.
        steps: optimizer steps in all.
        lr_steps, lr_gamma: multiply the lr by lr_gamma at each of these steps.
        warmup_steps, warmup_lr: go linearly from warmup_lr to lr over the first warmup_steps.
        smooth_l1_beta: transition point of the smooth-L1 loss on the normalized IoU.
        clip_grad_norm: scale the gradient down to this total (L2) norm when it is larger, as
            detection codebases do against loss spikes (0: never).

    Raises:
        ValueError: a value out of its range (steps, batch_size >= 1; lr, lr_gamma > 0;
            0 <= momentum < 1; lr_steps increasing from >= 1; the rest >= 0).
    """

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 16
    steps: int = 160_000
    lr_steps: tuple[int, ...] = (120_000,)
    lr_gamma: float = 0.1
    warmup_steps: int = 10_000
    warmup_lr: float = 0.004
    smooth_l1_beta: float = 1.0
    clip_grad_norm: float = 0.0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            _require(getattr(self, name) >= 1, f"optim.{name}", ">= 1", getattr(self, name))
        for name in ("lr", "lr_gamma"):
            _require(getattr(self, name) > 0, f"optim.{name}", "> 0", getattr(self, name))
        _require(0.0 <= self.momentum < 1.0, "optim.momentum", "in [0, 1)", self.momentum)
        for name in (
            "weight_decay",
            "warmup_steps",
            "warmup_lr",
            "smooth_l1_beta",
            "clip_grad_norm",
        ):
            _require(getattr(self, name) >= 0, f"optim.{name}", ">= 0", getattr(self, name))
        steps = self.lr_steps
        increasing = all(a < b for a, b in pairwise(steps))
        _require(increasing and min(steps, default=1) >= 1, "optim.lr_steps", "increasing", steps)

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return self.warmup_lr + (self.lr - self.warmup_lr) * step / self.warmup_steps
        return self.lr * self.lr_gamma ** sum(step >= s for s in self.lr_steps)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on.

    Attributes:
        recipe: the recipe the other fields started from.
        kind: "iou" (the IoU head) or "joint" (the detector with the IoU branch; see KINDS).
        detector: the detector's settings (kind "joint").
        seed: seeds data order, flips and box jitter (a run is reproducible from it).
        checkpoint_every: steps between checkpoints (the last step always writes one).
        amp: mixed precision on CUDA (ignored on the CPU).
        backbone_from: a detector checkpoint whose FPN backbone the IoU-Net starts from (and
            keeps, with model.frozen_backbone), so that a deployment runs one backbone.
        detector_from: the joint or FPN checkpoint whose IoU branch kind "iou-branch" trains
            (its model, detector and resize settings replace this config's).

    Raises:
        ValueError: an unknown kind, a seed outside [0, 2**32), checkpoint_every < 1 or a
            negative detector.iou_loss_weight.
    """

    recipe: str = "paper"
    kind: str = "iou"
    model: ModelConfig = field(default_factory=ModelConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    checkpoint_every: int = 1000
    amp: bool = True
    backbone_from: str = ""
    detector_from: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        _require(0 <= self.seed < SEED_LIMIT, "seed", "in [0, 2**32)", self.seed)
        _require(self.checkpoint_every >= 1, "checkpoint_every", ">= 1", self.checkpoint_every)
        weight = self.detector.iou_loss_weight
        _require(weight >= 0, "detector.iou_loss_weight", ">= 0", weight)

    def to_dict(self) -> dict[str, object]:
        """Plain-data form, stored in checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TrainConfig:
        """Inverse of to_dict (also reads TOML tables).

        Raises:
            ValueError: an unknown key, a value of the wrong type (``optim.steps must be an
                integer, got '2'``) or out of its range, naming the field.
        """
        return _build(cls, data, "")


_CPU_MODEL = ModelConfig(backbone="resnet18", fpn_channels=64, head_dim=256)
#: The detector of the CPU recipes: anchors from 16 px for the synthetic 192 px images.
_CPU_DETECTOR = DetectorConfig(
    anchor_size=16,
    rpn_batch_size=256,
    box_batch_size=128,
    rpn_pre_nms_top_n_train=600,
    rpn_post_nms_top_n_train=300,
    rpn_pre_nms_top_n=600,
    rpn_post_nms_top_n=300,
    detections_per_image=300,
)
_CPU_DATA = DataConfig(min_size=192, max_size=192, boxes_per_image=128, num_workers=1)
#: Gradient clipping gives the from-scratch detector margin against the loss spikes that other
#: CPUs' rounding (or another seed) can turn into a divergence; typical norms are 2-12.
_CPU_DETECTOR_OPTIM = OptimConfig(
    lr=0.02,
    batch_size=4,
    steps=800,
    lr_steps=(640,),
    warmup_steps=50,
    warmup_lr=0.002,
    clip_grad_norm=10.0,
)


def _cpu_detector_recipe(recipe: str, kind: str, detector: DetectorConfig) -> TrainConfig:
    """A recipe on the CPU demo's model, data and detector schedule."""
    return TrainConfig(
        recipe=recipe,
        kind=kind,
        model=_CPU_MODEL,
        detector=detector,
        data=_CPU_DATA,
        optim=_CPU_DETECTOR_OPTIM,
        checkpoint_every=100,
        amp=False,
    )


RECIPES: dict[str, TrainConfig] = {
    "paper": TrainConfig(),
    # The paper's final system (Sec. 3.4): Faster R-CNN + FPN with the IoU branch, trained
    # jointly (ImageNet weights through --weights).
    "joint-paper": TrainConfig(recipe="joint-paper", kind="joint"),
    # The same detector without the IoU branch: Table 3's FPN baseline.
    "fpn-paper": TrainConfig(
        recipe="fpn-paper", kind="joint", detector=DetectorConfig(iou_branch=False)
    ),
    # Two CPU cores, synthetic 256 px images (as 192 px): the IoU head on the frozen FPN of the
    # detector below (pass it as backbone_from); a backbone trained from scratch on the IoU loss
    # alone does not learn enough in minutes (Pearson about 0.2 after 600 steps).
    "cpu-demo": TrainConfig(
        recipe="cpu-demo",
        model=replace(_CPU_MODEL, frozen_backbone=True),
        data=_CPU_DATA,
        optim=OptimConfig(
            lr=0.04,
            batch_size=8,
            steps=2400,
            lr_steps=(1900,),
            warmup_steps=100,
            warmup_lr=0.004,
        ),
        checkpoint_every=250,
        amp=False,
    ),
    # The Faster R-CNN of the CPU demo, trained from scratch (boxes_per_image: sampled RoIs).
    "detector-cpu-demo": _cpu_detector_recipe("detector-cpu-demo", "iou", DetectorConfig()),
    # The joint IoU-Net of `make demo`, from scratch on two CPU cores (boxes_per_image: the
    # jittered boxes of the IoU branch per image).
    "joint-cpu-demo": _cpu_detector_recipe("joint-cpu-demo", "joint", _CPU_DETECTOR),
    # Its FPN baseline: the same detector and schedule without the IoU branch.
    "fpn-cpu-demo": _cpu_detector_recipe(
        "fpn-cpu-demo", "joint", replace(_CPU_DETECTOR, iou_branch=False)
    ),
    # The paper's standalone IoU-Net (Sec. 4.1-4.2) on a trained detector: only the IoU branch
    # trains, on the frozen backbone of `--from` (SGD lr 0.01, batch 16, 160k steps).
    "iou-branch-paper": TrainConfig(recipe="iou-branch-paper", kind="iou-branch"),
    # The IoU branch of `make demo`, on the frozen detector of fpn-cpu-demo: the maps of the
    # 1,200 training images are cached once (about 1 GB), so each step costs only the head.
    "iou-branch-cpu-demo": TrainConfig(
        recipe="iou-branch-cpu-demo",
        kind="iou-branch",
        data=DataConfig(min_size=192, max_size=192, flip=False, num_workers=0),
        optim=OptimConfig(
            lr=0.04,
            batch_size=16,
            steps=1200,
            lr_steps=(960,),
            warmup_steps=50,
            warmup_lr=0.004,
            clip_grad_norm=10.0,
        ),
        checkpoint_every=200,
        amp=False,
    ),
}


def load_config(path: str | Path | None = None, recipe: str | None = None) -> TrainConfig:
    """The recipe (default: the file's `recipe`, else "paper") with the TOML file's overrides.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is not TOML, names an unknown recipe or key, or gives a field a
            value of the wrong type or out of its range (see TrainConfig.from_dict).
    """
    overrides: dict[str, object] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            overrides = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path} is not valid TOML: {error}") from error
    name = recipe or overrides.pop("recipe", None) or "paper"
    overrides.pop("recipe", None)
    if not isinstance(name, str) or name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    base = RECIPES[name].to_dict()
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    try:
        return TrainConfig.from_dict(base)
    except ValueError as error:
        if path is None:
            raise
        raise ValueError(f"{path}: {error}") from error


#: How type errors describe each field type.
_TYPE_NAMES: dict[type, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
}
_PLURAL_NAMES: dict[type, str] = {int: "integers", float: "numbers"}


def _checked(name: str, value: object, kind: type | types.GenericAlias) -> object:
    """`value` of field `name` as its type `kind` holds it (ints as floats, lists as tuples).

    Raises:
        ValueError: `value` is not of that type (a bool is no number), or a float is not finite.
    """
    if typing.get_origin(kind) is tuple:
        element = typing.get_args(kind)[0]
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name} must be a list of {_PLURAL_NAMES[element]}, got {value!r}")
        return tuple(_checked(f"{name}[{i}]", item, element) for i, item in enumerate(value))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"{name} must be {_TYPE_NAMES[kind]}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def _build(cls: type[ConfigT], data: object, section: str) -> ConfigT:
    """An instance of the config dataclass `cls` from `data`, the table of `section` ("": the
    top level), every field checked for its type and range."""
    prefix = f"{section}." if section else ""
    where = f"[{section}]" if section else "the config"
    if not isinstance(data, dict):
        raise ValueError(f"{section or 'the config'} must be a table ({where}), got {data!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
        raise ValueError(
            f"unknown key(s) in {where}: {', '.join(hints)}; known: {', '.join(sorted(known))}"
        )
    types = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        kind = types[name]
        if is_dataclass(kind):
            values[name] = _build(kind, value, f"{prefix}{name}")
        else:
            values[name] = _checked(f"{prefix}{name}", value, kind)
    try:
        return replace(cls(), **values)
    except ValueError as error:
        message = str(error)
        if section and not message.startswith(prefix):
            message = f"{section}: {message}"
        raise ValueError(message) from error
