"""The IoU head's prediction and its gradient w.r.t. the boxes, without autograd.

The backward of the head (three linear layers with ReLU, written out) gives the gradient of the
predicted IoU w.r.t. the pooled features; PrRoIPoolCoordGrad turns that into the gradient w.r.t.
the box corners. This is the refinement step that export turns into a graph (ONNX and TensorRT
have no autograd).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from iounet.plugins import prroi_pool_coord_grad
from iounet.training.model import FPN_STRIDES, IoUHead, fpn_levels


class IoUWithGradient(nn.Module):
    """FPN maps, rois (K, 5), labels (K,) -> predicted IoU (K,) and dIoU/dbox (K, 4).

    The IoU is (t + 1) / 2 of the head's normalized output t, unclamped, so that its gradient is
    the one gradient ascent needs at any t.
    """

    def __init__(self, head: IoUHead) -> None:
        super().__init__()
        self.head = head

    def forward(
        self, maps: Sequence[Tensor], rois: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        head = self.head
        pooled = head.pool(maps, rois)
        features = pooled.flatten(1)
        before1 = head.fc1(features)
        hidden1 = torch.relu(before1)
        before2 = head.fc2(hidden1)
        hidden2 = torch.relu(before2)
        weights = head.predictor.weight[labels.long()]  # (K, H): the row of each box's class
        t = (hidden2 * weights).sum(1) + head.predictor.bias[labels.long()]
        # d t / d features through the two ReLU layers, then the 1/2 of IoU = (t + 1) / 2.
        grad2 = weights * (before2 > 0)
        grad1 = (grad2 @ head.fc2.weight) * (before1 > 0)
        grad_pooled = (0.5 * grad1 @ head.fc1.weight).view_as(pooled)
        return (t + 1) / 2, self._box_gradient(maps, rois, grad_pooled)

    def _box_gradient(self, maps: Sequence[Tensor], rois: Tensor, grad_pooled: Tensor) -> Tensor:
        """PrRoIPoolCoordGrad of every roi on its FPN level: (K, 4)."""
        levels = fpn_levels(rois[:, 1:], self.head.config)
        size = self.head.config.pool_size
        grad = rois.new_zeros((rois.shape[0], 4))
        for level, (features, stride) in enumerate(zip(maps, FPN_STRIDES, strict=True)):
            index = torch.nonzero(levels == level).flatten()
            if index.numel():
                grad_rois = prroi_pool_coord_grad(
                    features, rois[index], grad_pooled[index].contiguous(), size, 1.0 / stride
                )
                grad[index] = grad_rois[:, 1:]
        return grad
