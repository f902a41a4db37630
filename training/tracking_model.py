"""pytracking's IoU-Net for tracking (ATOM, DiMP, PrDiMP) with pytracking's parameter names.

``AtomIoUNet`` has the layers and state-dict keys of pytracking's
``ltr.models.bbreg.AtomIoUNet`` (``conv3_1r``, ``fc3_rt.linear``, ``iou_predictor``...), so the
``bb_regressor.*`` part of a pytracking checkpoint loads into it with ``strict=True``;
``ResNetLayers`` is the ResNet up to layer3 with torchvision's (= pytracking's) key names, for the
``feature_extractor.*`` part. PrRoIPool is our registered op (``torch.ops.iounet.prroi_pool``).
Boxes are (x, y, w, h) in image pixels, as in pytracking; rois are ``[batch, x0, y0, x0 + w,
y0 + h]``.

The stages are pytracking's: ``get_modulation`` (reference frame and target box -> two
modulation vectors), ``get_iou_feat`` (test frame -> two feature maps) and ``predict_iou``;
``iou_and_box_gradient`` adds the box gradient written out (no autograd), which export and the
runtime use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models import resnet

import iounet.plugins.ops  # noqa: F401 - registers torch.ops.iounet.*

#: Backbone depth -> channels of layer2 and layer3 (the IoU-Net's input_dim).
VARIANTS = {"resnet18": (128, 256), "resnet50": (512, 1024)}
#: Strides of layer2 and layer3 in the image crop.
STRIDES = (8, 16)
#: PrRoIPool sizes: reference branch (layer2, layer3) and test branch (layer2, layer3).
REFERENCE_POOL = (3, 1)
TEST_POOL = (5, 3)
#: ImageNet statistics; crops enter the backbone as RGB in [0, 1].
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

#: Two tensors: layer2 and layer3 maps, modulation vectors, IoU features, or IoU and gradient.
Pair = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class TrackingConfig:
    """Architecture of a pytracking IoU-Net: backbone depth and the two prediction widths."""

    backbone: str = "resnet18"
    pred_input_dim: tuple[int, int] = (256, 256)
    pred_inter_dim: tuple[int, int] = (256, 256)

    def __post_init__(self) -> None:
        if self.backbone not in VARIANTS:
            raise ValueError(f"backbone must be one of {sorted(VARIANTS)}, got {self.backbone!r}")
        if min(*self.pred_input_dim, *self.pred_inter_dim) <= 0:
            raise ValueError("pred_input_dim and pred_inter_dim must be positive")

    @property
    def input_dim(self) -> tuple[int, int]:
        return VARIANTS[self.backbone]


def _conv(inputs: int, outputs: int, kernel: int = 3, padding: int = 1) -> nn.Sequential:
    """pytracking's conv: Conv2d (with bias), BatchNorm2d, ReLU (keys .0 and .1)."""
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, kernel, padding=padding, bias=True),
        nn.BatchNorm2d(outputs),
        nn.ReLU(),
    )


class LinearBlock(nn.Module):
    """pytracking's LinearBlock: Linear of the flat input, BatchNorm2d on (K, C, 1, 1), ReLU."""

    def __init__(self, inputs: int, outputs: int, input_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(inputs * input_size * input_size, outputs)
        self.bn = nn.BatchNorm2d(outputs)

    def pre_activation(self, x: Tensor) -> Tensor:
        """BatchNorm(Linear(x)) (K, C), before the ReLU."""
        z = self.linear(x.reshape(x.shape[0], -1))
        return self.bn(z.reshape(z.shape[0], z.shape[1], 1, 1)).reshape(z.shape[0], -1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.pre_activation(x))

    def bn_scale(self) -> Tensor:
        """d BatchNorm / d input in eval mode: weight / sqrt(running_var + eps) (C,)."""
        return self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)


def xywh_to_rois(boxes: Tensor) -> Tensor:
    """Boxes (B, K, 4) x, y, w, h -> rois (B * K, 5) ``[b, x0, y0, x0 + w, y0 + h]``."""
    batch, count = boxes.shape[0], boxes.shape[1]
    index = torch.arange(batch, dtype=boxes.dtype, device=boxes.device).reshape(batch, 1, 1)
    corners = torch.cat([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], dim=2)
    return torch.cat([index.expand(batch, count, 1), corners], dim=2).reshape(-1, 5)


def corner_to_xywh_gradient(grad: Tensor) -> Tensor:
    """d/d(x0, y0, x1, y1) -> d/d(x, y, w, h) for x1 = x + w, y1 = y + h (last dim 4)."""
    return torch.cat([grad[..., :2] + grad[..., 2:], grad[..., 2:]], dim=-1)


def _pool(features: Tensor, rois: Tensor, size: int, stride: int) -> Tensor:
    return torch.ops.iounet.prroi_pool(features, rois, size, size, 1.0 / stride)


class AtomIoUNet(nn.Module):
    """pytracking's AtomIoUNet (the same layers, keys and computation; PrRoIPool is our op).

    ``input_dim`` are the channels of backbone layer2 and layer3 (ResNet-18: (128, 256),
    ResNet-50: (512, 1024)). The box gradient assumes eval mode (BatchNorm on running
    statistics), as tracking runs.
    """

    def __init__(
        self,
        input_dim: tuple[int, int] = (128, 256),
        pred_input_dim: tuple[int, int] = (256, 256),
        pred_inter_dim: tuple[int, int] = (256, 256),
    ) -> None:
        super().__init__()
        self.conv3_1r = _conv(input_dim[0], 128)
        self.conv3_1t = _conv(input_dim[0], 256)
        self.conv3_2t = _conv(256, pred_input_dim[0])
        self.fc3_1r = _conv(128, 256, padding=0)
        self.conv4_1r = _conv(input_dim[1], 256)
        self.conv4_1t = _conv(input_dim[1], 256)
        self.conv4_2t = _conv(256, pred_input_dim[1])
        self.fc34_3r = _conv(256 + 256, pred_input_dim[0], kernel=1, padding=0)
        self.fc34_4r = _conv(256 + 256, pred_input_dim[1], kernel=1, padding=0)
        self.fc3_rt = LinearBlock(pred_input_dim[0], pred_inter_dim[0], TEST_POOL[0])
        self.fc4_rt = LinearBlock(pred_input_dim[1], pred_inter_dim[1], TEST_POOL[1])
        self.iou_predictor = nn.Linear(pred_inter_dim[0] + pred_inter_dim[1], 1, bias=True)

    def get_modulation(self, feat: Sequence[Tensor], bb: Tensor) -> Pair:
        """Reference layer2, layer3 (B, C, H, W) and target boxes (B, 4) x, y, w, h -> the two
        modulation vectors (B, pred_input_dim[i], 1, 1)."""
        feat3_r, feat4_r = feat
        rois = xywh_to_rois(bb.reshape(-1, 1, 4))
        roi3r = _pool(self.conv3_1r(feat3_r), rois, REFERENCE_POOL[0], STRIDES[0])
        roi4r = _pool(self.conv4_1r(feat4_r), rois, REFERENCE_POOL[1], STRIDES[1])
        fc34_r = torch.cat([self.fc3_1r(roi3r), roi4r], dim=1)
        return self.fc34_3r(fc34_r), self.fc34_4r(fc34_r)

    def get_iou_feat(self, feat: Sequence[Tensor]) -> Pair:
        """Test-frame layer2, layer3 (B, C, H, W) -> the IoU features (c3_t, c4_t)."""
        feat3_t, feat4_t = feat
        return self.conv3_2t(self.conv3_1t(feat3_t)), self.conv4_2t(self.conv4_1t(feat4_t))

    def _pooled(self, modulation: Sequence[Tensor], feat: Sequence[Tensor], proposals: Tensor):
        batch = feat[0].shape[0]
        c3_att = feat[0] * modulation[0].reshape(batch, -1, 1, 1)
        c4_att = feat[1] * modulation[1].reshape(batch, -1, 1, 1)
        rois = xywh_to_rois(proposals)
        roi3t = _pool(c3_att, rois, TEST_POOL[0], STRIDES[0])
        roi4t = _pool(c4_att, rois, TEST_POOL[1], STRIDES[1])
        return (c3_att, c4_att), rois, (roi3t, roi4t)

    def predict_iou(
        self, modulation: Sequence[Tensor], feat: Sequence[Tensor], proposals: Tensor
    ) -> Tensor:
        """Predicted IoU (the network's raw output) (B, K) of proposals (B, K, 4) x, y, w, h."""
        _, _, (roi3t, roi4t) = self._pooled(modulation, feat, proposals)
        hidden = torch.cat([self.fc3_rt(roi3t), self.fc4_rt(roi4t)], dim=1)
        return self.iou_predictor(hidden).reshape(proposals.shape[0], proposals.shape[1])

    def iou_and_box_gradient(
        self, modulation: Sequence[Tensor], feat: Sequence[Tensor], proposals: Tensor
    ) -> Pair:
        """``predict_iou`` (B, K) and its gradient w.r.t. the proposals' x, y, w, h (B, K, 4).

        The backward written out: the predictor's weights through ReLU, BatchNorm (eval mode:
        running statistics) and Linear of each LinearBlock, then PrRoIPoolCoordGrad on both
        pooled branches; no autograd, so exported graphs can carry it.
        """
        if self.training:
            raise RuntimeError("iou_and_box_gradient needs eval mode (BatchNorm running stats)")
        maps, rois, pooled = self._pooled(modulation, feat, proposals)
        blocks = (self.fc3_rt, self.fc4_rt)
        before = [block.pre_activation(part) for block, part in zip(blocks, pooled, strict=True)]
        hidden = torch.cat([torch.relu(z) for z in before], dim=1)
        iou = self.iou_predictor(hidden).reshape(proposals.shape[0], proposals.shape[1])
        weights = self.iou_predictor.weight[0].split([z.shape[1] for z in before])
        coords = []
        for block, z, w, part, features, size, stride in zip(
            blocks, before, weights, pooled, maps, TEST_POOL, STRIDES, strict=True
        ):
            grad_z = w * block.bn_scale() * (z > 0).to(z.dtype)  # (K, C)
            grad_part = (grad_z @ block.linear.weight).reshape(part.shape)
            coords.append(
                torch.ops.iounet.prroi_pool_coord_grad(
                    features, rois, grad_part, size, size, 1.0 / stride
                )[:, 1:]
            )
        grad = corner_to_xywh_gradient(coords[0] + coords[1])
        return iou, grad.reshape(*proposals.shape)


class ResNetLayers(nn.Module):
    """A torchvision ResNet up to layer3: crop (N, 3, H, W) RGB in [0, 1] -> (layer2, layer3).

    The keys (conv1, bn1, layer1..layer3) are pytracking's; normalization is inside.
    """

    def __init__(self, depth: str) -> None:
        super().__init__()
        if depth not in VARIANTS:
            raise ValueError(f"depth must be one of {sorted(VARIANTS)}, got {depth!r}")
        body = getattr(resnet, depth)(weights=None)
        self.conv1, self.bn1, self.maxpool = body.conv1, body.bn1, body.maxpool
        self.layer1, self.layer2, self.layer3 = body.layer1, body.layer2, body.layer3
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: Tensor) -> Pair:
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        layer2 = self.layer2(self.layer1(x))
        return layer2, self.layer3(layer2)


class TrackingNet(nn.Module):
    """``feature_extractor`` (ResNet to layer3) and ``bb_regressor`` (AtomIoUNet), keyed as in a
    pytracking network, so a checkpoint's ``net`` state dict loads by name."""

    def __init__(self, config: TrackingConfig) -> None:
        super().__init__()
        self.config = config
        self.feature_extractor = ResNetLayers(config.backbone)
        self.bb_regressor = AtomIoUNet(
            config.input_dim, config.pred_input_dim, config.pred_inter_dim
        )

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor], source: str = "state") -> TrackingNet:
        """The network of a pytracking ``net`` state dict, in eval mode (strict per part;
        layer4, fc and the trackers' other modules are ignored)."""
        model = cls(tracking_config(state, source))
        for name in ("bb_regressor", "feature_extractor"):
            part = _part(state, name)
            if name == "feature_extractor":
                part = {k: v for k, v in part.items() if k.split(".")[0] not in ("layer4", "fc")}
            try:
                getattr(model, name).load_state_dict(part, strict=True)
            except RuntimeError as error:
                raise ValueError(
                    f"{source}: {name}.* does not fit {model.config}: {error}"
                ) from error
        return model.eval()


def _part(state: Mapping[str, Tensor], name: str) -> dict[str, Tensor]:
    prefix = name + "."
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def tracking_config(state: Mapping[str, Tensor], source: str = "state") -> TrackingConfig:
    """The architecture of a pytracking ``net`` state dict, from its weights' shapes."""
    regressor = _part(state, "bb_regressor")
    if not regressor:
        raise ValueError(
            f"{source} has no bb_regressor.* weights: not a pytracking IoU-Net (ATOM, DiMP, "
            "PrDiMP) checkpoint"
        )
    needed = ("conv3_1t.0.weight", "conv4_1t.0.weight", "conv3_2t.0.weight",
              "conv4_2t.0.weight", "fc3_rt.linear.weight", "fc4_rt.linear.weight")  # fmt: skip
    missing = [k for k in needed if not isinstance(regressor.get(k), Tensor)]
    if missing:
        raise ValueError(f"{source}: bb_regressor lacks {missing}")
    input_dim = (regressor[needed[0]].shape[1], regressor[needed[1]].shape[1])
    depth = next((d for d, dims in VARIANTS.items() if dims == input_dim), None)
    if depth is None:
        raise ValueError(
            f"{source}: bb_regressor takes layer2/layer3 channels {input_dim}, which fit neither "
            f"ResNet variant ({', '.join(f'{d}: {c}' for d, c in VARIANTS.items())})"
        )
    backbone = _part(state, "feature_extractor")
    if not backbone:
        raise ValueError(f"{source} has no feature_extractor.* weights (the ResNet backbone)")
    bottleneck = "layer1.0.conv3.weight" in backbone
    if bottleneck != (depth == "resnet50"):
        raise ValueError(
            f"{source}: the bb_regressor expects a {depth} backbone, but feature_extractor is a "
            f"{'bottleneck' if bottleneck else 'basic-block'} ResNet"
        )
    return TrackingConfig(
        backbone=depth,
        pred_input_dim=(regressor[needed[2]].shape[0], regressor[needed[3]].shape[0]),
        pred_inter_dim=(regressor[needed[4]].shape[0], regressor[needed[5]].shape[0]),
    )
