"""IoU-Net: a ResNet-FPN backbone and the IoU head (PrRoIPool 7x7, two FC layers, IoU per class).

The head predicts the normalized IoU t = 2 * IoU - 1 of each box with its matched ground truth,
for the box's class. Backbone and head are separate modules with a plain interface (an image
batch in, a list of FPN maps P2-P5 out; maps and boxes in, t out), so the head can also sit on
another detector's FPN features and export can cut between them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d

import iounet.plugins.ops  # noqa: F401 - registers torch.ops.iounet.*

#: Strides of the FPN levels P2, P3, P4, P5 that the head pools from.
FPN_STRIDES = (4, 8, 16, 32)
#: ImageNet statistics; images enter the backbone as RGB in [0, 1].
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an IoU-Net.

    Attributes:
        backbone: torchvision ResNet depth ("resnet50" as in the paper; "resnet18" for the CPU).
        fpn_channels: channels of every FPN level (256 in the paper).
        head_dim: width of the two fully connected layers (1024 in the paper).
        pool_size: PrRoIPool output size (7 in the paper).
        frozen_batchnorm: freeze BatchNorm statistics (use with pretrained weights).
        trainable_layers: ResNet stages trained, 0-5 (5: all of them).
        frozen_backbone: train the head only, on a fixed backbone (e.g. a detector's FPN).
        canonical_size, canonical_level: the RoI-to-level rule of FPN, level
            floor(canonical_level + log2(sqrt(w * h) / canonical_size)) clamped to P2-P5.
    """

    backbone: str = "resnet50"
    fpn_channels: int = 256
    head_dim: int = 1024
    pool_size: int = 7
    frozen_batchnorm: bool = False
    trainable_layers: int = 5
    frozen_backbone: bool = False
    canonical_size: float = 224.0
    canonical_level: int = 4

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        for name in ("fpn_channels", "head_dim", "pool_size", "canonical_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not 0 <= self.trainable_layers <= 5:
            raise ValueError(f"trainable_layers must be in 0..5, got {self.trainable_layers}")


class FPNBackbone(nn.Module):
    """Image batch (N, 3, H, W), RGB in [0, 1] -> FPN maps [P2, P3, P4, P5]."""

    def __init__(self, config: ModelConfig, weights: str | Path | None = None) -> None:
        super().__init__()
        norm = FrozenBatchNorm2d if config.frozen_batchnorm else nn.BatchNorm2d
        body = getattr(resnet, config.backbone)(weights=None, norm_layer=norm)
        if weights is not None:
            load_backbone_weights(body, weights)
        stages = ["layer4", "layer3", "layer2", "layer1", "conv1"][: config.trainable_layers]
        if config.trainable_layers == 5:
            stages.append("bn1")
        for name, parameter in body.named_parameters():
            trainable = any(name.startswith(stage) for stage in stages)
            parameter.requires_grad_(trainable and not config.frozen_backbone)
        width = 512 if config.backbone in ("resnet18", "resnet34") else 2048
        self.fpn = BackboneWithFPN(
            body,
            return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
            in_channels_list=[width // 8, width // 4, width // 2, width],
            out_channels=config.fpn_channels,
        )
        if config.frozen_backbone:
            self.fpn.requires_grad_(False)
        self.frozen = config.frozen_backbone
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FPNBackbone:
        """A frozen backbone stays in eval mode (fixed BatchNorm statistics)."""
        return super().train(mode and not self.frozen)

    def forward(self, images: Tensor) -> list[Tensor]:
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            maps = self.fpn((images - self.mean) / self.std)
        return [maps[key] for key in ("0", "1", "2", "3")]

    def load_detector(self, state: dict[str, Tensor], source: str) -> None:
        """Take the backbone of a torchvision detector (keys backbone.body.*, backbone.fpn.*)."""
        weights = {
            "fpn." + key.removeprefix("backbone."): value
            for key, value in state.items()
            if key.startswith("backbone.")
        }
        missing, unexpected = self.load_state_dict(weights, strict=False)
        if missing or unexpected or not weights:
            raise ValueError(
                f"{source} does not fit this backbone: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )


def load_backbone_weights(body: nn.Module, path: str | Path) -> None:
    """Load ImageNet weights for the ResNet body from a local file (never a download)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = body.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit the backbone: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def fpn_levels(boxes: Tensor, config: ModelConfig) -> Tensor:
    """FPN level index (0 for P2 ... 3 for P5) of boxes (K, 4) by the RoI-to-level rule."""
    size = (
        (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)
    ).sqrt()
    level = torch.floor(config.canonical_level + torch.log2(size / config.canonical_size + 1e-8))
    return (level.clamp(2, 5) - 2).long()


def level_rois(rois: Tensor, config: ModelConfig) -> list[Tensor]:
    """Per FPN level, rois (K, 5) with batch index -1 where a box belongs to another level."""
    levels = fpn_levels(rois[:, 1:], config)
    outside = torch.full_like(rois[:, :1], -1.0)
    return [
        torch.cat([torch.where(levels[:, None] == level, rois[:, :1], outside), rois[:, 1:]], 1)
        for level in range(len(FPN_STRIDES))
    ]


def pool_levels(maps: Sequence[Tensor], rois: Tensor, config: ModelConfig) -> Tensor:
    """PrRoIPool of every roi (K, 5) on its FPN level of maps [P2..P5]: (K, C, size, size).

    What export traces pools every box on all levels with batch index -1 on the levels it does
    not belong to (which pool to zeros with zero gradient), so the graphs have no data-dependent
    shapes. Run eagerly, each level pools only its own boxes: the same values (a sum with three
    zeros is exact) for a quarter of the work.
    """
    size = config.pool_size
    if not (torch.compiler.is_compiling() or torch.jit.is_tracing()):
        levels = fpn_levels(rois[:, 1:], config)
        pooled: Tensor | None = None
        for level, (features, stride) in enumerate(zip(maps, FPN_STRIDES, strict=True)):
            index = (levels == level).nonzero().squeeze(1)
            part = torch.ops.iounet.prroi_pool(features, rois[index], size, size, 1.0 / stride)
            if pooled is None:
                pooled = part.new_zeros((rois.shape[0], *part.shape[1:]))
            pooled = pooled.index_copy(0, index, part)
        assert pooled is not None
        return pooled
    parts = [
        torch.ops.iounet.prroi_pool(features, part, size, size, 1.0 / stride)
        for part, features, stride in zip(level_rois(rois, config), maps, FPN_STRIDES, strict=True)
    ]
    return functools.reduce(torch.add, parts)


class IoUHead(nn.Module):
    """FPN maps [P2..P5], rois (K, 5) `[batch_index, x0, y0, x1, y1]` in image pixels, labels (K,)
    -> normalized IoU t (K,) for each box's class.

    The one definition of the head: training runs ``forward``, export traces ``iou`` and
    ``iou_and_box_gradient``, and the runtime's PyTorch backends run them too. Every box is
    pooled on all four levels with the rois of the other levels given batch index -1, which pool
    to zeros with zero gradient (the PrRoIPool contract): the sum over levels is the pooling on
    the box's own level, with no data-dependent shapes. Maps may be float16/bfloat16 (autocast,
    fp16 graphs) with float32 boxes; t, the IoU and the box gradient are at least float32.
    """

    def __init__(self, config: ModelConfig, num_classes: int) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.config = config
        self.num_classes = num_classes
        inputs = config.fpn_channels * config.pool_size**2
        self.fc1 = nn.Linear(inputs, config.head_dim)
        self.fc2 = nn.Linear(config.head_dim, config.head_dim)
        self.predictor = nn.Linear(config.head_dim, num_classes)
        for layer in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(layer.weight, a=1)
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    def level_rois(self, rois: Tensor) -> list[Tensor]:
        """Per FPN level, the rois with batch index -1 where a box belongs to another level."""
        return level_rois(rois, self.config)

    def pool(self, maps: Sequence[Tensor], rois: Tensor) -> Tensor:
        """PrRoIPool of every roi on its FPN level: (K, C, pool_size, pool_size), maps' dtype."""
        return pool_levels(maps, rois, self.config)

    def forward(self, maps: Sequence[Tensor], rois: Tensor, labels: Tensor) -> Tensor:
        hidden = torch.relu(self.fc1(self.pool(maps, rois).flatten(1)))
        hidden = torch.relu(self.fc2(hidden))
        scores = self.predictor(hidden)
        t = scores.gather(1, labels.long().view(-1, 1)).squeeze(1)
        return t.to(_at_least_float32(t.dtype))

    def iou(self, maps: Sequence[Tensor], rois: Tensor, labels: Tensor) -> Tensor:
        """Predicted IoU in [0, 1] (K,)."""
        return to_iou(self(maps, rois, labels))

    def iou_and_box_gradient(
        self, maps: Sequence[Tensor], rois: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        """IoU (t + 1) / 2 unclamped (K,) and its gradient w.r.t. the box corners (K, 4).

        The head's backward written out (FC/ReLU, then PrRoIPoolCoordGrad on each level), so
        that an exported graph needs no autograd.
        """
        pooled = self.pool(maps, rois)
        before1 = self.fc1(pooled.flatten(1))
        hidden1 = torch.relu(before1)
        before2 = self.fc2(hidden1)
        hidden2 = torch.relu(before2)
        index = labels.long()
        weights = self.predictor.weight[index]  # (K, H): the row of each box's class
        out = _at_least_float32(pooled.dtype)
        t = (hidden2 * weights).sum(1).to(out) + self.predictor.bias[index].to(out)
        grad2 = weights * (before2 > 0).to(weights.dtype)
        grad1 = (grad2 @ self.fc2.weight) * (before1 > 0).to(grad2.dtype)
        grad_pooled = (0.5 * grad1 @ self.fc1.weight).reshape(pooled.shape)
        size = self.config.pool_size
        parts = [
            torch.ops.iounet.prroi_pool_coord_grad(
                features, level_rois, grad_pooled, size, size, 1.0 / stride
            )[:, 1:].to(out)
            for level_rois, features, stride in zip(
                self.level_rois(rois), maps, FPN_STRIDES, strict=True
            )
        ]
        return (t + 1) / 2, functools.reduce(torch.add, parts)


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16/bfloat16/float32, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


class IoUNet(nn.Module):
    """Backbone plus IoU head; `weights` names a local ImageNet checkpoint of the ResNet body."""

    def __init__(
        self, config: ModelConfig, num_classes: int, weights: str | Path | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.backbone = FPNBackbone(config, weights)
        self.head = IoUHead(config, num_classes)

    def forward(self, images: Tensor, rois: Tensor, labels: Tensor) -> Tensor:
        """Normalized IoU t = 2 * IoU - 1 (K,) of rois in `images`."""
        return self.head(self.backbone(images), rois, labels)

    @torch.no_grad()
    def predict_iou(self, images: Tensor, rois: Tensor, labels: Tensor) -> Tensor:
        """Predicted IoU in [0, 1] (K,)."""
        return to_iou(self(images, rois, labels))

    def architecture(self) -> dict:
        """What a checkpoint must match to load into this model."""
        return {"config": asdict(self.config), "num_classes": self.num_classes}


def to_iou(t: Tensor) -> Tensor:
    """Normalized prediction t in [-1, 1] -> IoU in [0, 1]."""
    return ((t + 1) / 2).clamp(0, 1)


def to_target(iou: Tensor) -> Tensor:
    """IoU in [0, 1] -> the training target t = 2 * IoU - 1."""
    return 2 * iou - 1
