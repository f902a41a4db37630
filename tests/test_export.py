"""Exported graphs in ONNX Runtime against the PyTorch model (autograd for the box gradient)."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch
from tiny_model import assert_gradient_matches_differences

from iounet.export.graphs import RefineStepGraph
from iounet.export.manifest import GRAPH_ROLES, ManifestError, TensorSpec, load_manifest
from iounet.export.onnx_export import export_model
from iounet.runtime.backend import RefineParams
from iounet.runtime.ort_backend import OnnxRuntimeBackend
from iounet.runtime.torch_backend import TorchBackend
from iounet.training.config import RECIPES
from iounet.training.model import fpn_levels

SIZES = [(64, 96), (128, 160), (224, 192)]


@pytest.fixture(scope="module")
def backends(exported_model):
    checkpoint, folder = exported_model
    return TorchBackend.from_checkpoint(checkpoint), OnnxRuntimeBackend(folder)


def _boxes(count: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes of 3 to 900 px (all four FPN levels), some partly outside the image; labels."""
    generator = torch.Generator().manual_seed(seed)
    side = torch.exp(torch.empty(count, 2).uniform_(np.log(3), np.log(900), generator=generator))
    centre = torch.rand((count, 2), generator=generator) * torch.tensor([width, height])
    boxes = torch.cat([centre - side / 2, centre + side / 2], dim=1)
    rois = torch.cat([torch.zeros((count, 1)), boxes], dim=1)
    return rois, torch.randint(0, 5, (count,), generator=generator)


def test_manifest_lists_checked_graphs_with_dynamic_shapes(exported_model):
    _, folder = exported_model
    manifest = load_manifest(folder)
    assert manifest.precisions() == ["fp32", "fp16"]
    assert manifest.class_names == ["ellipse", "rectangle", "triangle", "star", "ring"]
    assert manifest.category_ids == [1, 2, 3, 4, 5]
    assert manifest.strides == (4, 8, 16, 32)
    assert manifest.map_names == ("p2", "p3", "p4", "p5")
    assert manifest.opset == 20 and manifest.custom_opsets == {"iounet": 1}
    assert manifest.input.mean == pytest.approx([0.485, 0.456, 0.406])
    recipe = RECIPES["cpu-demo"].data
    assert (manifest.input.min_size, manifest.input.max_size) == (recipe.min_size, recipe.max_size)
    assert manifest.input.size_divisor == 32
    assert manifest.refinement == RefineParams()
    expected_nodes = {"backbone": 0, "head": 4, "iou_grad": 8, "refine_step": 8}
    for precision in ("fp32", "fp16"):
        for role in GRAPH_ROLES:
            entry = manifest.graph(role, precision)
            model = onnx.load(str(folder / entry.file))
            onnx.checker.check_model(model, full_check=True)
            custom = [n.op_type for n in model.graph.node if n.domain == "iounet"]
            assert len(custom) == expected_nodes[role], (role, custom)
            if role != "backbone":
                rois = next(i for i in entry.inputs if i.name == "rois")
                assert rois == TensorSpec("rois", "float32", ("K", 5))
                p2 = next(i for i in entry.inputs if i.name == "p2")
                assert p2.dtype == ("float32" if precision == "fp32" else "float16")
                assert all(isinstance(d, str) for d in p2.shape[2:])
    image = manifest.graph("backbone").inputs[0]
    assert image.name == "image" and all(isinstance(d, str) for d in image.shape[2:])
    assert [o.dtype for o in manifest.graph("iou_grad", "fp16").outputs] == ["float32"] * 2


@pytest.mark.parametrize("size", SIZES)
def test_backbone_parity(backends, size):
    torch_backend, ort_backend = backends
    image = torch.rand((1, 3, *size), generator=torch.Generator().manual_seed(size[0]))
    expected = torch_backend.features(image)
    actual = ort_backend.features(image)
    for name, reference in zip(("p2", "p3", "p4", "p5"), expected, strict=True):
        got = torch.from_numpy(actual[name])
        assert got.shape == reference.shape
        scale = float(reference.abs().max())
        assert float((got - reference).abs().max()) <= 1e-5 * max(scale, 1.0)


@pytest.mark.parametrize("count", [1, 7, 300])
@pytest.mark.parametrize("size", SIZES[:2])
def test_head_and_gradient_parity(backends, size, count):
    torch_backend, ort_backend = backends
    image = torch.rand((1, 3, *size), generator=torch.Generator().manual_seed(3))
    maps_t, maps_o = torch_backend.features(image), ort_backend.features(image)
    rois, labels = _boxes(count, *size, seed=count)
    if count == 300:  # every FPN level is exercised
        assert set(fpn_levels(rois[:, 1:], torch_backend.model.config).tolist()) == {0, 1, 2, 3}
    iou_t = torch_backend.iou(maps_t, rois, labels)
    iou_o = ort_backend.iou(maps_o, rois, labels)
    assert float((iou_o - iou_t).abs().max()) <= 1e-5
    smooth_t, grad_t = torch_backend.iou_and_grad(maps_t, rois, labels)
    smooth_o, grad_o = ort_backend.iou_and_grad(maps_o, rois, labels)
    assert float((smooth_o - smooth_t).abs().max()) <= 1e-5
    scale = grad_t.norm(dim=1).clamp_min(1e-3 * float(grad_t.norm(dim=1).max()))
    relative = (grad_o - grad_t).norm(dim=1) / scale
    assert float(relative.max()) <= 1e-4
    assert float(grad_t.abs().max()) > 0  # the comparison is not between zeros


def test_gradient_matches_finite_differences_of_the_exported_iou(backends):
    _, ort_backend = backends
    image = torch.rand((1, 3, 128, 160), generator=torch.Generator().manual_seed(5))
    maps = ort_backend.features(image)
    rois, labels = _boxes(12, 128, 160, seed=9)
    _, grad = ort_backend.iou_and_grad(maps, rois, labels)
    assert_gradient_matches_differences(ort_backend, maps, rois, labels, grad)


def test_fused_refinement_equals_refine_boxes(backends):
    torch_backend, ort_backend = backends
    image = torch.rand((1, 3, 128, 160), generator=torch.Generator().manual_seed(6))
    maps_t, maps_o = torch_backend.features(image), ort_backend.features(image)
    rois, labels = _boxes(40, 128, 160, seed=4)
    boxes = rois[:, 1:].clamp_min(0).minimum(torch.tensor([160.0, 128, 160, 128]))
    params = RefineParams(step=2.0, iterations=6)
    steps = []
    fused, fused_iou = ort_backend.refine(maps_o, boxes, labels, (128, 160), params, steps.append)
    stepped = ort_backend.refined(maps_o, boxes, labels, (128, 160), params, fused=False)
    torch.testing.assert_close(fused, stepped.boxes, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused_iou, stepped.iou, atol=1e-6, rtol=0)
    assert steps[0] == 0 and steps == list(range(len(steps)))
    reference, reference_iou = torch_backend.refine(maps_t, boxes, labels, (128, 160), params)
    torch.testing.assert_close(fused, reference, atol=1e-3, rtol=0)
    torch.testing.assert_close(fused_iou, reference_iou, atol=1e-5, rtol=0)
    assert float((fused - boxes).abs().max()) > 0.1  # the boxes did move


def test_refine_step_graph_is_one_iteration_of_algorithm_2(exported_model):
    checkpoint, _ = exported_model
    head = TorchBackend.from_checkpoint(checkpoint).model.head
    maps = [torch.randn(1, 16, 32 // s, 40 // s) for s in (1, 2, 4, 8)]
    rois, labels = _boxes(6, 128, 160, seed=2)
    iou = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    grad = torch.tensor([[1.0, 0, 0, 0]] * 6)
    active = torch.tensor([True, True, True, False, True, True])
    upper = torch.tensor([160.0, 128.0, 160.0, 128.0])
    settings = [torch.tensor([v]) for v in (0.5, 1e-3, -1e-2)]
    with torch.no_grad():
        new_rois, new_iou, new_grad, still = RefineStepGraph(head)(
            *maps, rois, labels, iou, grad, active, upper, *settings
        )
    boxes = rois[:, 1:]
    width = (boxes[:, 2] - boxes[:, 0]).clamp_min(0)
    moved = boxes.clone()
    moved[:, 0] = (boxes[:, 0] + 0.5 * width).clamp(0, 160)
    moved[:, 1:] = moved[:, 1:].clamp_min(0).minimum(upper[1:])
    expected = torch.where(active[:, None], moved, boxes)
    torch.testing.assert_close(new_rois[:, 1:], expected)
    change = new_iou - iou
    assert still.tolist() == (active & (change.abs() >= 1e-3) & (change >= -1e-2)).tolist()

    reference_iou, reference_grad = _autograd(head, maps, new_rois, labels)
    torch.testing.assert_close(new_iou, reference_iou)
    torch.testing.assert_close(new_grad, reference_grad)


def _autograd(head, maps, rois, labels):
    """IoU (t + 1) / 2 of the PyTorch head and its gradient w.r.t. the corners by autograd."""
    corners = rois[:, 1:].clone().requires_grad_()
    iou = (head(maps, torch.cat([rois[:, :1], corners], 1), labels) + 1) / 2
    (grad,) = torch.autograd.grad(iou.sum(), corners)
    return iou.detach(), grad


def test_empty_box_set_gives_empty_results(backends):
    _, ort_backend = backends
    maps = ort_backend.features(torch.rand(1, 3, 64, 64))
    empty = torch.zeros((0, 5))
    labels = torch.zeros(0, dtype=torch.int64)
    assert ort_backend.iou(maps, empty, labels).shape == (0,)
    iou, grad = ort_backend.iou_and_grad(maps, empty, labels)
    assert iou.shape == (0,) and grad.shape == (0, 4)


def test_existing_folder_is_refused_and_replaced_only_with_force(exported_model, tmp_path):
    checkpoint, _ = exported_model
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        export_model(checkpoint, target)
    with pytest.raises(FileExistsError, match="not a model folder written by iounet"):
        export_model(checkpoint, target, force=True)
    assert (target / "keep.txt").read_text() == "mine"
    (target / "keep.txt").unlink()
    export_model(checkpoint, target, force=True)  # an empty folder is filled
    (target / "stale.onnx").write_bytes(b"from an earlier export")
    manifest = export_model(checkpoint, target, force=True)  # our model folder is replaced
    assert not (target / "stale.onnx").exists() and manifest.precisions() == ["fp32"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging folder left
    assert oct(target.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def test_failed_export_leaves_nothing(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"broken\.pt"):
        export_model(broken, tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.pt"]


def test_annotation_categories_must_match_the_classes(exported_model, tmp_path):
    checkpoint, _ = exported_model
    names = ["ellipse", "rectangle", "triangle", "star", "ring"]
    good = tmp_path / "good.json"
    good.write_text(
        json.dumps({"categories": [{"id": 10 + i, "name": n} for i, n in enumerate(names)]})
    )
    manifest = export_model(checkpoint, tmp_path / "m", annotations=good)
    assert manifest.category_ids == [10, 11, 12, 13, 14]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"categories": [{"id": 1, "name": "cat"}]}))
    with pytest.raises(ValueError, match=r"bad\.json has classes"):
        export_model(checkpoint, tmp_path / "n", annotations=bad)


def test_corrupt_or_mismatched_model_folders_are_named(exported_model, tmp_path):
    import shutil

    _, folder = exported_model
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    graph = copy / "head.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"head\.onnx does not match its sha256"):
        load_manifest(copy)
    graph.unlink()
    with pytest.raises(ManifestError, match=r"head\.onnx, which is missing"):
        load_manifest(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ManifestError, match="format_version 99"):
        load_manifest(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ManifestError, match=r"manifest\.json missing"):
        load_manifest(copy)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_manifest(tmp_path / "nowhere")


def test_corrupt_graph_is_a_clear_error_in_onnx_runtime(tmp_path):
    from iounet.plugins import onnxruntime_session

    path = tmp_path / "graph.onnx"
    path.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ValueError, match=r"graph\.onnx is not a valid ONNX model"):
        onnxruntime_session(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_fp16_graphs_stay_close_to_fp32(exported_model):
    """The fp16 graphs' computation (float16 maps and layers, float32 boxes and outputs), run
    eagerly, against the float32 graphs: IoU within 1e-3, gradient within 1 % for the median box
    and pointing the same way (cosine >= 0.98) for every box."""
    import copy

    from iounet.export.graphs import IoUGradGraph

    checkpoint, _ = exported_model
    head = TorchBackend.from_checkpoint(checkpoint).model.head
    generator = torch.Generator().manual_seed(8)
    maps = [torch.randn((1, 16, 32 // s, 40 // s), generator=generator) for s in (1, 2, 4, 8)]
    rois, labels = _boxes(30, 128, 160, seed=11)
    with torch.no_grad():
        iou32, grad32 = IoUGradGraph(head)(*maps, rois, labels)
        half = IoUGradGraph(copy.deepcopy(head).half())
        iou16, grad16 = half(*[m.half() for m in maps], rois, labels)
    assert iou16.dtype == grad16.dtype == torch.float32
    assert float((iou16 - iou32).abs().max()) <= 1e-3
    relative = (grad16 - grad32).norm(dim=1) / grad32.norm(dim=1)
    assert float(relative.median()) <= 1e-2
    assert float(torch.nn.functional.cosine_similarity(grad16, grad32, dim=1).min()) >= 0.98
