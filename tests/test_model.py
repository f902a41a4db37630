"""IoUNet: FPN levels, head output, gradients, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from iounet.plugins import prroi_pool
from iounet.training.checkpoint import (
    check_compatible,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from iounet.training.config import RECIPES
from iounet.training.model import FPN_STRIDES, IoUNet, ModelConfig, fpn_levels, to_iou, to_target

SMALL = ModelConfig(backbone="resnet18", fpn_channels=16, head_dim=32)


def _model(num_classes: int = 3) -> IoUNet:
    torch.manual_seed(0)
    return IoUNet(SMALL, num_classes)


def test_roi_to_level_rule():
    boxes = torch.tensor(
        [[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 111, 111], [0, 0, 448, 448], [0, 0, 10, 10]],
        dtype=torch.float32,
    )
    # 224 -> P4, 112 -> P3, just under 112 -> P2, 448 -> P5, tiny -> P2 (clamped)
    assert fpn_levels(boxes, SMALL).tolist() == [2, 1, 0, 3, 0]


def test_backbone_gives_four_levels_at_their_strides():
    maps = _model().backbone(torch.rand(2, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(2, 16, 64 // s, 96 // s) for s in FPN_STRIDES]


def test_head_pools_each_box_on_its_level_and_picks_its_class():
    model = _model().eval()
    maps = [torch.randn(1, 16, 64 // s, 64 // s) for s in FPN_STRIDES]
    rois = torch.tensor([[0, 4.0, 4.0, 20.0, 30.0], [0, 1.0, 2.0, 60.0, 62.0]])
    pooled = model.head.pool(maps, rois)
    levels = fpn_levels(rois[:, 1:], SMALL)
    for k in range(2):
        level = int(levels[k])
        expected = prroi_pool(maps[level], rois[k : k + 1], 7, 1 / FPN_STRIDES[level])
        torch.testing.assert_close(pooled[k : k + 1], expected)
    all_classes = model.head.predictor(
        torch.relu(model.head.fc2(torch.relu(model.head.fc1(pooled.flatten(1)))))
    )
    labels = torch.tensor([2, 0])
    torch.testing.assert_close(model.head(maps, rois, labels), all_classes[[0, 1], [2, 0]])


def test_gradients_reach_backbone_and_head():
    model = _model()
    images = torch.rand(2, 3, 64, 64)
    rois = torch.tensor([[0, 4.0, 4.0, 40.0, 30.0], [1, 10.0, 2.0, 60.0, 50.0]])
    model(images, rois, torch.tensor([0, 1])).sum().backward()
    assert model.head.fc1.weight.grad.abs().sum() > 0
    assert model.backbone.fpn.body.conv1.weight.grad.abs().sum() > 0


def test_normalized_targets_round_trip():
    iou = torch.tensor([0.0, 0.5, 0.75, 1.0])
    torch.testing.assert_close(to_target(iou), torch.tensor([-1.0, 0.0, 0.5, 1.0]))
    torch.testing.assert_close(to_iou(to_target(iou)), iou)
    assert to_iou(torch.tensor([-3.0, 3.0])).tolist() == [0.0, 1.0]


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="backbone"):
        ModelConfig(backbone="vgg16")
    with pytest.raises(ValueError, match="head_dim"):
        ModelConfig(head_dim=0)
    with pytest.raises(FileNotFoundError, match="weights"):
        IoUNet(SMALL, 2, weights="/nonexistent/resnet18.pth")


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    model = _model()
    config = RECIPES["cpu-demo"]
    state = {
        "model": model.state_dict(),
        "architecture": model.architecture(),
        "class_names": ["a", "b", "c"],
        "config": {**config.to_dict(), "model": {**config.to_dict()["model"], **SMALL.__dict__}},
        "step": 7,
    }
    path = save_checkpoint(tmp_path / "last.pt", state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left
    loaded, stored = load_model(path)
    images, rois = torch.rand(1, 3, 64, 64), torch.tensor([[0, 4.0, 4.0, 40.0, 30.0]])
    model.eval()
    torch.testing.assert_close(
        loaded(images, rois, torch.tensor([1])), model(images, rois, torch.tensor([1]))
    )
    assert stored["versions"]["torch"] == torch.__version__
    with pytest.raises(ValueError, match="classes"):
        check_compatible(stored, model.architecture(), ["a", "b"], "ckpt")
    with pytest.raises(ValueError, match="architecture"):
        check_compatible(stored, _other_architecture(), ["a", "b", "c"], "ckpt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"broken\.pt"):
        load_checkpoint(tmp_path / "broken.pt")


def _other_architecture() -> dict:
    return IoUNet(ModelConfig(backbone="resnet18", fpn_channels=8, head_dim=32), 3).architecture()
