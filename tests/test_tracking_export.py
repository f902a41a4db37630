"""Tracking export (pytracking checkpoint -> graphs + manifest) and ``TrackerRefiner`` against the
PyTorch module with autograd and a literal re-implementation of pytracking's refinement."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from pytracking_oracle import optimize_boxes, optimize_boxes_relative
from tiny_tracking import TINY_TRACKING, pytracking_state, random_tracking_net
from tiny_tracking import write_pytracking_checkpoint as write_checkpoint

from iounet.cli import main
from iounet.export.manifest import ManifestError, sha256_file
from iounet.export.tracking_export import export_tracking_model
from iounet.export.tracking_manifest import TRACKING_ROLES, load_tracking_manifest
from iounet.export.tracking_refine import TrackingRefineParams
from iounet.plugins import native
from iounet.runtime import TrackerRefiner

BOX = torch.tensor([100.0, 90.0, 60.0, 80.0])
BACKENDS = [
    "ort",
    "torch",
    pytest.param(
        "torch-native",
        marks=pytest.mark.skipif(not native.available(), reason="native library not built"),
    ),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, checkpoint, folder): a tiny random pytracking net exported by `iounet export`."""
    root = tmp_path_factory.mktemp("tracking")
    model = random_tracking_net(seed=11)
    checkpoint = write_checkpoint(root / "ATOMnet_ep0050.pth.tar", model)
    assert main(["export", str(checkpoint), "--out", str(root / "model")]) == 0
    return model, checkpoint, root / "model"


@pytest.fixture(scope="module")
def frames(exported):
    """Reference and test layers of two random crops (288 px: maps 36x36 and 18x18), the
    PyTorch module's modulation and IoU features, and 10 proposals around the target."""
    model, _, _ = exported
    generator = torch.Generator().manual_seed(12)
    crops = torch.rand((2, 1, 3, 288, 288), generator=generator)
    net = model.bb_regressor
    with torch.no_grad():
        reference, test = (model.feature_extractor(c) for c in crops)
        modulation = net.get_modulation(reference, BOX[None])
        feat = net.get_iou_feat(test)
    noise = torch.randn((10, 4), generator=generator) * torch.tensor([8.0, 8.0, 6.0, 6.0])
    proposals = BOX + noise
    return crops, reference, test, modulation, feat, proposals


@pytest.fixture(scope="module")
def refiners(exported, frames):
    _, checkpoint, folder = exported
    _, reference, _, _, _, _ = frames
    opened = {}
    for name in ("ort", "torch", "torch-native"):
        if name == "torch-native" and not native.available():
            continue
        refiner = TrackerRefiner.from_model(folder, name, checkpoint=checkpoint)
        refiner.initialize(reference, BOX)
        opened[name] = refiner
    return opened


def test_manifest_describes_the_checked_graphs(exported):
    _, checkpoint, folder = exported
    manifest = load_tracking_manifest(folder)
    assert manifest.backbone == "resnet18" and manifest.input_dim == (128, 256)
    assert (manifest.pred_input_dim, manifest.pred_inter_dim) == ((16, 24), (8, 12))
    assert [(m.name, m.stride) for m in manifest.maps] == [("layer2", 8), ("layer3", 16)]
    assert manifest.refinement == TrackingRefineParams(5, (1.0, 1.0), 1.0, "atom")
    assert manifest.checkpoint.sha256 == sha256_file(checkpoint)
    assert manifest.checkpoint.epoch == 50
    assert json.loads((folder / "manifest.json").read_text())["format"] == "iounet-tracking-model"
    custom = {"backbone": 0, "modulation": 2, "iou_feat": 0, "predict_iou": 2, "iou_grad": 4,
              "refine_step_atom": 4, "refine_step_relative": 4}  # fmt: skip
    for role in TRACKING_ROLES:
        graph = onnx.load(str(manifest.graph_path(role)))
        onnx.checker.check_model(graph, full_check=True)
        nodes = [n.op_type for n in _nodes(graph) if n.domain == "iounet"]
        assert len(nodes) == custom[role], (role, nodes)
    proposals = next(i for i in manifest.graphs["predict_iou"].inputs if i.name == "proposals")
    assert proposals.shape == ("K", 4)


def _nodes(graph: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes of the graph and of its local functions."""
    return [*graph.graph.node, *(n for f in graph.functions for n in f.node)]


def test_changed_graph_or_manifest_is_refused(exported, tmp_path):
    _, _, folder = exported
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    with open(copy / "iou_grad.onnx", "ab") as file:
        file.write(b"\0")
    with pytest.raises(ManifestError, match="sha256"):
        load_tracking_manifest(copy)
    data = json.loads((folder / "manifest.json").read_text())
    data["backbone"] = "resnet34"
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="backbone must be one of"):
        load_tracking_manifest(copy)


def test_backbone_parity(refiners, frames):
    crops, reference, _, _, _, _ = frames
    for name, refiner in refiners.items():
        for actual, expected in zip(refiner.backbone(crops[0]), reference, strict=True):
            assert actual.shape == expected.shape
            assert (actual - expected).abs().max() <= 1e-4 * expected.abs().max(), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_iou_and_gradient_match_autograd(refiners, frames, backend):
    _, _, test, modulation, feat, proposals = frames
    refiner = refiners[backend]
    boxes = proposals[None].clone().requires_grad_()
    expected = _module(refiners).predict_iou(modulation, feat, boxes)
    (expected_grad,) = torch.autograd.grad(expected.sum(), boxes)
    iou = refiner.predict_iou(test, proposals)
    assert (iou - expected[0].detach()).abs().max() <= 1e-5
    engine_iou, grad = refiner.backend.iou_and_grad(
        refiner._target(), refiner.iou_features(test).value, proposals
    )
    assert (engine_iou - expected[0].detach()).abs().max() <= 1e-5
    assert (grad - expected_grad[0]).norm() <= 1e-4 * expected_grad.norm()
    assert expected_grad.abs().max() > 1e-3


def _module(refiners):
    """The PyTorch AtomIoUNet the torch refiner loaded from the checkpoint (the oracle's net)."""
    return refiners["torch"].backend.model.bb_regressor


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("parametrization", "oracle", "step_length", "decay"),
    [
        ("atom", optimize_boxes, 1.0, 1.0),
        ("atom", optimize_boxes, (2.0, 1.0), 0.8),
        ("relative", optimize_boxes_relative, (0.5, 0.8), 0.9),
    ],
)
def test_refine_matches_pytracking(
    refiners, frames, backend, parametrization, oracle, step_length, decay
):
    _, _, test, modulation, feat, proposals = frames
    expected_boxes, expected_iou = oracle(
        _module(refiners), modulation, feat, proposals.clone(), 5, step_length, decay
    )
    boxes, iou = refiners[backend].refine(
        test, proposals, iterations=5, step_length=step_length, step_decay=decay,
        parametrization=parametrization,
    )  # fmt: skip
    assert (expected_boxes - proposals).abs().max() > 1.0  # the boxes do move
    assert (boxes - expected_boxes).abs().max() <= 1e-3
    assert (iou - expected_iou).abs().max() <= 1e-5


def test_refine_defaults_come_from_the_manifest(refiners, frames):
    _, _, test, modulation, feat, proposals = frames
    expected = optimize_boxes(_module(refiners), modulation, feat, proposals.clone(), 5, 1.0, 1.0)
    boxes, iou = refiners["ort"].refine(test, proposals)
    assert (boxes - expected[0]).abs().max() <= 1e-3
    boxes, iou = refiners["ort"].refine(refiners["ort"].iou_features(test), proposals, iterations=0)
    torch.testing.assert_close(boxes, proposals)
    torch.testing.assert_close(iou, refiners["ort"].predict_iou(test, proposals))


def test_bad_input_is_refused(refiners, frames, exported, tmp_path):
    _, reference, test, _, _, proposals = frames
    refiner = refiners["ort"]
    nan = proposals.clone()
    nan[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"finite: rows \[3\]"):
        refiner.refine(test, nan)
    flat = proposals.clone()
    flat[2, 2] = 0.0
    with pytest.raises(ValueError, match=r"positive width and height: rows \[2\]"):
        refiner.predict_iou(test, flat)
    with pytest.raises(ValueError, match="outside the 288x288 crop"):
        refiner.initialize(reference, [300.0, 10.0, 20.0, 20.0])
    with pytest.raises(ValueError, match="positive width"):
        refiner.initialize(reference, [10.0, 10.0, -5.0, 20.0])
    with pytest.raises(ValueError, match=r"layer2 must have shape \(1, 128, H, W\)"):
        refiner.predict_iou((test[1], test[1]), proposals)
    assert refiner.predict_iou(test, torch.zeros(0, 4)).shape == (0,)
    folder = exported[2]
    fresh = TrackerRefiner.from_model(folder)
    with pytest.raises(RuntimeError, match="initialize"):
        fresh.predict_iou(test, proposals)
    other = write_checkpoint(tmp_path / "other.pth.tar", random_tracking_net(seed=3))
    with pytest.raises(ValueError, match="sha256 differs"):
        TrackerRefiner.from_model(folder, "torch", checkpoint=other)
    with pytest.raises(ValueError, match="unknown backend"):
        TrackerRefiner.from_model(folder, "tensorrt")


def test_box_partly_outside_the_crop_is_used(refiners, frames):
    _, reference, test, _, _, proposals = frames
    model_net = _module(refiners)
    box = torch.tensor([-30.0, 250.0, 60.0, 80.0])
    with torch.no_grad():
        modulation = model_net.get_modulation(reference, box[None])
        expected = model_net.predict_iou(modulation, model_net.get_iou_feat(test), proposals[None])
    refiner = TrackerRefiner(refiners["ort"].backend, refiners["ort"].manifest)
    refiner.initialize(reference, box)
    assert (refiner.predict_iou(test, proposals) - expected[0]).abs().max() <= 1e-5


def test_export_refuses_checkpoints_without_an_iou_net(tmp_path):
    state = pytracking_state(random_tracking_net())
    no_regressor = {k: v for k, v in state.items() if not k.startswith("bb_regressor.")}
    path = tmp_path / "classifier_only.pth.tar"
    torch.save({"net": no_regressor}, path)
    with pytest.raises(ValueError, match="no bb_regressor"):
        export_tracking_model(path, tmp_path / "out")
    assert main(["export", str(path), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    assert TINY_TRACKING.backbone == "resnet18"


def test_refinement_settings_are_checked():
    with pytest.raises(ValueError, match="parametrization"):
        TrackingRefineParams(parametrization="corners")
    with pytest.raises(ValueError, match="iterations"):
        TrackingRefineParams(iterations=-1)
    assert np.isclose(TrackingRefineParams().step_length[0], 1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_torch_cuda_refine_matches_pytracking(exported, frames, refiners):
    _, checkpoint, folder = exported
    _, reference, test, modulation, feat, proposals = frames
    refiner = TrackerRefiner.from_model(folder, "torch-cuda", checkpoint=checkpoint)
    refiner.initialize(tuple(t.cuda() for t in reference), BOX)
    for parametrization, oracle in (
        ("atom", optimize_boxes),
        ("relative", optimize_boxes_relative),
    ):
        expected = oracle(_module(refiners), modulation, feat, proposals.clone(), 5, 0.5, 0.9)
        boxes, iou = refiner.refine(
            tuple(t.cuda() for t in test), proposals, iterations=5, step_length=0.5,
            step_decay=0.9, parametrization=parametrization,
        )  # fmt: skip
        assert (boxes.cpu() - expected[0]).abs().max() <= 1e-3
        assert (iou.cpu() - expected[1]).abs().max() <= 1e-5


def test_export_keeps_the_overwrite_rule(exported, tmp_path, capsys):
    _, checkpoint, folder = exported
    assert main(["export", str(checkpoint), "--out", str(folder)]) == 2
    assert "pass --force" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["export", str(checkpoint), "--out", str(mine), "--force"]) == 2
    assert "not a model folder written by iounet" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep"
    load_tracking_manifest(folder)  # untouched
