"""The four-way detection evaluation (AP table, recall, refinement curve, Pearson)."""

from __future__ import annotations

import pytest
import torch

from iounet.runtime.evaluation import (
    AP_KEYS,
    TABLE_ROWS,
    evaluate_detections_table,
    format_table,
    plot_curves,
)
from iounet.runtime.torch_backend import TorchBackend
from iounet.training.coco_dataset import CocoDetection
from iounet.training.model import IoUNet, ModelConfig
from iounet.training.synthetic import generate_synthetic_dataset


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "data"
    generate_synthetic_dataset(out, train=1, val=4, size=64, seed=2)
    return CocoDetection(out / "val" / "images", out / "val" / "annotations.json", 64, 64)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return IoUNet(ModelConfig(backbone="resnet18", fpn_channels=8, head_dim=16), 5).eval()


def _exact_and_shifted(dataset):
    detections = []
    for annotation in dataset.coco.loadAnns(dataset.coco.getAnnIds()):
        x, y, w, h = annotation["bbox"]
        common = {"image_id": annotation["image_id"], "category_id": annotation["category_id"]}
        detections.append({**common, "bbox": [x, y, w, h], "score": 0.9})
        detections.append({**common, "bbox": [x + w / 4, y, w, h], "score": 0.8})  # IoU 3/5
    return detections


def test_exact_detections_score_perfectly_after_nms(val_set, model, tmp_path):
    report = evaluate_detections_table(
        model, val_set, _exact_and_shifted(val_set), curve_iterations=3
    )
    assert set(report.ap) == set(TABLE_ROWS)
    for key in AP_KEYS:
        assert report.ap["nms"][key] == pytest.approx(1.0)
        assert 0.0 <= report.ap["iou_nms_refine"][key] <= 1.0
    assert report.recall["no_nms"]["0.95"] == pytest.approx(1.0)
    assert report.recall["nms"]["0.50"] == pytest.approx(1.0)
    assert [entry["iteration"] for entry in report.refine_iterations] == [0, 1, 2, 3]
    assert report.refine_iterations[0]["AP"] == pytest.approx(report.ap["iou_nms"]["AP"])
    assert report.pearson["classification"] > 0.99  # shifted boxes clipped at the border: ~1
    assert report.pearson["boxes"] == 2 * len(val_set.coco.getAnnIds())
    text = format_table(report)
    assert text.splitlines()[1].startswith("nms") and "100.0" in text.splitlines()[1]
    assert all(path.stat().st_size > 1000 for path in plot_curves(report, tmp_path))


def test_torch_backend_gradient_matches_finite_differences(val_set, model):
    image, _ = val_set[0]
    backend = TorchBackend(model)
    maps = backend.features(image[None])
    labels = torch.tensor([1, 3])

    def objective(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rois = torch.cat([boxes.new_zeros((len(boxes), 1)), boxes], dim=1)
        return backend.iou_and_grad(maps, rois, labels)

    boxes = torch.tensor([[5.0, 6.0, 40.0, 50.0], [10.0, 3.0, 30.0, 33.0]])
    iou, grad = objective(boxes)
    step = 1e-2
    for k in range(2):
        for d in range(4):
            plus, minus = boxes.clone(), boxes.clone()
            plus[k, d] += step
            minus[k, d] -= step
            numeric = (objective(plus)[0][k] - objective(minus)[0][k]) / (2 * step)
            assert float(grad[k, d]) == pytest.approx(float(numeric), abs=2e-3)
    assert iou.shape == (2,)


def test_unknown_images_are_refused(val_set, model):
    with pytest.raises(ValueError, match="image ids"):
        evaluate_detections_table(
            model, val_set, [{"image_id": 77, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1.0}]
        )
