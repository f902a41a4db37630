"""The runtime pipeline, `iounet infer` and `iounet bench` on an exported tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_model import assert_gradient_matches_differences

from iounet.cli import main
from iounet.export.manifest import load_manifest
from iounet.resize import resize_image, resize_pixels
from iounet.runtime import iou_nms, refine_boxes
from iounet.runtime.bench import format_latency_table, measure, synthetic_inputs
from iounet.runtime.pipeline import Pipeline, PipelineConfig, open_backend
from iounet.runtime.torch_backend import TorchBackend
from iounet.training.synthetic import generate_synthetic_dataset


@pytest.fixture(scope="module")
def ort(exported_model) -> Pipeline:
    """The tiny model's pipeline on ONNX Runtime (test_detection_parity.py compares every
    backend's with the PyTorch model's)."""
    return Pipeline.from_model(exported_model[1])


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "data"
    generate_synthetic_dataset(out, train=1, val=3, size=96, seed=4)
    return out / "val"


def test_pipeline_is_iou_nms_then_refinement_of_the_top_boxes(ort):
    backend = ort.backend
    pipeline = Pipeline(backend, 5, PipelineConfig(refine_top=20))
    inputs = synthetic_inputs(96, 128, 300, 5, seed=1)  # a multiple of 32: no padding
    result = pipeline(inputs.image, inputs.boxes, inputs.scores, inputs.labels)

    maps = backend.features(inputs.image[None])
    rois = torch.cat([torch.zeros((300, 1)), inputs.boxes], dim=1)
    ious = backend.iou(maps, rois, inputs.labels)
    keep, scores = iou_nms(inputs.boxes, inputs.scores, ious, inputs.labels, 0.5)
    order = torch.argsort(scores, descending=True, stable=True)
    keep, scores = keep[order], scores[order]
    torch.testing.assert_close(result.scores, scores)
    assert result.labels.tolist() == inputs.labels[keep].tolist()
    top = 20
    assert len(keep) > top  # some boxes are kept but not refined

    def objective(current):
        full = torch.cat([torch.zeros((len(current), 1)), current], dim=1)
        return backend.iou_and_grad(maps, full, inputs.labels[keep][:top])

    refined, refined_iou = refine_boxes(inputs.boxes[keep][:top], objective, image_size=(96, 128))
    torch.testing.assert_close(result.boxes[:top], refined, atol=1e-4, rtol=0)
    torch.testing.assert_close(result.ious[:top], refined_iou.clamp(0, 1), atol=1e-5, rtol=0)
    assert result.boxes[top:].tolist() == inputs.boxes[keep][top:].tolist()
    torch.testing.assert_close(result.ious[top:], ious[keep][top:])


def test_no_detections_give_no_results(ort):
    empty = torch.zeros(0, dtype=torch.int64)
    found = ort(torch.rand(3, 64, 64), torch.zeros((0, 4)), torch.zeros(0), empty)
    assert found.boxes.shape == (0, 4) and found.ious.shape == (0,)


@pytest.mark.parametrize(
    ("image", "boxes", "labels", "message"),
    [
        (torch.rand(64, 64, 3), torch.zeros((1, 4)), [0], r"shape \(3, H, W\)"),
        (torch.rand(4, 64, 64), torch.zeros((1, 4)), [0], r"shape \(3, H, W\)"),
        (torch.rand(3, 0, 64), torch.zeros((1, 4)), [0], "image is empty"),
        (torch.rand(3, 64, 64), torch.zeros((1, 5)), [0], r"boxes must have shape \(N, 4\)"),
        (torch.rand(3, 64, 64), torch.zeros((1, 4)), [7], r"labels must lie in \[0, 4\]"),
        (torch.rand(3, 64, 64), torch.full((1, 4), float("nan")), [0], "finite"),
    ],
)
def test_bad_inputs_are_named(ort, image, boxes, labels, message):
    with pytest.raises(ValueError, match=message):
        ort(image, boxes, torch.ones(len(labels)), torch.tensor(labels))


def test_uint8_image_is_resized_in_8_bits_as_files_are_and_other_integers_are_refused(ort):
    inputs = synthetic_inputs(64, 64, 40, 5, seed=5)
    raw = (inputs.boxes, inputs.scores, inputs.labels)
    pixels = (inputs.image * 255).round().to(torch.uint8)
    as_uint8 = ort(pixels, *raw)
    resized, scale = resize_pixels(pixels, *ort.input_size)
    as_file = ort.run_scaled(resized, scale, (64, 64), *raw)
    assert torch.equal(as_uint8.boxes, as_file.boxes) and torch.equal(as_uint8.ious, as_file.ious)
    in_float, float_scale = resize_image(pixels.float() / 255, *ort.input_size)
    assert scale == float_scale != 1.0
    assert (resized - in_float).abs().max() <= 1.5 / 255  # 8-bit rounding of the resized image
    with pytest.raises(TypeError, match="float"):
        ort(pixels.int(), inputs.boxes, inputs.scores, inputs.labels)


def test_torch_backend_needs_the_exported_checkpoint(exported_model, tmp_path):
    from tiny_model import write_tiny_checkpoint

    _, folder = exported_model
    manifest = load_manifest(folder)
    with pytest.raises(ValueError, match="needs the checkpoint"):
        open_backend(manifest, "torch")
    other = write_tiny_checkpoint(tmp_path / "other.pt", seed=3)
    with pytest.raises(ValueError, match="not exported from"):
        open_backend(manifest, "torch", checkpoint=other)
    with pytest.raises(ValueError, match="unknown backend"):
        open_backend(manifest, "tpu")


def _detections(val: Path) -> list[dict]:
    data = json.loads((val / "annotations.json").read_text())
    found = []
    for annotation in data["annotations"]:
        x, y, w, h = annotation["bbox"]
        common = {"image_id": annotation["image_id"], "category_id": annotation["category_id"]}
        found.append({**common, "bbox": [x, y, w, h], "score": 0.9})
        found.append({**common, "bbox": [x + w / 5, y, w, h], "score": 0.6})
    return found


def test_infer_writes_coco_results_with_predicted_iou(exported_model, val_set, tmp_path, capsys):
    _, folder = exported_model
    detections = tmp_path / "raw.json"
    raw = _detections(val_set)
    detections.write_text(json.dumps(raw))
    out = tmp_path / "final.json"
    arguments = [
        "infer", "--model", str(folder), "--images", str(val_set / "images"),
        "--annotations", str(val_set / "annotations.json"), "--detections", str(detections),
        "--out", str(out),
    ]  # fmt: skip
    assert main(arguments) == 0
    results = json.loads(out.read_text())
    assert 0 < len(results) <= len(raw)
    assert {r["image_id"] for r in results} == {d["image_id"] for d in raw}
    assert all(0 <= r["iou"] <= 1 and r["bbox"][2] >= 0 for r in results)
    assert "raw detections" in capsys.readouterr().out
    assert main(arguments) == 2
    assert "--force" in capsys.readouterr().err
    detections.write_text(json.dumps([{**raw[0], "image_id": 999}]))
    assert main([*arguments, "--force"]) == 2
    assert "image ids not in the annotations: [999]" in capsys.readouterr().err
    detections.write_text(json.dumps([{**raw[0], "category_id": 42}]))
    assert main([*arguments, "--force"]) == 2
    assert "category ids not in the annotations: [42]" in capsys.readouterr().err
    assert json.loads(out.read_text()) == results


def test_bench_prints_and_writes_the_latency_table(exported_model, tmp_path, capsys):
    checkpoint, folder = exported_model
    report = tmp_path / "bench.json"
    arguments = [
        "bench", "--model", str(folder), "--backends", "torch,ort", "--checkpoint",
        str(checkpoint), "--image-size", "64x96", "--detections", "200", "--warmup", "1",
        "--runs", "3", "--json", str(report),
    ]  # fmt: skip
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "refinement ort vs torch (p50)" in printed
    results = json.loads(report.read_text())
    assert set(results) == {"torch", "ort"}
    for stages in results.values():
        for stage in ("backbone", "iou_head", "iou_nms", "refine_step_0", "refine", "total"):
            entry = stages[stage]
            assert 0 < entry["p50_ms"] <= entry["p90_ms"] <= entry["p99_ms"]
        assert stages["total"]["p50_ms"] >= stages["refine"]["p50_ms"]
    assert main([*arguments[:4], "torch", "--image-size", "64x96"]) == 2
    assert "--checkpoint is needed" in capsys.readouterr().err
    assert main([*arguments[:4], "ort,tpu"]) == 2
    assert "unknown ['tpu']" in capsys.readouterr().err


def test_measure_and_table_figures(ort):
    inputs = synthetic_inputs(64, 64, 50, 5)
    result = measure(ort, inputs, warmup=0, runs=2)
    total = result["total"]  # two runs: their median is their mean
    assert total["images_per_s"] == pytest.approx(1e3 / total["p50_ms"])
    table = {
        "torch": {"refine": {"p50_ms": 30.0, "p90_ms": 31.0, "p99_ms": 32.0}},
        "ort": {"refine": {"p50_ms": 10.0, "p90_ms": 11.0, "p99_ms": 12.0}},
    }
    for entry in table.values():
        entry["total"] = {"p50_ms": 40.0, "p90_ms": 41.0, "p99_ms": 42.0, "images_per_s": 25.0}
    text = format_latency_table(table, "torch")
    assert "10.00 ms vs 30.00 ms = 3.00x faster" in text
    assert "30.00/31.00/32.00" in text


def test_synthetic_inputs_are_deterministic_and_inside_the_image():
    first, second = synthetic_inputs(80, 120, 500, 5, seed=3), synthetic_inputs(80, 120, 500, 5, 3)
    assert torch.equal(first.boxes, second.boxes) and torch.equal(first.image, second.image)
    boxes = first.boxes
    assert (
        float(boxes.min()) >= 0
        and float(boxes[:, 2].max()) <= 121
        and float(boxes[:, 3].max()) <= 81
    )
    assert bool((boxes[:, 2:] > boxes[:, :2]).all())
    assert set(first.labels.tolist()) <= set(range(5))
    with pytest.raises(ValueError, match="at least 32x32"):
        synthetic_inputs(16, 16, 10, 5)


def test_torch_backend_gradient_is_autograd_of_its_iou(exported_model):
    checkpoint, _ = exported_model
    backend = TorchBackend.from_checkpoint(checkpoint)
    maps = backend.features(torch.rand(1, 3, 64, 64))
    rois = torch.tensor([[0.0, 5, 6, 40, 50], [0.0, 20, 10, 60, 62]])
    labels = torch.tensor([0, 3])
    iou, grad = backend.iou_and_grad(maps, rois, labels)
    assert_gradient_matches_differences(backend, maps, rois, labels, grad)
    torch.testing.assert_close(iou.clamp(0, 1), backend.iou(maps, rois, labels))


def test_onnx_runtime_cuda_without_the_provider_says_what_to_install(exported_model):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA provider")
    with pytest.raises(ValueError, match=r"onnxruntime-gpu"):
        Pipeline.from_model(exported_model[1], backend="ort-cuda")


def test_export_command_refuses_an_existing_folder_then_replaces_it(
    exported_model, tmp_path, capsys
):
    checkpoint, _ = exported_model
    out = tmp_path / "model"
    out.mkdir()
    assert main(["export", str(checkpoint), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--out", str(out), "--force"]) == 0
    assert "manifest.json" in capsys.readouterr().out
    assert load_manifest(out).precisions() == ["fp32"]
