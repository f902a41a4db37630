"""The explicit box gradient of the IoU head against autograd on the PyTorch model."""

from __future__ import annotations

import torch

from iounet.export.graphs import IoUGradGraph
from iounet.training.model import FPN_STRIDES, IoUNet, ModelConfig, fpn_levels


def test_matches_autograd_on_every_fpn_level():
    torch.manual_seed(0)
    model = IoUNet(ModelConfig(backbone="resnet18", fpn_channels=8, head_dim=16), 4).double().eval()
    maps = [torch.randn(2, 8, 512 // s, 512 // s, dtype=torch.float64) for s in FPN_STRIDES]
    # Sizes 25, 150, 260 and 470 px fall on P2, P3, P4 and P5 (level rule: 224 px -> P4).
    rois = torch.tensor(
        [
            [0, 10.3, 12.1, 31.7, 40.2],
            [1, 50.5, 60.2, 200.9, 210.4],
            [0, 100.1, 80.3, 350.6, 350.2],
            [1, 20.7, 30.4, 490.2, 500.9],
            [0, -10.2, 400.1, 60.3, 530.7],
        ],
        dtype=torch.float64,
    )
    assert set(fpn_levels(rois[:, 1:], model.config).tolist()) == {0, 1, 2, 3}
    labels = torch.tensor([0, 3, 1, 2, 1])
    iou, grad = IoUGradGraph(model.head)(*maps, rois, labels)

    corners = rois[:, 1:].clone().requires_grad_()
    t = model.head(maps, torch.cat([rois[:, :1], corners], 1), labels)
    expected_iou = (t + 1) / 2
    (expected_grad,) = torch.autograd.grad(expected_iou.sum(), corners)
    torch.testing.assert_close(iou, expected_iou.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-11)
    assert grad.abs().sum() > 0


def test_float32_is_within_1e4_of_float64():
    torch.manual_seed(1)
    model = IoUNet(ModelConfig(backbone="resnet18", fpn_channels=8, head_dim=16), 2).eval()
    maps = [torch.randn(1, 8, 256 // s, 256 // s) for s in FPN_STRIDES]
    rois = torch.tensor([[0, 20.5, 30.2, 90.7, 120.1], [0, 5.3, 8.8, 240.1, 200.6]])
    labels = torch.tensor([1, 0])
    iou32, grad32 = IoUGradGraph(model.head)(*maps, rois, labels)
    iou64, grad64 = IoUGradGraph(model.head.double())(
        *[m.double() for m in maps], rois.double(), labels
    )
    assert (iou32.double() - iou64).abs().max() <= 1e-5
    assert (grad32.double() - grad64).norm() <= 1e-4 * grad64.norm()
