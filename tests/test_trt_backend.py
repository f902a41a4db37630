"""The TensorRT backend (runtime/trt_backend.py): on the fake TensorRT, which runs the graphs
with ONNX Runtime, and on a GPU with TensorRT against ONNX Runtime."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tensorrt_missing
from engine_models import ALL_ROLES, DETECTOR, MAPS, fake_model, linked_model
from fake_tensorrt import FakeTensorRT
from runtime_backends import matched_share
from tiny_model import CLASSES, write_tiny_checkpoint

from iounet.export.engine import build_engines
from iounet.export.manifest import GRAPH_ROLES, load_manifest
from iounet.runtime.backend import RefineParams

# --- the TensorRT backend on the fake TensorRT, which runs the graphs with ONNX Runtime --------

#: Image sizes of the engines of the tiny joint model (the pipeline pads to 160x192).
JOINT_SIZES = ((64, 64), (160, 192), (224, 256))


@pytest.fixture(scope="module")
def joint_folder(exported_joint_model, tmp_path_factory):
    """A copy of the tiny joint model's folder (its files linked) to build engines in."""
    return linked_model(exported_joint_model[1], tmp_path_factory.mktemp("joint") / "model")


def _joint_backend(folder: Path, precision: str = "fp32"):
    from iounet.runtime.trt_backend import TensorRTBackend

    build_engines(folder, precision, (1, 64, 256), JOINT_SIZES, force=True)
    return TensorRTBackend(folder, precision)


def _runs(fake: FakeTensorRT, file: str) -> list[dict]:
    return [run for run in fake.executions if run["file"] == file]


def test_backend_opens_the_detector_engines(fake_trt_on_cpu, joint_folder):
    backend = _joint_backend(joint_folder)
    assert backend.has_detector
    assert set(backend._engines) == set(ALL_ROLES)
    assert backend.max_boxes == 256
    assert backend._engines["rpn"].outputs == ["proposals"]
    assert backend._engines["box_head"].dtypes == {
        **{name: torch.float32 for name in MAPS},
        "proposals": torch.float32,
        "image_size": torch.float32,
        "boxes": torch.float32,
        "scores": torch.float32,
        "labels": torch.int64,
    }


def test_backend_without_detector_says_so(fake_trt_on_cpu, exported_model, tmp_path):
    from iounet.runtime.trt_backend import TensorRTBackend

    folder = linked_model(exported_model[1], tmp_path / "model")
    build_engines(folder, "fp32", (1, 64, 256), JOINT_SIZES)
    assert [b["file"] for b in fake_trt_on_cpu.builds] == [f"{r}.onnx" for r in GRAPH_ROLES]
    backend = TensorRTBackend(folder)
    assert not backend.has_detector and set(backend._engines) == set(GRAPH_ROLES)
    features = backend.features(torch.rand((1, 3, 96, 128)))
    with pytest.raises(ValueError, match="trt backend's model has no detector"):
        backend.proposals(features, (96, 128))
    with pytest.raises(ValueError, match="no detector"):
        backend.raw_detections(features, torch.zeros((1, 4)), (96, 128))


def test_detector_through_the_fake_matches_onnxruntime(fake_trt_on_cpu, joint_folder):
    from iounet.runtime.ort_backend import OnnxRuntimeBackend

    fake = fake_trt_on_cpu
    backend = _joint_backend(joint_folder)
    reference = OnnxRuntimeBackend(joint_folder)
    image = torch.rand((1, 3, 96, 128), generator=torch.Generator().manual_seed(3))
    features = backend.features(image)
    expected_maps = reference.features(image)
    for name, actual in zip(MAPS, features, strict=True):
        torch.testing.assert_close(actual, torch.from_numpy(expected_maps[name]))

    proposals = backend.proposals(features, (90, 120))
    expected = reference.proposals(expected_maps, (90, 120))
    assert proposals.dtype == torch.float32 and proposals.device.type == "cpu"
    assert 0 < len(proposals) <= 100 and proposals.shape == expected.shape
    torch.testing.assert_close(proposals, expected, rtol=0, atol=0)
    assert float(proposals[:, 2].max()) <= 120 and float(proposals[:, 3].max()) <= 90
    # The proposals' shape depends on the data: TensorRT sized them through the allocator.
    (rpn,) = _runs(fake, "rpn.onnx")
    assert rpn["allocated"] == ["proposals"]
    assert rpn["inputs"]["image_size"] == (2,) and rpn["inputs"]["p2"] == (1, 16, 24, 32)

    boxes, scores, labels = backend.raw_detections(features, proposals, (90, 120))
    ref_boxes, ref_scores, ref_labels = reference.raw_detections(expected_maps, expected, (90, 120))
    assert labels.dtype == torch.int64 and scores.dtype == torch.float32
    torch.testing.assert_close(boxes, ref_boxes, rtol=0, atol=0)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=0)
    assert torch.equal(labels, ref_labels)
    assert len(scores) == 100 and float(scores[0]) > DETECTOR.padding_score
    (box_head,) = _runs(fake, "box_head.onnx")
    assert box_head["allocated"] == []  # D follows from the input shapes: allocated beforehand
    assert box_head["inputs"]["proposals"] == tuple(proposals.shape)

    # Each call's proposals are new memory: the next call does not overwrite them.
    kept = proposals.clone()
    other = backend.proposals(features, (60, 70))
    assert torch.equal(proposals, kept)
    assert float(other[:, 2].max()) <= 70 and not torch.equal(other, kept)


def test_fp16_rpn_through_the_fake_matches_onnxruntime(fake_trt_on_cpu, joint_folder):
    """The fp16 engines take fp16 maps; the rpn's proposals stay float32. (ONNX Runtime's
    PrRoIPool takes no fp16 maps, so the fp16 box_head runs on a GPU only.)"""
    from iounet.plugins import onnxruntime_session

    backend = _joint_backend(joint_folder, "fp16")
    manifest = load_manifest(joint_folder)
    features = backend.features(torch.rand((1, 3, 64, 96)))
    assert all(f.dtype == torch.float16 for f in features)
    assert backend._engines["box_head"].dtypes["proposals"] == torch.float32
    maps = {name: f.numpy() for name, f in zip(MAPS, features, strict=True)}
    rpn = onnxruntime_session(manifest.graph_path("rpn", "fp16"))
    (expected,) = rpn.run(None, {**maps, "image_size": np.array([60.0, 90.0], np.float32)})
    proposals = backend.proposals(features, (60, 90))
    assert proposals.dtype == torch.float32 and len(proposals) > 0
    np.testing.assert_array_equal(proposals.numpy(), expected)


def test_no_proposals_give_no_detections_without_running_the_box_head(
    fake_trt_on_cpu, joint_folder
):
    backend = _joint_backend(joint_folder)
    features = backend.features(torch.rand((1, 3, 64, 64)))
    boxes, scores, labels = backend.raw_detections(features, torch.zeros((0, 4)), (64, 64))
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)
    assert labels.dtype == torch.int64 and boxes.device == backend.device
    assert _runs(fake_trt_on_cpu, "box_head.onnx") == []
    with pytest.raises(ValueError, match=r"proposals must have shape \(P, 4\)"):
        backend.raw_detections(features, torch.zeros((3, 5)), (64, 64))


def test_images_beyond_the_detector_profiles_are_refused(fake_trt_on_cpu, joint_folder):
    backend = _joint_backend(joint_folder)
    with pytest.raises(ValueError, match=r"image size 256x96 is outside the engine's profile"):
        backend.features(torch.rand((1, 3, 256, 96)))
    features = backend.features(torch.rand((1, 3, 64, 96)))
    with pytest.raises(
        ValueError,
        match=r"image size 230x90 is outside the engine's profile \(min 64x64, max 224x256.*"
        r"rebuild with --image-size",
    ):
        backend.proposals(features, (230, 90))
    with pytest.raises(ValueError, match=r"image size 60x300 is outside"):
        backend.raw_detections(features, torch.tensor([[1.0, 2.0, 30.0, 40.0]]), (60, 300))
    large = tuple(torch.zeros((1, 16, 2 * s, 2 * s)) for s in (64, 32, 16, 8))  # a 512x512 image
    with pytest.raises(ValueError, match=r"feature map p2 size 128x128 is outside .* max 56x64"):
        backend.proposals(large, (200, 200))
    proposals = torch.tensor([[1.0, 2.0, 30.0, 40.0]]).repeat(101, 1)
    with pytest.raises(ValueError, match=r"101 proposals exceed the box_head engine's profile"):
        backend.raw_detections(features, proposals, (64, 96))
    assert _runs(fake_trt_on_cpu, "rpn.onnx") == _runs(fake_trt_on_cpu, "box_head.onnx") == []


def test_the_pipeline_on_an_image_runs_the_detector_engines_first(fake_trt_on_cpu, joint_folder):
    """The pipeline's detections on the fake (test_detection_parity.py compares them with the
    PyTorch model's) come from the backbone, rpn and box_head engines, in that order."""
    from iounet.runtime.pipeline import Pipeline

    manifest = load_manifest(joint_folder)
    image = torch.rand((3, 96, 128), generator=torch.Generator().manual_seed(5))
    found = Pipeline.for_manifest(manifest, _joint_backend(joint_folder))(image)
    assert len(found.boxes) > 0
    assert [r["file"] for r in fake_trt_on_cpu.executions][:3] == [
        "backbone.onnx",
        "rpn.onnx",
        "box_head.onnx",
    ]


def test_output_allocator_sizes_data_dependent_outputs_even_empty(fake_trt_on_cpu, tmp_path):
    """An engine whose output size depends on the data (NonZero) gives a new tensor of the
    size the engine found, none of the rows when nothing is found."""
    import onnx
    from onnx import TensorProto, helper

    from iounet.runtime.trt_backend import _Engine

    graph = helper.make_graph(
        [helper.make_node("NonZero", ["x"], ["found"])],
        "nonzero",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("found", TensorProto.INT64, [1, "M"])],
    )
    path = tmp_path / "nonzero.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    trt = fake_trt_on_cpu
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network = builder.create_network(0)
    assert trt.OnnxParser(network, None).parse_from_file(str(path))
    profile = builder.create_optimization_profile()
    profile.set_shape("x", [1], [8], [16])
    config = builder.create_builder_config()
    config.add_optimization_profile(profile)
    data = builder.build_serialized_network(network, config)
    metadata = {"engines": {"nz": {"profile": {"x": {"min": [1], "opt": [8], "max": [16]}}}}}
    nonzero = _Engine(trt, trt.Runtime(None).deserialize_cuda_engine(data), "nz", metadata)

    first = nonzero.run({"x": torch.tensor([0.0, 2.0, 0.0, 5.0, 1.0])})["found"]
    assert first.dtype == torch.int64 and first.tolist() == [[1, 3, 4]]
    none = nonzero.run({"x": torch.zeros(4)})["found"]
    assert none.shape == (1, 0) and none.dtype == torch.int64
    assert first.tolist() == [[1, 3, 4]]  # not overwritten
    assert [r["allocated"] for r in trt.executions] == [["found"], ["found"]]
    with pytest.raises(ValueError, match=r"17 boxes|x of shape \(17,\) is outside"):
        nonzero.run({"x": torch.zeros(17)})


# --- TensorRT on a GPU -------------------------------------------------------------------------


GPU_BOXES = (1, 64, 256)
GPU_SIZES = ((64, 64), (96, 128), (160, 192))


@pytest.fixture(scope="module")
def trt_model(tmp_path_factory):
    """An exported tiny IoU-Net with fp32 and fp16 engines."""
    reason = tensorrt_missing()
    if reason:
        pytest.skip(reason)
    from iounet.export.onnx_export import export_model

    root = tmp_path_factory.mktemp("trt")
    checkpoint = write_tiny_checkpoint(root / "last.pt")
    folder = root / "model"
    export_model(checkpoint, folder, fp16=True)
    for precision in ("fp32", "fp16"):
        build_engines(folder, precision, GPU_BOXES, GPU_SIZES)
    return folder


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    image = torch.rand((1, 3, 96, 128), generator=generator)
    corners = torch.rand((40, 2), generator=generator) * torch.tensor([100.0, 70.0])
    sizes = 8 + torch.rand((40, 2), generator=generator) * torch.tensor([90.0, 60.0])
    boxes = torch.cat([corners, corners + sizes], 1)
    rois = torch.cat([torch.zeros((40, 1)), boxes], 1)
    labels = torch.randint(0, len(CLASSES), (40,), generator=generator)
    return image, rois, labels


def _onnxruntime(model: Path, image, rois, labels) -> dict[str, np.ndarray]:
    from iounet.plugins import onnxruntime_session

    manifest = load_manifest(model)
    session = {role: onnxruntime_session(manifest.graph_path(role)) for role in GRAPH_ROLES}
    maps = session["backbone"].run(None, {"image": image.numpy()})
    boxes = {"rois": rois.numpy(), "labels": labels.numpy()}
    box_inputs = {**dict(zip(MAPS, maps, strict=True)), **boxes}
    (iou,) = session["head"].run(None, box_inputs)
    iou_t, grad = session["iou_grad"].run(None, box_inputs)
    return {**dict(zip(MAPS, maps, strict=True)), "iou": iou, "iou_t": iou_t, "grad": grad}


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize(
    ("precision", "map_tol", "iou_tol", "grad_tol"),
    [("fp32", 1e-4, 1e-4, 1e-3), ("fp16", 5e-2, 2e-2, 5e-2)],
)
def test_tensorrt_backend_matches_onnxruntime(trt_model, precision, map_tol, iou_tol, grad_tol):
    from iounet.runtime.trt_backend import TensorRTBackend

    image, rois, labels = _inputs()
    expected = _onnxruntime(trt_model, image, rois, labels)
    backend = TensorRTBackend(trt_model, precision)
    assert backend.name == "trt" and backend.device.type == "cuda"
    features = backend.features(image.cuda())
    for name, actual in zip(MAPS, features, strict=True):
        reference = torch.from_numpy(expected[name])
        assert actual.is_cuda and actual.shape == reference.shape
        scale = reference.abs().max()
        assert (actual.float().cpu() - reference).abs().max() <= map_tol * scale
    # The head on the same maps as ONNX Runtime: only the head's own error.
    maps = tuple(torch.from_numpy(expected[name]).cuda() for name in MAPS)
    iou = backend.iou(maps, rois.cuda(), labels.cuda())
    assert (iou.cpu() - torch.from_numpy(expected["iou"])).abs().max() <= iou_tol
    iou_t, grad = backend.iou_and_grad(maps, rois.cuda(), labels.cuda())
    assert (iou_t.cpu() - torch.from_numpy(expected["iou_t"])).abs().max() <= iou_tol
    reference = torch.from_numpy(expected["grad"])
    assert (grad.cpu() - reference).norm() <= grad_tol * reference.norm()
    assert reference.abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_fused_refinement_equals_the_default(trt_model, precision):
    from iounet.runtime.trt_backend import TensorRTBackend

    image, rois, labels = _inputs()
    backend = TensorRTBackend(trt_model, precision)
    features = backend.features(image.cuda())
    params = RefineParams(step=0.5, iterations=5)
    boxes, iou = backend.refine(features, rois[:, 1:], labels, (96, 128), params)
    stepped = backend.refined(features, rois[:, 1:], labels, (96, 128), params, fused=False)
    torch.testing.assert_close(boxes, stepped.boxes, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(iou, stepped.iou, rtol=1e-4, atol=1e-4)
    assert (boxes.cpu() - rois[:, 1:]).abs().max() > 0  # the boxes moved


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_backend_refuses_shapes_outside_the_profiles(trt_model):
    from iounet.runtime.trt_backend import TensorRTBackend

    backend = TensorRTBackend(trt_model)
    with pytest.raises(ValueError, match="image size 200x128 is outside"):
        backend.features(torch.rand((1, 3, 200, 128), device="cuda"))
    features = backend.features(torch.rand((1, 3, 96, 128), device="cuda"))
    rois = torch.tensor([[0.0, 4.0, 4.0, 40.0, 40.0]], device="cuda").repeat(300, 1)
    with pytest.raises(ValueError, match=r"300 boxes exceed the engine's profile \(max 256\)"):
        backend.iou(features, rois, torch.zeros(300, dtype=torch.int64, device="cuda"))
    assert math.isfinite(float(backend.iou(features, rois[:1], torch.zeros(1).long())[0]))


def test_tensorrt_backend_module_imports_without_tensorrt(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    from iounet.runtime.trt_backend import TensorRTBackend

    with pytest.raises(ImportError, match=r"pip install -e \.\[gpu\]"):
        TensorRTBackend(fake_model(tmp_path / "model"))


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_bench_prints_torch_ort_and_trt_side_by_side(trt_model, capsys):
    from iounet.cli import main

    report = trt_model.parent / "bench.json"
    arguments = [
        "bench", "--model", str(trt_model), "--backends", "torch,ort,trt", "--checkpoint",
        str(trt_model.parent / "last.pt"), "--image-size", "96x128", "--detections", "1000",
        "--json", str(report),
    ]  # fmt: skip
    assert main(arguments) == 0
    with capsys.disabled():
        print(capsys.readouterr().out)
    results = json.loads(report.read_text())
    assert set(results) == {"torch", "ort", "trt"}
    assert all(0 < results[name]["refine"]["p50_ms"] for name in results)


@pytest.fixture(scope="module")
def trt_joint_model(exported_joint_model, tmp_path_factory):
    """The tiny joint IoU-Net (its folder linked) with fp32 and fp16 engines, detector included."""
    reason = tensorrt_missing()
    if reason:
        pytest.skip(reason)
    folder = linked_model(exported_joint_model[1], tmp_path_factory.mktemp("trt_joint") / "model")
    for precision in ("fp32", "fp16"):
        build_engines(folder, precision, GPU_BOXES, GPU_SIZES)
    return folder


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize(("precision", "tol", "share"), [("fp32", 1e-2, 1.0), ("fp16", 1.0, 0.9)])
def test_tensorrt_detector_matches_onnxruntime(trt_joint_model, precision, tol, share):
    """The rpn and box_head engines on ONNX Runtime's fp32 maps against ONNX Runtime: the same
    proposals (fp16: most of them, NMS may break near ties otherwise), and the same raw
    detections of the same proposals."""
    from iounet.runtime.ort_backend import OnnxRuntimeBackend
    from iounet.runtime.trt_backend import TensorRTBackend

    reference = OnnxRuntimeBackend(trt_joint_model)
    backend = TensorRTBackend(trt_joint_model, precision)
    assert backend.has_detector
    image = torch.rand((1, 3, 96, 128), generator=torch.Generator().manual_seed(2))
    maps = reference.features(image)
    features = tuple(torch.from_numpy(maps[name]).cuda() for name in MAPS)
    proposals = backend.proposals(features, (90, 120))
    expected = reference.proposals(maps, (90, 120))
    assert proposals.is_cuda and proposals.dtype == torch.float32 and len(expected) > 0
    assert abs(len(proposals) - len(expected)) <= (0 if precision == "fp32" else 5)
    assert matched_share(proposals.cpu(), expected, tol) >= share
    if precision == "fp32":
        torch.testing.assert_close(proposals.cpu(), expected, rtol=1e-4, atol=1e-2)

    boxes, scores, labels = backend.raw_detections(features, expected.cuda(), (90, 120))
    ref_boxes, ref_scores, ref_labels = reference.raw_detections(maps, expected, (90, 120))
    assert boxes.is_cuda and labels.dtype == torch.int64 and boxes.shape == ref_boxes.shape
    real = ref_scores > DETECTOR.padding_score
    assert int((scores > DETECTOR.padding_score).sum()) == pytest.approx(int(real.sum()), abs=2)
    score_tol = 1e-4 if precision == "fp32" else 2e-2
    sorted_scores = torch.sort(scores.cpu(), descending=True).values
    torch.testing.assert_close(sorted_scores[real], ref_scores[real], rtol=0, atol=score_tol)
    assert matched_share(boxes.cpu()[real], ref_boxes[real], tol) >= share
    if precision == "fp32":
        assert torch.equal(labels.cpu(), ref_labels)
    empty = backend.raw_detections(features, torch.zeros((0, 4), device="cuda"), (90, 120))
    assert [tuple(t.shape) for t in empty] == [(0, 4), (0,), (0,)]


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_detector_refuses_images_beyond_the_profile(trt_joint_model):
    from iounet.runtime.trt_backend import TensorRTBackend

    backend = TensorRTBackend(trt_joint_model)
    features = backend.features(torch.rand((1, 3, 96, 128), device="cuda"))
    with pytest.raises(ValueError, match=r"image size 200x100 is outside the engine's profile"):
        backend.proposals(features, (200, 100))
