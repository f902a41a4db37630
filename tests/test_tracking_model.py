"""pytracking's IoU-Net (AtomIoUNet, ResNet to layer3): keys, loading, and the written-out box
gradient against autograd and central differences."""

from __future__ import annotations

import pytest
import torch
from tiny_tracking import TINY_TRACKING, pytracking_state, random_tracking_net

from iounet.training.tracking_model import (
    AtomIoUNet,
    TrackingConfig,
    TrackingNet,
    tracking_config,
    xywh_to_rois,
)

# The parameter and buffer names of pytracking's ltr.models.bbreg.AtomIoUNet, written from its
# source (conv(...) = Sequential(Conv2d, BatchNorm2d, ReLU); LinearBlock = linear, bn).
_CONVS = ("conv3_1r", "conv3_1t", "conv3_2t", "fc3_1r", "conv4_1r", "conv4_1t", "conv4_2t",
          "fc34_3r", "fc34_4r")  # fmt: skip
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
PYTRACKING_KEYS = {
    *(f"{c}.0.{p}" for c in _CONVS for p in ("weight", "bias")),
    *(f"{c}.1.{p}" for c in _CONVS for p in _BN),
    *(f"{b}.linear.{p}" for b in ("fc3_rt", "fc4_rt") for p in ("weight", "bias")),
    *(f"{b}.bn.{p}" for b in ("fc3_rt", "fc4_rt") for p in _BN),
    "iou_predictor.weight",
    "iou_predictor.bias",
}


def test_state_dict_keys_and_shapes_are_pytrackings():
    net = AtomIoUNet()  # pytracking's defaults (ATOM)
    state = net.state_dict()
    assert set(state) == PYTRACKING_KEYS
    assert state["conv3_1r.0.weight"].shape == (128, 128, 3, 3)
    assert state["fc3_1r.0.weight"].shape == (256, 128, 3, 3)
    assert state["fc34_3r.0.weight"].shape == (256, 512, 1, 1)
    assert state["fc3_rt.linear.weight"].shape == (256, 256 * 5 * 5)
    assert state["fc4_rt.linear.weight"].shape == (256, 256 * 3 * 3)
    assert state["iou_predictor.weight"].shape == (1, 512)
    dimp = AtomIoUNet(input_dim=(512, 1024)).state_dict()
    assert dimp["conv3_1t.0.weight"].shape == (256, 512, 3, 3)
    assert dimp["conv4_1r.0.weight"].shape == (256, 1024, 3, 3)


def test_checkpoint_state_loads_strictly_with_the_same_outputs():
    model = random_tracking_net()
    state = pytracking_state(model)  # with layer4, fc and a classifier beside
    regressor = {k[13:]: v for k, v in state.items() if k.startswith("bb_regressor.")}
    AtomIoUNet((128, 256), (16, 24), (8, 12)).load_state_dict(regressor, strict=True)
    loaded = TrackingNet.from_state_dict(state)
    assert loaded.config == TINY_TRACKING and not loaded.training
    image = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        for a, b in zip(
            model.feature_extractor(image), loaded.feature_extractor(image), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert loaded.feature_extractor(image)[0].shape == (1, 128, 12, 16)
    assert loaded.feature_extractor(image)[1].shape == (1, 256, 6, 8)


def test_rois_are_corner_boxes_with_batch_index():
    boxes = torch.tensor([[[1.0, 2.0, 3.0, 4.0]], [[5.0, 6.0, 7.0, 8.0]]])
    expected = torch.tensor([[0.0, 1, 2, 4, 6], [1.0, 5, 6, 12, 14]])
    torch.testing.assert_close(xywh_to_rois(boxes), expected)


def _inputs(net: AtomIoUNet, channels: tuple[int, int], seed: int):
    generator = torch.Generator().manual_seed(seed)
    ref = (
        torch.randn(2, channels[0], 20, 24, dtype=torch.float64, generator=generator),
        torch.randn(2, channels[1], 10, 12, dtype=torch.float64, generator=generator),
    )
    test = tuple(torch.randn(t.shape, dtype=torch.float64, generator=generator) for t in ref)
    box = torch.tensor([[60.0, 50.0, 40.0, 60.0], [10.5, 20.2, 150.3, 120.7]], dtype=torch.float64)
    proposals = box[:, None] + torch.randn(2, 6, 4, dtype=torch.float64, generator=generator) * 6
    proposals[0, 0] = torch.tensor([-20.3, 100.1, 50.2, 80.6])  # partly outside the maps
    with torch.no_grad():
        return net.get_modulation(ref, box), net.get_iou_feat(test), proposals


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_box_gradient_matches_autograd_in_float64(backbone):
    model = random_tracking_net(TrackingConfig(backbone, (16, 24), (8, 12)), seed=3).double()
    net = model.bb_regressor
    modulation, feat, proposals = _inputs(net, model.config.input_dim, seed=4)
    iou, grad = net.iou_and_box_gradient(modulation, feat, proposals)
    boxes = proposals.clone().requires_grad_()
    expected = net.predict_iou(modulation, feat, boxes)
    (expected_grad,) = torch.autograd.grad(expected.sum(), boxes)
    assert iou.shape == (2, 6) and grad.shape == (2, 6, 4)
    torch.testing.assert_close(iou, expected.detach(), rtol=0, atol=1e-12)
    assert (grad - expected_grad).abs().max() <= 1e-9
    assert expected_grad.abs().min() > 0  # every coordinate of every box has a gradient


def test_box_gradient_matches_central_differences():
    model = random_tracking_net(seed=5).double()
    net = model.bb_regressor
    modulation, feat, proposals = _inputs(net, model.config.input_dim, seed=6)
    _, grad = net.iou_and_box_gradient(modulation, feat, proposals)
    h = 1e-4
    for k in range(4):
        shift = torch.zeros(4, dtype=torch.float64)
        shift[k] = h
        with torch.no_grad():
            plus = net.predict_iou(modulation, feat, proposals + shift)
            minus = net.predict_iou(modulation, feat, proposals - shift)
        torch.testing.assert_close(grad[..., k], (plus - minus) / (2 * h), rtol=1e-4, atol=1e-8)


def test_box_gradient_needs_eval_mode():
    model = random_tracking_net()
    net = model.bb_regressor.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        net.iou_and_box_gradient(
            (torch.ones(1, 16, 1, 1), torch.ones(1, 24, 1, 1)),
            (torch.ones(1, 16, 8, 8), torch.ones(1, 24, 4, 4)),
            torch.tensor([[[1.0, 1.0, 10.0, 10.0]]]),
        )


def test_state_without_bb_regressor_is_refused():
    state = pytracking_state(random_tracking_net())
    without = {k: v for k, v in state.items() if not k.startswith("bb_regressor.")}
    with pytest.raises(ValueError, match="no bb_regressor"):
        tracking_config(without, "x.pth.tar")
    no_backbone = {k: v for k, v in state.items() if not k.startswith("feature_extractor.")}
    with pytest.raises(ValueError, match="no feature_extractor"):
        tracking_config(no_backbone, "x.pth.tar")


def test_shapes_that_fit_neither_resnet_are_refused():
    state = dict(pytracking_state(random_tracking_net()))
    state["bb_regressor.conv3_1t.0.weight"] = torch.zeros(256, 64, 3, 3)
    with pytest.raises(ValueError, match="fit neither ResNet"):
        TrackingNet.from_state_dict(state, "x.pth.tar")
    resnet50 = pytracking_state(random_tracking_net(TrackingConfig("resnet50", (8, 8), (8, 8))))
    mixed = {
        **{k: v for k, v in resnet50.items() if k.startswith("bb_regressor.")},
        **{k: v for k, v in state.items() if k.startswith("feature_extractor.")},
    }
    with pytest.raises(ValueError, match="expects a resnet50 backbone"):
        TrackingNet.from_state_dict(mixed, "x.pth.tar")
    wrong = dict(pytracking_state(random_tracking_net()))
    wrong["bb_regressor.fc3_rt.linear.weight"] = torch.zeros(8, 17)
    with pytest.raises(ValueError, match="does not fit"):
        TrackingNet.from_state_dict(wrong, "x.pth.tar")
