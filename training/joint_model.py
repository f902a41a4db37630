"""IoU-Net as one detector (paper Sec. 3.4): Faster R-CNN with FPN, and the IoU branch beside
the R-CNN branch on the same ResNet-FPN backbone; both branches pool with PrRoIPool.

Training computes torchvision's RPN and R-CNN losses (anchor matching, sampling) on these
modules plus the IoU branch's smooth-L1 loss on jittered ground truth. Inference runs the two
stages written here with plain tensor ops, which is what export traces:

* ``proposals``: anchors, RPN decoding, per-level top-k, clipping, proposal NMS, top-k;
* ``raw_detections``: box head, per-class decoding, score threshold, the most confident
  ``detections_per_image`` (boxes, scores, labels), before any NMS of detections.

Both avoid data-dependent filters (ONNX ``NonZero``, which TensorRT-RTX cannot parse) and
shape-dependent top-k sizes: every top-k takes a constant k from inputs padded to at least k
entries. Boxes dropped before the proposal NMS get score -1, which the NMS's score threshold
removes (``torch.ops.iounet.nms``); raw detections are always ``detections_per_image`` rows,
the ones that failed the score threshold (or padding) last with score ``PADDING_SCORE``
(``drop_padding`` removes them).

They compute what torchvision's eval-mode ``RegionProposalNetwork`` and ``RoIHeads`` (with no
detection NMS) compute, for one image. ``detector.iou_branch=False`` is the FPN baseline: the
same detector without the IoU branch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead

import iounet.plugins.nms_op  # noqa: F401 - registers torch.ops.iounet.nms
from iounet.training.model import FPN_STRIDES, FPNBackbone, IoUHead, ModelConfig, pool_levels

#: Boxes narrower or lower than these are dropped (torchvision's RPN and R-CNN settings).
MIN_PROPOSAL_SIZE = 1e-3
MIN_DETECTION_SIZE = 1e-2
#: The score of the rows of ``raw_detections`` that are padding (no detection).
PADDING_SCORE = -1.0
#: The objectness logit of the padding anchors of ``proposals`` (never a proposal).
_NO_OBJECT = -1e4


@dataclass(frozen=True)
class DetectorConfig:
    """The detector part of a jointly trained IoU-Net (FPN settings of the paper by default).

    Attributes:
        anchor_size: anchor side on P2, doubled on each level P3..P6 (32 for 800 px images).
        aspect_ratios: anchor height / width ratios on every level.
        rpn_batch_size, box_batch_size: anchors / proposals sampled per image for the losses.
        rpn_pre_nms_top_n, rpn_post_nms_top_n: proposals kept per level before proposal NMS
            and in all after it, at inference (``*_train``: in training).
        rpn_nms_threshold: IoU threshold of proposal NMS.
        score_threshold: raw detections keep class scores above this.
        detections_per_image: raw detections kept per image (the most confident), before NMS.
        nms_threshold: the IoU threshold of the detector's own NMS (the FPN baseline's).
        iou_branch: train the IoU branch (False: the FPN baseline).
        iou_loss_weight: weight of the IoU loss in the sum of losses.
    """

    anchor_size: int = 32
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_batch_size: int = 256
    box_batch_size: int = 512
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n: int = 1000
    rpn_post_nms_top_n: int = 1000
    rpn_nms_threshold: float = 0.7
    score_threshold: float = 0.05
    detections_per_image: int = 1000
    nms_threshold: float = 0.5
    iou_branch: bool = True
    iou_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in (
            "anchor_size",
            "rpn_batch_size",
            "box_batch_size",
            "rpn_pre_nms_top_n_train",
            "rpn_post_nms_top_n_train",
            "rpn_pre_nms_top_n",
            "rpn_post_nms_top_n",
            "detections_per_image",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"detector.{name} must be positive, got {getattr(self, name)}")
        if not self.aspect_ratios or min(self.aspect_ratios) <= 0:
            raise ValueError(f"detector.aspect_ratios must be positive, got {self.aspect_ratios}")
        for name in ("rpn_nms_threshold", "score_threshold", "nms_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"detector.{name} must lie in [0, 1], got {getattr(self, name)}")


class LevelPool(nn.Module):
    """torchvision's ``box_roi_pool`` interface over ``pool_levels`` (PrRoIPool on each box's
    FPN level): features {"0": P2 .. "3": P5}, proposals per image -> (K, C, size, size)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> Tensor:
        del image_shapes  # boxes are already clipped to their images
        rois = torch.cat(
            [
                torch.cat([boxes.new_full((len(boxes), 1), float(index)), boxes], dim=1)
                for index, boxes in enumerate(proposals)
            ]
        )
        maps = [features[str(level)] for level in range(len(FPN_STRIDES))]
        return pool_levels(maps, rois, self.config)


class JointIoUNet(nn.Module):
    """Backbone, RPN, R-CNN box branch and IoU branch (``head``) on one FPN.

    ``forward`` (training mode) returns the losses; ``proposals`` and ``raw_detections`` are
    the inference stages export traces; ``head`` is the ``IoUHead`` that an IoU-Net exported
    from this model runs (None for the FPN baseline).
    """

    def __init__(
        self,
        config: ModelConfig,
        detector: DetectorConfig,
        num_classes: int,
        weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.config = config
        self.detector = detector
        self.num_classes = num_classes
        self.backbone = FPNBackbone(config, weights)
        levels = len(FPN_STRIDES) + 1  # P2..P5 and P6 (max-pooled P5) for the RPN
        anchors = AnchorGenerator(
            sizes=tuple((detector.anchor_size * 2**level,) for level in range(levels)),
            aspect_ratios=(tuple(detector.aspect_ratios),) * levels,
        )
        self.rpn = RegionProposalNetwork(
            anchors,
            RPNHead(config.fpn_channels, len(detector.aspect_ratios)),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=detector.rpn_batch_size,
            positive_fraction=0.5,
            pre_nms_top_n={
                "training": detector.rpn_pre_nms_top_n_train,
                "testing": detector.rpn_pre_nms_top_n,
            },
            post_nms_top_n={
                "training": detector.rpn_post_nms_top_n_train,
                "testing": detector.rpn_post_nms_top_n,
            },
            nms_thresh=detector.rpn_nms_threshold,
        )
        self.roi_heads = RoIHeads(
            LevelPool(config),
            TwoMLPHead(config.fpn_channels * config.pool_size**2, config.head_dim),
            FastRCNNPredictor(config.head_dim, num_classes + 1),
            fg_iou_thresh=0.5,
            bg_iou_thresh=0.5,
            batch_size_per_image=detector.box_batch_size,
            positive_fraction=0.25,
            bbox_reg_weights=None,
            score_thresh=detector.score_threshold,
            nms_thresh=1.0,  # raw detections: the NMS under study comes after
            detections_per_img=detector.detections_per_image,
        )
        self.head = IoUHead(config, num_classes) if detector.iou_branch else None

    def architecture(self) -> dict:
        """What a checkpoint must match to load into this model."""
        return {
            "kind": "joint",
            "config": asdict(self.config),
            "detector": asdict(self.detector),
            "num_classes": self.num_classes,
        }

    def rpn_features(self, maps: Sequence[Tensor]) -> OrderedDict[str, Tensor]:
        """P2..P5 and P6 (P5 max-pooled with stride 2), keyed as torchvision's FPN keys them."""
        features = OrderedDict((str(level), m) for level, m in enumerate(maps))
        features["pool"] = nn.functional.max_pool2d(maps[-1], 1, 2, 0)
        return features

    def forward(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
        iou_rois: Tensor,
        iou_labels: Tensor,
        iou_targets: Tensor,
        smooth_l1_beta: float = 1.0,
    ) -> dict[str, Tensor]:
        """The training losses of a padded batch (N, 3, H, W): RPN, R-CNN and (with the IoU
        branch) the smooth-L1 loss of the normalized IoU of `iou_rois` (M, 5) against
        `iou_targets` (M,) in [-1, 1]. Target labels are 0..C-1."""
        maps = self.backbone(images)
        features = self.rpn_features(maps)
        shifted = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
        image_list = ImageList(images, [(int(h), int(w)) for h, w in image_sizes])
        proposals, losses = self.rpn(image_list, features, shifted)
        _, box_losses = self.roi_heads(features, proposals, image_list.image_sizes, shifted)
        losses = {**losses, **box_losses}
        if self.head is not None:
            predicted = self.head(maps, iou_rois, iou_labels)
            loss = nn.functional.smooth_l1_loss(
                predicted.float(), iou_targets.float(), beta=smooth_l1_beta
            )
            losses["loss_iou"] = self.detector.iou_loss_weight * loss
        return losses

    def proposals(self, maps: Sequence[Tensor], image_size: Tensor) -> Tensor:
        """Proposals (P, 4) of image 0 of `maps` [P2..P5] (P <= rpn_post_nms_top_n), most
        objective first; `image_size` (2,) is its (height, width) before padding."""
        detector = self.detector
        levels = list(self.rpn_features(maps).values())
        objectness, deltas = self.rpn.head(levels)
        padded = (maps[0].shape[2] * FPN_STRIDES[0], maps[0].shape[3] * FPN_STRIDES[0])
        height, width = image_size[0].float(), image_size[1].float()
        boxes, scores, level_ids = [], [], []
        for level, (score, delta, cell) in enumerate(
            zip(objectness, deltas, self.rpn.anchor_generator.cell_anchors, strict=True)
        ):
            count = len(cell)
            rows, cols = score.shape[2], score.shape[3]
            # box arithmetic in float32 whatever the maps' dtype (fp16 graphs)
            score = score[0].float().permute(1, 2, 0).reshape(-1)
            delta = delta[0].float().view(count, 4, rows, cols).permute(2, 3, 0, 1).reshape(-1, 4)
            anchors = _grid_anchors(
                cell.to(score), rows, cols, padded[0] // rows, padded[1] // cols
            )
            # k entries of padding (zero-size anchors, dropped below) make k a constant for
            # any map size: the graph has no shape-dependent branch
            k = detector.rpn_pre_nms_top_n
            score = torch.cat([score, score.new_full((k,), _NO_OBJECT)])
            delta, anchors = (torch.cat([v, v.new_zeros((k, 4))]) for v in (delta, anchors))
            top = torch.topk(score, k)
            decoded = self.rpn.box_coder.decode_single(delta[top.indices], anchors[top.indices])
            boxes.append(_clip(decoded, height, width))
            scores.append(torch.sigmoid(top.values))
            level_ids.append(torch.full_like(top.values, level, dtype=torch.int64))
        boxes, scores, level_ids = torch.cat(boxes), torch.cat(scores), torch.cat(level_ids)
        scores = torch.where(_large_enough(boxes, MIN_PROPOSAL_SIZE), scores, PADDING_SCORE)
        span = torch.maximum(height, width) + 1  # past every clipped coordinate
        keep = _batched_nms(boxes, scores, level_ids, span, detector.rpn_nms_threshold)
        return boxes[keep[: detector.rpn_post_nms_top_n]]

    def raw_detections(
        self, maps: Sequence[Tensor], proposals: Tensor, image_size: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Raw detections of image 0 from its proposals (P, 4), before NMS: boxes (D, 4), class
        scores (D,) and labels (D,) in 0..C-1, most confident first, D = detections_per_image;
        when fewer pass score_threshold (and MIN_DETECTION_SIZE), the rest of the rows are
        padding with score PADDING_SCORE (see ``drop_padding``)."""
        detector = self.detector
        rois = torch.cat([proposals.new_zeros((proposals.shape[0], 1)), proposals], dim=1)
        pooled = pool_levels(maps, rois, self.config)
        logits, deltas = self.roi_heads.box_predictor(self.roi_heads.box_head(pooled))
        logits, deltas = logits.float(), deltas.float()
        decoded = self.roi_heads.box_coder.decode_single(deltas, proposals.float())
        height, width = image_size[0].float(), image_size[1].float()
        boxes = _clip(decoded.reshape(-1, 4), height, width).reshape(proposals.shape[0], -1, 4)
        scores = torch.softmax(logits, dim=-1)
        labels = torch.arange(self.num_classes, device=scores.device).expand(proposals.shape[0], -1)
        boxes, scores = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)
        labels = labels.reshape(-1)
        keep = (scores > detector.score_threshold) & _large_enough(boxes, MIN_DETECTION_SIZE)
        count = detector.detections_per_image  # padded to it: a constant output size
        scores = torch.cat(
            [torch.where(keep, scores, PADDING_SCORE), scores.new_full((count,), PADDING_SCORE)]
        )
        boxes = torch.cat([boxes, boxes.new_zeros((count, 4))])
        labels = torch.cat([labels, labels.new_zeros(count)])
        top = torch.topk(scores, count)
        return boxes[top.indices], top.values, labels[top.indices]

    @torch.no_grad()
    def detect(self, image: Tensor, image_size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """Raw detections (boxes, scores, labels) of one padded image (1, 3, H, W) whose content
        is (height, width) = `image_size`."""
        maps = self.backbone(image)
        size = torch.tensor(image_size, dtype=torch.float32, device=image.device)
        return drop_padding(*self.raw_detections(maps, self.proposals(maps, size), size))


def drop_padding(boxes: Tensor, scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The raw detections without the padding rows (score PADDING_SCORE) at their end."""
    count = int((scores > PADDING_SCORE).sum())
    return boxes[:count], scores[:count], labels[:count]


def _grid_anchors(cell: Tensor, rows: int, cols: int, stride_y: int, stride_x: int) -> Tensor:
    """Anchors (rows * cols * A, 4) of one level: cell anchors (A, 4) at every grid position,
    position-major (torchvision's order)."""
    shift_x = torch.arange(cols, device=cell.device).to(cell.dtype) * stride_x
    shift_y = torch.arange(rows, device=cell.device).to(cell.dtype) * stride_y
    grid_y, grid_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = torch.stack([grid_x, grid_y, grid_x, grid_y], dim=-1).reshape(-1, 1, 4)
    return (shifts + cell.reshape(1, -1, 4)).reshape(-1, 4)


def _clip(boxes: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """Boxes (K, 4) clipped to [0, width] x [0, height]."""
    x = torch.minimum(boxes[:, 0::2].clamp_min(0), width)
    y = torch.minimum(boxes[:, 1::2].clamp_min(0), height)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def _large_enough(boxes: Tensor, size: float) -> Tensor:
    return ((boxes[:, 2] - boxes[:, 0]) >= size) & ((boxes[:, 3] - boxes[:, 1]) >= size)


def _batched_nms(
    boxes: Tensor, scores: Tensor, groups: Tensor, span: Tensor, threshold: float
) -> Tensor:
    """Indices kept by NMS within each group, most confident first: the boxes of group g are
    moved by g * `span` (more than any coordinate) so that different groups never overlap."""
    offsets = groups.to(boxes.dtype) * span
    return torch.ops.iounet.nms(boxes + offsets[:, None], scores, threshold, PADDING_SCORE / 2)
