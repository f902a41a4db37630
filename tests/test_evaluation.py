"""Predictor evaluation: Pearson correlation, detections matched to ground truth, the plot."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from iounet.training.coco_dataset import CocoDetection
from iounet.training.evaluation import iou_with_same_class, pearson, scatter_plot
from iounet.training.synthetic import generate_synthetic_dataset


def test_pearson_matches_numpy_and_handles_degenerate_input():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(50, generator=generator), torch.rand(50, generator=generator)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x.numpy(), y.numpy())[0, 1], abs=1e-12)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert math.isnan(pearson(torch.ones(5), x[:5]))
    assert math.isnan(pearson(x[:1], y[:1]))
    with pytest.raises(ValueError, match="1-D"):
        pearson(x, y[:10])


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "data"
    generate_synthetic_dataset(out, train=1, val=4, size=64, seed=1)
    return CocoDetection(out / "val" / "images", out / "val" / "annotations.json", 64, 64)


def test_detections_are_matched_to_same_class_ground_truth():
    gt_boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 30.0]])
    gt_labels = torch.tensor([1, 2])
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # exact, same class: 1
            [2.5, 0.0, 12.5, 10.0],  # shifted by a quarter of its width: 3/5
            [0.0, 0.0, 10.0, 10.0],  # exact but another class: 0
            [20.0, 20.0, 40.0, 30.0],  # the second ground truth, its class: 1
        ]
    )
    labels = torch.tensor([1, 1, 2, 2])
    iou = iou_with_same_class(boxes, labels, gt_boxes, gt_labels)
    np.testing.assert_allclose(iou.numpy(), [1.0, 0.6, 0.0, 1.0], atol=1e-6)
    assert iou_with_same_class(boxes, labels, gt_boxes[:0], gt_labels[:0]).tolist() == [0.0] * 4


def test_scatter_plot_writes_a_png(tmp_path, val_set):
    from iounet.training.evaluation import PredictorEvaluation

    evaluation = PredictorEvaluation(
        torch.rand(20), 0.5 + torch.rand(20) / 2, 0.3, torch.rand(20), 0.1
    )
    path = scatter_plot(tmp_path / "plots" / "p.png", evaluation, "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["p.png"]
