"""The four deployment graphs of an IoU-Net, as modules that torch.onnx exports.

* ``BackboneGraph``: image (N, 3, H, W) RGB in [0, 1] -> FPN maps p2..p5 (normalization inside).
* ``HeadGraph``: p2..p5, rois (K, 5), labels (K,) -> predicted IoU in [0, 1] (K,).
* ``IoUGradGraph``: the same inputs -> IoU (K,) and dIoU/dbox (K, 4), no autograd.
* ``RefineStepGraph``: one step of Algorithm 2 (box update, new IoU and gradient, stop test).

Every box is pooled on all four levels with the rois of the other levels given batch index -1:
such a roi pools to zeros with zero gradient in every PrRoIPool implementation, so the sum over
levels is the pooling on the box's own level, without data-dependent shapes in the graph. Under
``torch.onnx.export`` the pooling becomes ``iounet::PrRoIPool`` / ``iounet::PrRoIPoolCoordGrad``
nodes; run eagerly, the modules compute the same with the native CPU kernels or the PyTorch op.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from iounet.plugins import prroi_pool, prroi_pool_coord_grad
from iounet.training.model import FPN_STRIDES, FPNBackbone, IoUHead, fpn_levels

CUSTOM_DOMAIN = "iounet"
CUSTOM_OPSET = 1
MAP_NAMES = ("p2", "p3", "p4", "p5")


class BackboneGraph(nn.Module):
    """image (N, 3, H, W) float32, RGB in [0, 1] -> (p2, p3, p4, p5) in `dtype`."""

    def __init__(self, backbone: FPNBackbone, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.backbone = backbone
        self.dtype = dtype

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        p2, p3, p4, p5 = self.backbone(image.to(self.dtype))
        return p2, p3, p4, p5


class HeadGraph(nn.Module):
    """p2..p5, rois (K, 5) ``[batch_index, x0, y0, x1, y1]``, labels (K,) -> IoU in [0, 1] (K,)."""

    def __init__(self, head: IoUHead) -> None:
        super().__init__()
        self.head = head

    def forward(
        self, p2: Tensor, p3: Tensor, p4: Tensor, p5: Tensor, rois: Tensor, labels: Tensor
    ) -> Tensor:
        head = self.head
        pooled = pool_levels(head, (p2, p3, p4, p5), rois)
        hidden = torch.relu(head.fc1(pooled.flatten(1)))
        hidden = torch.relu(head.fc2(hidden))
        scores = head.predictor(hidden).float()
        t = scores.gather(1, labels.long().view(-1, 1)).squeeze(1)
        return ((t + 1) / 2).clamp(0, 1)


class IoUGradGraph(nn.Module):
    """p2..p5, rois (K, 5), labels (K,) -> IoU (K,) and dIoU/d(x0, y0, x1, y1) (K, 4).

    The IoU is (t + 1) / 2 unclamped (the objective of refinement); the gradient comes from the
    head's backward written out (FC/ReLU) and PrRoIPoolCoordGrad.
    """

    def __init__(self, head: IoUHead) -> None:
        super().__init__()
        self.head = head

    def forward(
        self, p2: Tensor, p3: Tensor, p4: Tensor, p5: Tensor, rois: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        return iou_and_box_gradient(self.head, (p2, p3, p4, p5), rois, labels)


class RefineStepGraph(nn.Module):
    """One step of Algorithm 2 on the boxes that are still active.

    Inputs: p2..p5; rois (K, 5); labels (K,); iou (K,) and grad (K, 4) at rois; active (K,)
    bool; upper (4,) = (width, height, width, height) of the image; step, early_stop and
    degrade_tolerance, each (1,). Outputs rois, iou, grad and active after the step: an active
    box moves by ``step * grad * (w, h, w, h)`` clipped to [0, upper] and stays active while its
    IoU change d has ``|d| >= early_stop`` and ``d >= degrade_tolerance``; the iou and grad
    outputs are at the output rois. Equal to one iteration of ``iounet.runtime.refine_boxes``.
    """

    def __init__(self, head: IoUHead) -> None:
        super().__init__()
        self.head = head

    def forward(
        self,
        p2: Tensor,
        p3: Tensor,
        p4: Tensor,
        p5: Tensor,
        rois: Tensor,
        labels: Tensor,
        iou: Tensor,
        grad: Tensor,
        active: Tensor,
        upper: Tensor,
        step: Tensor,
        early_stop: Tensor,
        degrade_tolerance: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        boxes = rois[:, 1:]
        size = (boxes[:, 2:] - boxes[:, :2]).clamp_min(0).repeat(1, 2)
        moved = (boxes + step * grad * size).clamp_min(0).minimum(upper)
        boxes = torch.where(active[:, None], moved, boxes)
        new_rois = torch.cat([rois[:, :1], boxes], dim=1)
        new_iou, new_grad = iou_and_box_gradient(self.head, (p2, p3, p4, p5), new_rois, labels)
        change = new_iou - iou
        still = active & (change.abs() >= early_stop) & (change >= degrade_tolerance)
        return new_rois, new_iou, new_grad, still


def iou_and_box_gradient(
    head: IoUHead, maps: tuple[Tensor, ...], rois: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor]:
    """IoU (t + 1) / 2 (K,) and its gradient w.r.t. the box corners (K, 4), at least float32."""
    pooled = pool_levels(head, maps, rois)
    features = pooled.flatten(1)
    before1 = head.fc1(features)
    hidden1 = torch.relu(before1)
    before2 = head.fc2(hidden1)
    hidden2 = torch.relu(before2)
    index = labels.long()
    weights = head.predictor.weight[index]  # (K, H): the row of each box's class
    out = _output_dtype(pooled.dtype)
    t = (hidden2 * weights).sum(1).to(out) + head.predictor.bias[index].to(out)
    grad2 = weights * (before2 > 0).to(weights.dtype)
    grad1 = (grad2 @ head.fc2.weight) * (before1 > 0).to(grad2.dtype)
    grad_pooled = (0.5 * grad1 @ head.fc1.weight).reshape(pooled.shape)
    return (t + 1) / 2, coord_grad_levels(head, maps, rois, grad_pooled)


def level_rois(head: IoUHead, rois: Tensor) -> list[Tensor]:
    """Per FPN level, the rois with batch index -1 where a box belongs to another level."""
    levels = fpn_levels(rois[:, 1:], head.config)
    outside = torch.full_like(rois[:, :1], -1.0)
    return [
        torch.cat([torch.where(levels[:, None] == level, rois[:, :1], outside), rois[:, 1:]], 1)
        for level in range(len(FPN_STRIDES))
    ]


def pool_levels(head: IoUHead, maps: tuple[Tensor, ...], rois: Tensor) -> Tensor:
    """PrRoIPool of every roi on its FPN level (K, C, S, S), in the maps' dtype."""
    size = head.config.pool_size
    pooled = None
    for level_roi, features, stride in zip(level_rois(head, rois), maps, FPN_STRIDES, strict=True):
        part = _pool(features, level_roi, size, 1.0 / stride)
        pooled = part if pooled is None else pooled + part
    return pooled


def coord_grad_levels(
    head: IoUHead, maps: tuple[Tensor, ...], rois: Tensor, grad_pooled: Tensor
) -> Tensor:
    """PrRoIPoolCoordGrad of every roi on its level, the four corner columns (K, 4)."""
    size = head.config.pool_size
    grad = None
    for level_roi, features, stride in zip(level_rois(head, rois), maps, FPN_STRIDES, strict=True):
        part = _coord_grad(features, level_roi, grad_pooled, size, 1.0 / stride)[:, 1:]
        part = part.to(_output_dtype(part.dtype))
        grad = part if grad is None else grad + part
    return grad


def _pool(features: Tensor, rois: Tensor, size: int, scale: float) -> Tensor:
    if torch.onnx.is_in_onnx_export():
        return torch.onnx.ops.symbolic(
            f"{CUSTOM_DOMAIN}::PrRoIPool",
            (features, rois),
            {"pooled_height": size, "pooled_width": size, "spatial_scale": scale},
            dtype=features.dtype,
            shape=(rois.shape[0], features.shape[1], size, size),
            version=CUSTOM_OPSET,
        )
    inside = rois[:, 0] >= 0
    pooled = features.new_zeros((rois.shape[0], features.shape[1], size, size))
    if bool(inside.any()):
        # As the deployed ops: float32 (or float64) boxes and accumulation, output in the maps'
        # dtype.
        compute = _output_dtype(features.dtype)
        part = prroi_pool(features.to(compute), rois[inside].to(compute), size, scale)
        pooled[inside] = part.to(features.dtype)
    return pooled


def _coord_grad(
    features: Tensor, rois: Tensor, grad_output: Tensor, size: int, scale: float
) -> Tensor:
    if torch.onnx.is_in_onnx_export():
        return torch.onnx.ops.symbolic(
            f"{CUSTOM_DOMAIN}::PrRoIPoolCoordGrad",
            (features, rois, grad_output),
            {"pooled_height": size, "pooled_width": size, "spatial_scale": scale},
            dtype=rois.dtype,
            shape=(rois.shape[0], 5),
            version=CUSTOM_OPSET,
        )
    inside = rois[:, 0] >= 0
    grad = rois.new_zeros((rois.shape[0], 5))
    if bool(inside.any()):
        compute = _output_dtype(features.dtype)
        grad[inside] = prroi_pool_coord_grad(
            features.to(compute),
            rois[inside].to(compute),
            grad_output[inside].to(compute).contiguous(),
            size,
            scale,
        ).to(rois.dtype)
    return grad


def _output_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16/bfloat16/float32, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)
