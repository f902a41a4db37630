"""The four deployment graphs of an IoU-Net, as modules that torch.onnx exports; each class is
named after the manifest role of its graph (``backbone``, ``head``, ``iou_grad``, ``refine_step``).

* ``BackboneGraph``: image (N, 3, H, W) RGB in [0, 1] -> FPN maps p2..p5 (normalization inside).
* ``HeadGraph``: p2..p5, rois (K, 5), labels (K,) -> predicted IoU in [0, 1] (K,).
* ``IoUGradGraph``: the same inputs -> IoU (K,) and dIoU/dbox (K, 4), no autograd.
* ``RefineStepGraph``: one step of Algorithm 2 (box update, new IoU and gradient, stop test).

A model folder exported from a joint IoU-Net (``iounet.training.joint_model``) also holds the
detector's two graphs (roles ``rpn`` and ``box_head``):

* ``RpnGraph``: p2..p5, image_size (2,) = (height, width) before padding -> proposals
  (P, 4), P data-dependent (proposal NMS in the graph).
* ``BoxHeadGraph``: p2..p5, proposals (P, 4), image_size -> raw detections before NMS: boxes
  (D, 4), scores (D,), labels (D,) int64, most confident first.

They only name the inputs and outputs: the computation is the model's own (``IoUHead.iou``,
``IoUHead.iou_and_box_gradient``) and the refinement step's (``refine_step``). PrRoIPool is the
registered op ``torch.ops.iounet.prroi_pool``, which the exporter turns into ``iounet::PrRoIPool``
nodes through ``iounet.plugins.onnx_translation``; run eagerly the modules compute the same.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from iounet.export.refine_step import refine_step
from iounet.training.joint_model import JointIoUNet
from iounet.training.model import FPNBackbone, IoUHead

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
        return self.head.iou((p2, p3, p4, p5), rois, labels)


class IoUGradGraph(nn.Module):
    """p2..p5, rois (K, 5), labels (K,) -> IoU (K,) and dIoU/d(x0, y0, x1, y1) (K, 4).

    The IoU is (t + 1) / 2 unclamped (the objective of refinement).
    """

    def __init__(self, head: IoUHead) -> None:
        super().__init__()
        self.head = head

    def forward(
        self, p2: Tensor, p3: Tensor, p4: Tensor, p5: Tensor, rois: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        return self.head.iou_and_box_gradient((p2, p3, p4, p5), rois, labels)


class RefineStepGraph(nn.Module):
    """One step of Algorithm 2 on the boxes that are still active (see ``refine_step``).

    Inputs: p2..p5; rois (K, 5); labels (K,); iou (K,) and grad (K, 4) at rois; active (K,)
    bool; upper (4,) = (width, height, width, height) of the image; step, early_stop and
    degrade_tolerance, each (1,). Outputs rois, iou, grad and active after the step.
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
        maps = (p2, p3, p4, p5)

        def objective(boxes: Tensor) -> tuple[Tensor, Tensor]:
            return self.head.iou_and_box_gradient(
                maps, torch.cat([rois[:, :1], boxes], dim=1), labels
            )

        boxes, new_iou, new_grad, still = refine_step(
            rois[:, 1:], iou, grad, active, objective, step, early_stop, degrade_tolerance, upper
        )
        return torch.cat([rois[:, :1], boxes], dim=1), new_iou, new_grad, still


class RpnGraph(nn.Module):
    """p2..p5, image_size (2,) float32 (height, width) -> proposals (P, 4) (``proposals``)."""

    def __init__(self, model: JointIoUNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, p2: Tensor, p3: Tensor, p4: Tensor, p5: Tensor, image_size: Tensor) -> Tensor:
        return self.model.proposals((p2, p3, p4, p5), image_size)


class BoxHeadGraph(nn.Module):
    """p2..p5, proposals (P, 4), image_size (2,) -> boxes (D, 4), scores (D,), labels (D,)
    (``raw_detections``)."""

    def __init__(self, model: JointIoUNet) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, p2: Tensor, p3: Tensor, p4: Tensor, p5: Tensor, proposals: Tensor, image_size: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.raw_detections((p2, p3, p4, p5), proposals, image_size)
