"""The exported detector (rpn and box_head graphs): ONNX Runtime against the PyTorch model, the
manifest's detector section, the NMS op and its ONNX node, and the pipeline from an image alone
(every backend's detections: test_detection_parity.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from tiny_model import write_tiny_joint_checkpoint

from iounet.export.manifest import (
    DETECTOR_ROLES,
    GRAPH_ROLES,
    Manifest,
    ManifestError,
    load_manifest,
)
from iounet.export.onnx_export import export_model
from iounet.plugins import onnxruntime_session
from iounet.runtime.bench import image_inputs, measure, stage_order
from iounet.runtime.ort_backend import OnnxRuntimeBackend
from iounet.runtime.pipeline import Pipeline, PipelineConfig
from iounet.training.checkpoint import load_model
from iounet.training.images import pad_images
from iounet.training.joint_model import PADDING_SCORE


@pytest.fixture(scope="module")
def joint(exported_joint_model):
    checkpoint, folder = exported_joint_model
    model, _ = load_model(checkpoint)
    return checkpoint, folder, model, load_manifest(folder)


def test_the_manifest_describes_the_detector(joint):
    _, _, model, manifest = joint
    assert manifest.has_detector and manifest.roles() == GRAPH_ROLES + DETECTOR_ROLES
    detector = manifest.detector
    assert detector.post_nms_top_n == model.detector.rpn_post_nms_top_n
    assert detector.detections_per_image == model.detector.detections_per_image
    assert detector.padding_score == PADDING_SCORE < detector.score_threshold
    for precision in ("fp32", "fp16"):
        box_head = manifest.graph("box_head", precision)
        assert [s.name for s in box_head.outputs] == ["boxes", "scores", "labels"]
        assert box_head.inputs[4].shape == ("P", 4)  # any number of proposals
        assert box_head.outputs[0].shape == (detector.detections_per_image, 4)


def test_the_rpn_graph_runs_nms_as_an_onnx_node_without_data_dependent_filters(joint):
    _, _, _, manifest = joint
    rpn = onnx.load(str(manifest.graph_path("rpn")))
    ops = [node.op_type for node in rpn.graph.node]
    assert ops.count("NonMaxSuppression") == 1 and "NonZero" not in ops
    box_head = onnx.load(str(manifest.graph_path("box_head")))
    ops = [(node.domain, node.op_type) for node in box_head.graph.node]
    assert ops.count(("iounet", "PrRoIPool")) == 4 and ("", "NonZero") not in ops


@pytest.mark.parametrize("size", [(64, 64), (200, 260), (480, 352)])
@torch.no_grad()
def test_exported_detector_matches_pytorch(joint, size):
    _, _, model, manifest = joint
    ort = OnnxRuntimeBackend(manifest)
    torch.manual_seed(sum(size))
    image = pad_images([torch.rand(3, *size)])
    features, maps = ort.features(image), model.backbone(image)
    content = torch.tensor(size, dtype=torch.float32)
    proposals = ort.proposals(features, size)
    expected = model.proposals(maps, content)
    assert proposals.shape == expected.shape and len(expected) > 0
    torch.testing.assert_close(proposals, expected, rtol=0, atol=1e-3)
    for count in (1, 13, len(expected)):
        boxes, scores, labels = ort.raw_detections(features, expected[:count], size)
        ref_boxes, ref_scores, ref_labels = model.raw_detections(maps, expected[:count], content)
        torch.testing.assert_close(boxes, ref_boxes, rtol=0, atol=1e-3)
        torch.testing.assert_close(scores, ref_scores, rtol=0, atol=1e-5)
        assert torch.equal(labels, ref_labels)


def test_nms_op_is_torchvision_nms_after_the_score_threshold_and_exports_to_onnx(tmp_path):
    import torchvision

    from iounet.plugins.onnx_translation import TRANSLATION_TABLE

    generator = torch.Generator().manual_seed(0)
    corners = torch.rand((300, 2), generator=generator) * 100
    boxes = torch.cat([corners, corners + 5 + torch.rand((300, 2), generator=generator) * 30], 1)
    scores = torch.rand(300, generator=generator)
    scores[::7] = -1.0
    kept = torch.ops.iounet.nms(boxes, scores, 0.5, -0.5)
    valid = torch.nonzero(scores > -0.5).flatten()
    assert torch.equal(kept, valid[torchvision.ops.nms(boxes[valid], scores[valid], 0.5)])
    assert 0 < len(kept) < len(valid)

    class Module(torch.nn.Module):
        def forward(self, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            return torch.ops.iounet.nms(boxes, scores, 0.5, -0.5)

    count = torch.export.Dim("N", min=2, max=4096)
    program = torch.onnx.export(
        Module().eval(),
        (boxes, scores),
        dynamo=True,
        dynamic_shapes=({0: count}, {0: count}),
        custom_translation_table=TRANSLATION_TABLE,
        input_names=["boxes", "scores"],
        output_names=["kept"],
        verbose=False,
    )
    program.save(str(tmp_path / "nms.onnx"))
    session = onnxruntime_session(str(tmp_path / "nms.onnx"))
    (onnx_kept,) = session.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy()})
    assert np.array_equal(onnx_kept, kept.numpy())


def test_the_pipeline_runs_the_detector_then_iou_nms_and_refinement(joint):
    """Image alone = the detector's raw detections given as external detections."""
    _, folder, _, manifest = joint
    pipeline = Pipeline.from_model(folder, "ort")
    torch.manual_seed(4)
    image = torch.rand(3, 120, 160)  # resized to the model's 192 short side inside
    found = pipeline(image)
    resized, scale = _resized(image, manifest)
    boxes, scores, labels = pipeline.detect_resized(resized)
    assert len(boxes) > 0 and bool((scores > manifest.detector.score_threshold).all())
    given = pipeline(image, boxes / scale, scores, labels)
    torch.testing.assert_close(found.boxes, given.boxes, rtol=0, atol=1e-3)
    torch.testing.assert_close(found.scores, given.scores)
    baseline = Pipeline.for_manifest(
        manifest, pipeline.backend, PipelineConfig(method="nms", nms_threshold=0.5)
    )(image)
    assert baseline.ious is None and 0 < len(baseline.boxes) <= len(boxes)
    from iounet.runtime.suppression import nms

    keep = nms(boxes, scores, labels, 0.5)
    torch.testing.assert_close(baseline.boxes, boxes[keep] / scale)


def _resized(image: torch.Tensor, manifest: Manifest) -> tuple[torch.Tensor, float]:
    from iounet.training.images import resize_image

    return resize_image(image, manifest.input.min_size, manifest.input.max_size)


def test_a_model_without_detector_needs_detections(exported_model):
    _, folder = exported_model
    pipeline = Pipeline.from_model(folder, "ort")
    with pytest.raises(ValueError, match="has no detector"):
        pipeline(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="together"):
        pipeline(torch.rand(3, 64, 64), torch.zeros((0, 4)))


def test_bench_times_every_stage_from_the_image(joint):
    _, _, _, manifest = joint
    backend = OnnxRuntimeBackend(manifest)
    inputs = image_inputs(torch.rand(3, 40, 50), 96, 128)
    assert inputs.image.shape == (3, 96, 128) and inputs.boxes is None
    full = measure(Pipeline.for_manifest(manifest, backend), inputs, 0, 2)
    config = PipelineConfig(method="nms")
    fpn = measure(Pipeline.for_manifest(manifest, backend, config), inputs, 0, 2)
    order = stage_order({"IoU-Net": full})
    assert order[:5] == ["backbone", "rpn", "box_head", "iou_head", "iou_nms"]
    assert order[-2:] == ["refine", "total"]
    assert stage_order({"FPN": fpn}) == ["backbone", "rpn", "box_head", "nms", "total"]
    for table in (full, fpn):
        parts = sum(v["p50_ms"] for k, v in table.items() if k not in ("total", "refine"))
        assert parts <= table["total"]["p99_ms"] * 1.5  # stages add up to about the total


def test_version_2_manifests_still_load_and_the_detector_section_is_checked(joint, tmp_path):
    _, folder, _, _ = joint
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    path = copy / "manifest.json"
    data = json.loads(path.read_text())
    old = {**data, "format_version": 2, "detector": None}
    old["graphs"] = {
        precision: {role: entry for role, entry in entries.items() if role in GRAPH_ROLES}
        for precision, entries in data["graphs"].items()
    }
    path.write_text(json.dumps(old))
    assert not load_manifest(copy).has_detector
    path.write_text(json.dumps({**data, "detector": None}))
    with pytest.raises(ManifestError, match="detector"):
        load_manifest(copy)
    broken = {**data, "detector": {**data["detector"], "padding_score": 0.5}}
    path.write_text(json.dumps(broken))
    with pytest.raises(ManifestError, match="padding_score"):
        load_manifest(copy)


def test_an_fpn_baseline_is_not_exported(tmp_path):
    checkpoint = write_tiny_joint_checkpoint(tmp_path / "fpn.pt", iou_branch=False)
    with pytest.raises(ValueError, match="without the IoU branch"):
        export_model(checkpoint, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_cli_bench_times_fpn_and_iounet_from_an_image(joint, tmp_path, capsys):
    from PIL import Image

    from iounet.cli import main

    _, folder, _, _ = joint
    picture = tmp_path / "photo.png"
    Image.fromarray((torch.rand(50, 70, 3) * 255).to(torch.uint8).numpy()).save(picture)
    table = tmp_path / "bench.json"
    common = ["bench", "--model", str(folder), "--backends", "ort", "--warmup", "0", "--runs", "1"]
    sized = ["--image", str(picture), "--image-size", "96x128"]
    assert main([*common, *sized, "--json", str(table)]) == 0
    results = json.loads(table.read_text())
    assert set(results) == {"ort FPN", "ort IoU-Net"}
    assert "rpn" in results["ort FPN"] and "refine" in results["ort IoU-Net"]
    assert "ort IoU-Net vs ort FPN (total p50)" in capsys.readouterr().out
    assert main([*common, "--detections", "30", "--json", str(table), "--force"]) == 0
    results = json.loads(table.read_text())
    assert set(results) == {"ort"} and "rpn" not in results["ort"]
    assert main([*common, "--detections", "0"]) == 2
    assert main([*common, "--image", str(tmp_path / "missing.png")]) == 2
