"""Bad model files and options give one clear error, never silently wrong numbers: manifests and
engine metadata holding non-standard or out-of-range numbers, bench's options, uint8 images on
every entry point, and boxes of images with extreme aspect ratios."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iounet.cli import main
from iounet.export.engine import load_engine_metadata
from iounet.export.manifest import FeatureMap, GraphEntry, ManifestError, load_manifest
from iounet.export.manifest_format import PixelSpec
from iounet.export.tracking_manifest import (
    TRACKING_ROLES,
    SourceCheckpoint,
    TrackingManifest,
    load_tracking_manifest,
)
from iounet.export.tracking_refine import TrackingRefineParams
from iounet.runtime.bench import overhead_line, synthetic_inputs
from iounet.runtime.pipeline import Pipeline, PipelineConfig, open_backend
from iounet.training.tracking_model import VARIANTS


def _copy(folder: Path, tmp_path: Path) -> tuple[Path, dict]:
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    return copy, json.loads((copy / "manifest.json").read_text())


def _write(folder: Path, data: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(data))  # NaN / Infinity as Python writes them


def _set(data: dict, dotted: str, value: object) -> dict:
    *parents, key = dotted.split(".")
    target = data
    for parent in parents:
        target = target[parent]
    target[key] = value
    return data


def _image_folder(tmp_path: Path, sizes: list[tuple[int, int]]) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for height, width in sizes:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{height}x{width}.png")
    return folder


# --- manifests: non-standard JSON numbers -------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "token"),
    [
        ("refinement.step", float("nan"), "NaN"),
        ("refinement.early_stop", float("inf"), "Infinity"),
        ("input.mean", [0.5, float("-inf"), 0.5], "-Infinity"),
        ("checkpoint.file", "last.pt", None),
    ],
)
def test_manifest_with_nan_or_infinity_is_refused(exported_model, tmp_path, field, value, token):
    copy, data = _copy(exported_model[1], tmp_path)
    _write(copy, _set(data, field, value))
    if token is None:  # the control: the edit itself is fine
        load_manifest(copy)
        return
    with pytest.raises(ManifestError, match=rf"manifest\.json is not standard JSON: {token} "):
        load_manifest(copy)


def test_manifest_float_beyond_the_finite_range_is_refused(exported_model, tmp_path):
    copy, _ = _copy(exported_model[1], tmp_path)
    text = (copy / "manifest.json").read_text()
    (copy / "manifest.json").write_text(text.replace('"step": 0.5', '"step": 1e999'))
    with pytest.raises(ManifestError, match=r"manifest\.json is not standard JSON: 1e999"):
        load_manifest(copy)


def test_nan_refinement_step_fails_infer_instead_of_writing_null_boxes(
    exported_joint_model, tmp_path, capsys
):
    copy, data = _copy(exported_joint_model[1], tmp_path)
    images = _image_folder(tmp_path, [(64, 80)])
    out = tmp_path / "out.json"
    command = ["infer", "--model", str(copy), "--images", str(images), "--out", str(out)]
    assert main(command) == 0
    boxes = [entry["bbox"] for entry in json.loads(out.read_text())]
    assert boxes and all(None not in box for box in boxes)
    capsys.readouterr()
    _write(copy, _set(data, "refinement.step", float("nan")))
    assert main([*command, "--force"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("iounet infer: ") and len(error.strip().splitlines()) == 1
    assert "manifest.json is not standard JSON: NaN" in error


def test_nan_padding_score_fails_instead_of_finding_nothing(exported_joint_model, tmp_path, capsys):
    copy, data = _copy(exported_joint_model[1], tmp_path)
    images = _image_folder(tmp_path, [(64, 80)])
    _write(copy, _set(data, "detector.padding_score", float("nan")))
    out = tmp_path / "out.json"
    assert main(["infer", "--model", str(copy), "--images", str(images), "--out", str(out)]) == 2
    assert "manifest.json is not standard JSON: NaN" in capsys.readouterr().err
    assert not out.exists()


# --- manifests: numbers out of their range -----------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("refinement.step", 0, "refinement.step must be positive, got 0"),
        ("refinement.step", -0.5, "refinement.step must be positive, got -0.5"),
        ("refinement.step", 10**400, "refinement.step must be a finite number"),
        ("input.mean", [0.5, 10**400, 0.5], "input.mean must be a list of 3 finite numbers"),
        ("refinement.iterations", -1, "refinement.iterations must be >= 0, got -1"),
        ("refinement.iterations", 2.5, "refinement.iterations must be an integer"),
        ("refinement.early_stop", -1e-3, "refinement.early_stop must be >= 0"),
        ("refinement.degrade_tolerance", 0.1, "refinement.degrade_tolerance must be <= 0"),
        ("input.std", [0.2, 0.0, 0.2], "input.std must be positive"),
        ("input.range", [1.0, 0.0], "input.range must be"),
        ("input.size_divisor", 0, "input.size_divisor must be positive"),
        ("fpn_channels", -16, "fpn_channels must be positive"),
        ("checkpoint.step", -1, "checkpoint.step must be >= 0"),
        ("custom_opsets", {"iounet": 0}, "custom_opsets.iounet must be positive"),
        ("custom_opsets", {"iounet": "1"}, "custom_opsets.iounet must be an integer"),
    ],
)
def test_manifest_numbers_out_of_range_are_named(exported_model, tmp_path, field, value, message):
    copy, data = _copy(exported_model[1], tmp_path)
    _write(copy, _set(data, field, value))
    with pytest.raises(ManifestError, match=message.replace(".", r"\.")):
        load_manifest(copy)


def test_manifest_negative_tensor_size_is_named(exported_model, tmp_path):
    copy, data = _copy(exported_model[1], tmp_path)
    data["graphs"]["fp32"]["head"]["inputs"][-1]["shape"] = [-1]
    _write(copy, data)
    with pytest.raises(ManifestError, match=r"graphs\.fp32\.head: tensor shapes hold sizes"):
        load_manifest(copy, verify=False)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("detector.nms_threshold", 1.5, "detector.nms_threshold must lie in [0, 1], got 1.5"),
        ("detector.rpn_nms_threshold", -0.1, "detector.rpn_nms_threshold must lie in [0, 1]"),
        ("detector.score_threshold", 2, "detector.score_threshold must lie in [0, 1]"),
        ("detector.padding_score", 0.05, "detector.padding_score must lie below"),
        ("detector.post_nms_top_n", 0, "detector.post_nms_top_n must be positive"),
    ],
)
def test_detector_numbers_out_of_range_are_named(
    exported_joint_model, tmp_path, field, value, message
):
    copy, data = _copy(exported_joint_model[1], tmp_path)
    _write(copy, _set(data, field, value))
    with pytest.raises(ManifestError, match=message.replace(".", r"\.").replace("[", r"\[")):
        load_manifest(copy, verify=False)


# --- tracking manifests ------------------------------------------------------------------------


def _tracking_folder(tmp_path: Path) -> Path:
    """A tracking model folder whose manifest is checked without its (absent) graph files."""
    folder = tmp_path / "tracking"
    folder.mkdir()
    entry = GraphEntry(file="g.onnx", sha256="0" * 64, inputs=(), outputs=())
    TrackingManifest(
        folder=folder,
        backbone="resnet18",
        input_dim=VARIANTS["resnet18"],
        pred_input_dim=(16, 24),
        pred_inter_dim=(8, 12),
        maps=(FeatureMap("layer2", 8), FeatureMap("layer3", 16)),
        input=PixelSpec(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        refinement=TrackingRefineParams(),
        checkpoint=SourceCheckpoint("net.pth.tar", "0" * 64),
        graphs=dict.fromkeys(TRACKING_ROLES, entry),
        opset=17,
        custom_opsets={"iounet": 1},
    ).save(folder)
    return folder


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("refinement.step_decay", float("nan"), "is not standard JSON: NaN"),
        ("refinement.step_length", [1.0, float("inf")], "is not standard JSON: Infinity"),
        ("refinement.step_decay", 0, "refinement.step_decay must be positive"),
        ("refinement.step_length", [1.0, -0.5], "refinement.step_length must be positive"),
        ("refinement.iterations", -2, "refinement.iterations must be >= 0"),
        ("custom_opsets", {"iounet": -1}, "custom_opsets.iounet must be positive"),
    ],
)
def test_tracking_manifest_numbers_are_checked(tmp_path, field, value, message):
    folder = _tracking_folder(tmp_path)
    data = json.loads((folder / "manifest.json").read_text())
    assert load_tracking_manifest(folder, verify=False).refinement == TrackingRefineParams()
    _write(folder, _set(data, field, value))
    with pytest.raises(ManifestError, match=message.replace(".", r"\.")):
        load_tracking_manifest(folder, verify=False)


# --- engine metadata ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"format": "iounet-engines", "workspace_mb": NaN}', "NaN"),
        ('{"format": "iounet-engines", "boxes": [1, Infinity, 8]}', "Infinity"),
        ('{"format": "iounet-engines", "workspace_mb": 1e400}', "1e400"),
    ],
)
def test_engine_metadata_with_non_finite_numbers_is_refused(tmp_path, text, message):
    (tmp_path / "engines.json").write_text(text)
    with pytest.raises(ValueError, match=rf"engines\.json is not standard JSON: {message}"):
        load_engine_metadata(tmp_path)


# --- iounet bench ------------------------------------------------------------------------------


def test_overhead_line_signs_the_difference():
    def totals(fpn: float, iounet: float) -> dict:
        return {"FPN": {"total": {"p50_ms": fpn}}, "IoU-Net": {"total": {"p50_ms": iounet}}}

    faster = overhead_line(totals(50.0, 30.9), "FPN", "IoU-Net")
    assert "(-19.1 ms, 0.62x)" in faster and "+-" not in faster
    assert "(+19.1 ms, 1.38x)" in overhead_line(totals(50.0, 69.1), "FPN", "IoU-Net")
    assert "(+0.0 ms, 1.00x)" in overhead_line(totals(50.0, 50.0), "FPN", "IoU-Net")


def test_bench_refuses_a_backend_listed_twice(exported_model, capsys):
    command = ["bench", "--model", str(exported_model[1]), "--runs", "1", "--warmup", "0"]
    assert main([*command, "--backends", "ort,ort"]) == 2
    error = capsys.readouterr()
    assert error.err.strip() == "iounet bench: --backends lists ort twice" and not error.out
    assert main([*command, "--backends", "ort, ort ,ort"]) == 2
    assert "--backends lists ort 3 times" in capsys.readouterr().err


# --- --checkpoint with a backend that takes none -----------------------------------------------


def test_checkpoint_with_a_graph_backend_is_refused(exported_model, tmp_path, capsys):
    checkpoint, folder = exported_model
    bench = ["bench", "--model", str(folder), "--runs", "1", "--warmup", "0"]
    assert main([*bench, "--backends", "ort", "--checkpoint", str(checkpoint)]) == 2
    error = capsys.readouterr().err
    assert error.strip() == (
        "iounet bench: --checkpoint is for the torch, torch-native, torch-cuda backends only, "
        "not ort"
    )
    images = _image_folder(tmp_path, [(40, 40)])
    out = tmp_path / "out.json"
    infer = ["infer", "--model", str(folder), "--images", str(images), "--out", str(out)]
    assert main([*infer, "--checkpoint", str(checkpoint)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("iounet infer: --checkpoint is for the torch") and "not ort" in error
    assert main([*infer, "--backend", "trt", "--checkpoint", str(checkpoint)]) == 2
    assert "not trt" in capsys.readouterr().err
    manifest = load_manifest(folder)
    with pytest.raises(ValueError, match=r"the ort backend .* takes no checkpoint"):
        open_backend(manifest, "ort", checkpoint=checkpoint)


# --- uint8 images -------------------------------------------------------------------------------


def test_run_scaled_and_detect_resized_take_uint8_as_the_message_says(
    exported_model, exported_joint_model
):
    pipeline = Pipeline.from_model(exported_model[1])
    inputs = synthetic_inputs(64, 96, 30, 5, seed=2)
    pixels = (inputs.image * 255).round().to(torch.uint8)
    raw = (inputs.boxes, inputs.scores, inputs.labels)
    as_uint8 = pipeline.run_scaled(pixels, 1.0, None, *raw)
    as_float = pipeline.run_scaled(pixels.float() / 255, 1.0, None, *raw)
    assert torch.equal(as_uint8.boxes, as_float.boxes) and torch.equal(as_uint8.ious, as_float.ious)
    with pytest.raises(
        TypeError, match=r"float \(RGB in \[0, 1\]\) or uint8 tensor, got torch.int32"
    ):
        pipeline.run_scaled(pixels.int(), 1.0, None, *raw)
    with pytest.raises(ValueError, match=r"scale 0.5 needs the size of the original image"):
        pipeline.run_scaled(pixels, 0.5, None, *raw)
    joint = Pipeline.from_model(exported_joint_model[1])
    for uint8, float32 in zip(
        joint.detect_resized(pixels), joint.detect_resized(pixels / 255), strict=True
    ):
        assert torch.equal(uint8, float32)


# --- extreme aspect ratios ----------------------------------------------------------------------


def _inside(boxes: torch.Tensor, height: int, width: int) -> bool:
    return bool(
        (boxes[:, 0] >= 0).all()
        and (boxes[:, 1] >= 0).all()
        and (boxes[:, 2] <= width).all()
        and (boxes[:, 3] <= height).all()
        and (boxes[:, :2] <= boxes[:, 2:]).all()
    )


@pytest.mark.parametrize(("height", "width"), [(10, 5000), (5000, 10)])
def test_boxes_of_extreme_aspect_ratio_images_lie_within_the_image(exported_model, height, width):
    pipeline = Pipeline.from_model(exported_model[1])
    generator = torch.Generator().manual_seed(0)
    image = torch.rand((3, height, width), generator=generator)
    count = 60
    size = torch.tensor([width, height], dtype=torch.float32)
    corner = torch.rand((count, 2), generator=generator) * size * 0.8
    extent = (0.05 + 0.5 * torch.rand((count, 2), generator=generator)) * size
    boxes = torch.cat([corner, torch.minimum(corner + extent, size)], dim=1)
    boxes[0] = torch.tensor([0.0, 0.0, width, height])  # the whole image
    scores = torch.rand(count, generator=generator)
    labels = torch.randint(5, (count,), generator=generator)
    found = pipeline(image, boxes, scores, labels)
    assert len(found.boxes) > 0 and _inside(found.boxes, height, width)

    manifest = load_manifest(exported_model[1])
    nms_only = Pipeline.for_manifest(manifest, pipeline.backend, PipelineConfig(method="nms"))
    seen = {}
    run = nms_only._run

    def spy(resized, given, *rest):
        seen["size"], seen["boxes"] = tuple(resized.shape[1:]), given.clone()
        return run(resized, given, *rest)

    nms_only._run = spy
    kept = nms_only(image, boxes[:1], scores[:1], labels[:1])
    resized_height, resized_width = seen["size"]
    assert min(seen["size"]) == 1  # the short side rounded up to one pixel covers all of it
    expected = torch.tensor([[0.0, 0.0, resized_width, resized_height]])
    torch.testing.assert_close(seen["boxes"], expected)
    torch.testing.assert_close(kept.boxes, boxes[:1])


def test_infer_images_of_extreme_aspect_ratio_stay_within_the_image(exported_joint_model, tmp_path):
    sizes = [(10, 5000), (5000, 10)]
    images = _image_folder(tmp_path, sizes)
    out = tmp_path / "out.json"
    command = ["infer", "--model", str(exported_joint_model[1]), "--images", str(images)]
    assert main([*command, "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert {entry["image_id"] for entry in results} == {f"{h}x{w}.png" for h, w in sizes}
    for entry in results:
        height, width = (int(v) for v in Path(entry["image_id"]).stem.split("x"))
        x, y, w, h = entry["bbox"]
        assert 0 <= x and 0 <= y and 0 <= w and 0 <= h
        assert x + w <= width + 1e-3 and y + h <= height + 1e-3, entry
