"""Predictor evaluation: Pearson correlation, detections matched to ground truth, the plot."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from iounet.training.coco_dataset import CocoDetection
from iounet.training.evaluation import evaluate_detections, pearson, scatter_plot
from iounet.training.model import IoUNet, ModelConfig
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


def test_detections_are_matched_to_same_class_ground_truth(val_set):
    torch.manual_seed(0)
    model = IoUNet(ModelConfig(backbone="resnet18", fpn_channels=8, head_dim=16), 5)
    detections, expected = [], []
    for index, image_id in enumerate(val_set.image_ids):
        _, target = val_set[index]
        for box, label in zip(target["boxes"], target["labels"], strict=True):
            x0, y0, x1, y1 = (box / target["scale"]).tolist()
            w = x1 - x0
            # The exact box (IoU 1) and one shifted by a quarter of its width (IoU 3/5).
            category = val_set.label_to_category[int(label)]
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x0, y0, w, y1 - y0],
                    "score": 0.9,
                }
            )
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x0 + w / 4, y0, w, y1 - y0],
                    "score": 0.3,
                }
            )
            expected += [1.0, 0.6]
    result = evaluate_detections(model, val_set, detections)
    np.testing.assert_allclose(np.sort(result.true.numpy()), np.sort(expected), atol=1e-5)
    assert result.score_pearson == pytest.approx(1.0)
    with pytest.raises(ValueError, match="image ids"):
        evaluate_detections(
            model, val_set, [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]
        )


def test_scatter_plot_writes_a_png(tmp_path, val_set):
    from iounet.training.evaluation import PredictorEvaluation

    evaluation = PredictorEvaluation(
        torch.rand(20), 0.5 + torch.rand(20) / 2, 0.3, torch.rand(20), 0.1
    )
    path = scatter_plot(tmp_path / "plots" / "p.png", evaluation, "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["p.png"]
