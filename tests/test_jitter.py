"""The IoU-balanced jittered box sampler."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from iounet.training.jitter import jitter_boxes

GT = torch.tensor([[10.0, 10, 50, 80], [60, 20, 120, 60], [5, 90, 30, 100]])


def _sample(count=1000, seed=0, **kwargs):
    return jitter_boxes(GT, count, torch.Generator().manual_seed(seed), **kwargs)


def test_iou_histogram_is_uniform_over_half_to_one():
    sample = _sample(2000)
    assert sample.boxes.shape == (2000, 4)
    assert float(sample.iou.min()) >= 0.5
    histogram = torch.histc(sample.iou, bins=10, min=0.5, max=1.0)
    assert histogram.min() >= 180 and histogram.max() <= 220


def test_recorded_iou_and_match_are_the_best_ground_truth():
    sample = _sample(500)
    iou = box_iou(sample.boxes, GT)
    torch.testing.assert_close(sample.iou, iou.max(dim=1).values)
    assert torch.equal(sample.gt_index, iou.argmax(dim=1))


def test_every_ground_truth_gets_boxes_and_sizes_vary():
    sample = _sample(600)
    assert set(sample.gt_index.tolist()) == {0, 1, 2}
    widths = sample.boxes[:, 2] - sample.boxes[:, 0]
    assert widths.max() / widths.min() > 2


def test_clipping_to_the_image_and_reproducibility():
    sample = _sample(300, image_size=(90, 100))
    assert float(sample.boxes[:, 0::2].min()) >= 0 and float(sample.boxes[:, 0::2].max()) <= 100
    assert float(sample.boxes[:, 1::2].max()) <= 90
    assert torch.equal(_sample(300, seed=4).boxes, _sample(300, seed=4).boxes)
    assert not torch.equal(_sample(300, seed=4).boxes, _sample(300, seed=5).boxes)


def test_no_ground_truth_or_no_boxes_gives_empty():
    empty = jitter_boxes(torch.zeros((0, 4)), 10, torch.Generator())
    assert empty.boxes.shape == (0, 4) and empty.iou.numel() == 0
    assert _sample(0).boxes.shape == (0, 4)


def test_higher_min_iou_is_respected():
    sample = _sample(400, min_iou=0.8, bins=4)
    assert float(sample.iou.min()) >= 0.8
    assert torch.histc(sample.iou, bins=4, min=0.8, max=1.0).min() >= 90


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"gt_boxes": torch.zeros((2, 5))}, "gt_boxes"), ({"num_boxes": -1}, "num_boxes")],
)
def test_bad_arguments(kwargs, match):
    arguments = {"gt_boxes": GT, "num_boxes": 5, "generator": torch.Generator(), **kwargs}
    with pytest.raises(ValueError, match=match):
        jitter_boxes(**arguments)
