"""TensorRT engines of a tracking model: `iounet build-engine` on a tracking folder (with the fake
TensorRT of ``fake_tensorrt``), the metadata checks, the ``trt`` engine's profile limits, and on a
GPU with TensorRT ``TrackerRefiner`` on ``trt`` against ``ort``."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import tensorrt_missing

from iounet import cli
from iounet.export.engine import (
    build_engines,
    check_engine_metadata,
    engine_profiles,
    load_engine_metadata,
)
from iounet.export.manifest_format import FeatureMap, GraphEntry, PixelSpec, TensorSpec, sha256_file
from iounet.export.tracking_manifest import (
    TRACKING_ROLES,
    SourceCheckpoint,
    TrackingManifest,
    load_tracking_manifest,
)
from iounet.export.tracking_refine import TrackingRefineParams
from iounet.runtime import TrackerRefiner

MOD = {"modulation3": [1, 16], "modulation4": [1, 24]}
LAYERS = {"layer2": [1, 128, "H_layer2", "W_layer2"], "layer3": [1, 256, "H_layer3", "W_layer3"]}
FEATS = {"feat3": [1, 16, "H_feat3", "W_feat3"], "feat4": [1, 24, "H_feat4", "W_feat4"]}
#: The inputs of the seven graphs as the tracking export writes them (tiny ResNet-18 net).
GRAPH_INPUTS = {
    "backbone": {"image": [1, 3, "H", "W"]},
    "modulation": {**LAYERS, "box": [1, 4]},
    "iou_feat": LAYERS,
    "predict_iou": {**MOD, **FEATS, "proposals": ["K", 4]},
    "iou_grad": {**MOD, **FEATS, "proposals": ["K", 4]},
    "refine_step_atom": {**MOD, **FEATS, "boxes": ["K", 4], "step": [4]},
    "refine_step_relative": {**MOD, **FEATS, "rel": ["K", 4], "sz_norm": [2], "step": [4]},
}
BOXES = (1, 10, 64)
SIZES = ((32, 48), (288, 288), (320, 352))


def fake_tracking_model(folder: Path) -> Path:
    """A tracking model folder whose graph files are JSON lists of inputs (the fake parser's)."""
    folder.mkdir(parents=True)
    graphs = {}
    for role, inputs in GRAPH_INPUTS.items():
        file = folder / f"{role}.onnx"
        network = [
            {"name": n, "shape": [d if isinstance(d, int) else -1 for d in s]}
            for n, s in inputs.items()
        ]
        file.write_text(json.dumps(network))
        specs = tuple(TensorSpec(n, "float32", tuple(s)) for n, s in inputs.items())
        graphs[role] = GraphEntry(file.name, sha256_file(file), specs, ())
    TrackingManifest(
        folder=folder,
        backbone="resnet18",
        input_dim=(128, 256),
        pred_input_dim=(16, 24),
        pred_inter_dim=(8, 12),
        maps=(FeatureMap("layer2", 8), FeatureMap("layer3", 16)),
        input=PixelSpec(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        refinement=TrackingRefineParams(),
        checkpoint=SourceCheckpoint("ATOMnet.pth.tar", "0" * 64),
        graphs=graphs,
        opset=20,
        custom_opsets={"iounet": 1},
    ).save(folder)
    return folder


def test_profiles_of_every_tracking_graph(tmp_path):
    manifest = load_tracking_manifest(fake_tracking_model(tmp_path / "model"))
    profiles = {role: engine_profiles(manifest, role, BOXES, SIZES) for role in TRACKING_ROLES}
    assert {role: set(p) for role, p in profiles.items()} == {
        role: set(inputs) for role, inputs in GRAPH_INPUTS.items()
    }
    assert profiles["backbone"]["image"] == ([1, 3, 32, 48], [1, 3, 288, 288], [1, 3, 320, 352])
    layer2 = ([1, 128, 4, 6], [1, 128, 36, 36], [1, 128, 40, 44])  # stride 8
    layer3 = ([1, 256, 2, 3], [1, 256, 18, 18], [1, 256, 20, 22])  # stride 16
    for role in ("modulation", "iou_feat"):
        assert profiles[role]["layer2"] == layer2 and profiles[role]["layer3"] == layer3
    assert profiles["modulation"]["box"] == ([1, 4], [1, 4], [1, 4])
    for role in TRACKING_ROLES[3:]:
        profile = profiles[role]
        assert profile["modulation3"] == ([1, 16], [1, 16], [1, 16])
        assert profile["modulation4"] == ([1, 24], [1, 24], [1, 24])
        assert profile["feat3"] == ([1, 16, 4, 6], [1, 16, 36, 36], [1, 16, 40, 44])
        assert profile["feat4"] == ([1, 24, 2, 3], [1, 24, 18, 18], [1, 24, 20, 22])
    for role, name in [("predict_iou", "proposals"), ("iou_grad", "proposals"),
                       ("refine_step_atom", "boxes"), ("refine_step_relative", "rel")]:  # fmt: skip
        assert profiles[role][name] == ([1, 4], [10, 4], [64, 4])
    assert profiles["refine_step_relative"]["sz_norm"] == ([2], [2], [2])
    assert profiles["refine_step_atom"]["step"] == ([4], [4], [4])


def test_build_writes_an_engine_per_tracking_graph_and_metadata(fake_trt, tmp_path):
    model = fake_tracking_model(tmp_path / "model")
    folder = build_engines(model, "fp32", BOXES, SIZES)

    assert folder == model / "engines" / "fp32"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{role}.engine" for role in TRACKING_ROLES] + ["engines.json"]
    )
    assert [b["file"] for b in fake_trt.builds] == [f"{role}.onnx" for role in TRACKING_ROLES]
    assert all(len(b["profiles"]) == 1 for b in fake_trt.builds)
    # The profile is set for the inputs with dynamic dimensions only.
    built = dict(zip(TRACKING_ROLES, (b["profiles"][0] for b in fake_trt.builds), strict=True))
    assert set(built["modulation"]) == {"layer2", "layer3"}
    assert set(built["refine_step_relative"]) == {"feat3", "feat4", "rel"}
    assert built["iou_grad"]["proposals"] == ([1, 4], [10, 4], [64, 4])

    metadata = load_engine_metadata(folder, TRACKING_ROLES)
    assert metadata["versions"]["tensorrt"] == "10.99.1"
    assert metadata["versions"]["plugin_library"] == "0.1.0"
    assert metadata["boxes"] == [1, 10, 64]
    assert metadata["image_size"] == [[32, 48], [288, 288], [320, 352]]
    manifest = load_tracking_manifest(model)
    for role in TRACKING_ROLES:
        entry = metadata["engines"][role]
        assert entry["sha256"] == hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest()
        assert entry["onnx"] == {"file": f"{role}.onnx", "sha256": manifest.graphs[role].sha256}
        expected = engine_profiles(manifest, role, BOXES, SIZES)
        assert entry["profile"] == {
            name: dict(zip(("min", "opt", "max"), shapes, strict=True))
            for name, shapes in expected.items()
        }
    check_engine_metadata(
        metadata, tensorrt_version="10.99.1", plugin_version="0.1.0", manifest=manifest
    )
    with pytest.raises(ValueError, match="engines must hold exactly"):
        load_engine_metadata(folder)  # a detection model's engines were expected

    # Checked at load: another TensorRT, or a changed graph, is refused with the rebuild hint.
    other = r"TensorRT 10\.99\.1, this is TensorRT 11.*--boxes 1:10:64"
    with pytest.raises(ValueError, match=other):
        check_engine_metadata(
            metadata, tensorrt_version="11.0", plugin_version="0.1.0", manifest=manifest
        )
    (folder / "iou_grad.engine").write_bytes(b"changed")
    with pytest.raises(ValueError, match=r"iou_grad\.engine does not match its sha256"):
        check_engine_metadata(
            metadata, tensorrt_version="10.99.1", plugin_version="0.1.0", manifest=manifest
        )


def test_tracking_models_have_fp32_engines_only(fake_trt, tmp_path):
    with pytest.raises(ValueError, match="tracking models are exported in fp32 only"):
        build_engines(fake_tracking_model(tmp_path / "model"), "fp16", BOXES, SIZES)
    assert fake_trt.builds == []


def test_cli_builds_tracking_engines(fake_trt, tmp_path, capsys):
    model = fake_tracking_model(tmp_path / "model")
    argv = ["build-engine", str(model), "--boxes", "1:10:64", "--image-size", "288x288"]
    assert cli.main(argv) == 0
    assert str(model / "engines" / "fp32") in capsys.readouterr().out
    metadata = load_engine_metadata(model / "engines" / "fp32", TRACKING_ROLES)
    assert metadata["engines"]["predict_iou"]["profile"]["feat4"]["max"] == [1, 24, 18, 18]


@pytest.fixture
def trt_refiner(fake_trt, tmp_path, monkeypatch):
    """A TrackerRefiner on the fake engines (as if on a GPU: shapes are checked, nothing runs)."""
    model = fake_tracking_model(tmp_path / "model")
    build_engines(model, "fp32", BOXES, SIZES)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    refiner = TrackerRefiner.from_model(model, "trt")
    assert refiner.name == "trt" and refiner.backend.device == torch.device("cuda", 0)
    return refiner


def test_trt_engine_refuses_shapes_outside_the_profiles(trt_refiner):
    refiner, engine = trt_refiner, trt_refiner.backend
    with pytest.raises(ValueError, match=r"image size 400x288 is outside .* --image-size"):
        refiner.backbone(torch.rand(1, 3, 400, 288))
    big = (torch.zeros(1, 128, 50, 36), torch.zeros(1, 256, 18, 18))
    with pytest.raises(ValueError, match="feature map layer2 size 50x36 is outside"):
        refiner.initialize(big, torch.tensor([10.0, 10.0, 40.0, 40.0]))
    with pytest.raises(ValueError, match="feature map layer3 size 1x18 is outside"):
        refiner.iou_features((torch.zeros(1, 128, 36, 36), torch.zeros(1, 256, 1, 18)))
    modulation = {"modulation3": torch.zeros(1, 16), "modulation4": torch.zeros(1, 24)}
    features = {"feat3": torch.zeros(1, 16, 36, 36), "feat4": torch.zeros(1, 24, 18, 18)}
    proposals = torch.tensor([[10.0, 10.0, 40.0, 40.0]]).repeat(65, 1)
    with pytest.raises(ValueError, match=r"65 boxes exceed the engine's profile \(max 64\)"):
        engine.predict_iou(modulation, features, proposals)
    with pytest.raises(ValueError, match=r"65 boxes exceed"):
        engine.iou_and_grad(modulation, features, proposals)
    step = engine.step(modulation, features, "relative")
    with pytest.raises(ValueError, match=r"65 boxes exceed"):
        step(proposals, torch.ones(2), torch.ones(4))
    with pytest.raises(ValueError, match=r"sz_norm of shape \(3,\) is outside"):
        step(proposals[:2], torch.ones(3), torch.ones(4))
    wide = {**modulation, "modulation4": torch.zeros(1, 32)}
    with pytest.raises(ValueError, match=r"modulation4 of shape \(1, 32\) is outside"):
        engine.step(wide, features, "atom")(proposals[:2], torch.ones(2), torch.ones(4))


def test_trt_engine_without_tensorrt_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails
    model = fake_tracking_model(tmp_path / "model")
    with pytest.raises(ImportError, match=r"^TensorRT is not installed.*pip install -e \.\[gpu\]"):
        TrackerRefiner.from_model(model, "trt")


def test_trt_engine_without_engines_says_how_to_build(fake_trt, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(FileNotFoundError, match="iounet build-engine"):
        TrackerRefiner.from_model(fake_tracking_model(tmp_path / "model"), "trt")


# --- TensorRT on a GPU -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trt_tracking_model(tmp_path_factory):
    """A tiny random pytracking net, exported, with fp32 engines."""
    reason = tensorrt_missing()
    if reason:
        pytest.skip(reason)
    from tiny_tracking import random_tracking_net, write_pytracking_checkpoint

    from iounet.export.tracking_export import export_tracking_model

    root = tmp_path_factory.mktemp("trt-tracking")
    checkpoint = write_pytracking_checkpoint(root / "ATOMnet.pth.tar", random_tracking_net(seed=5))
    export_tracking_model(checkpoint, root / "model")
    build_engines(root / "model", "fp32", (1, 16, 64), ((64, 64), (288, 288), (320, 320)))
    return root / "model"


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_trt_refiner_matches_ort(trt_tracking_model):
    generator = torch.Generator().manual_seed(7)
    crops = torch.rand((2, 1, 3, 288, 288), generator=generator)
    box = torch.tensor([100.0, 90.0, 60.0, 80.0])
    proposals = box + torch.randn((10, 4), generator=generator) * torch.tensor([8, 8, 6, 6])
    ort = TrackerRefiner.from_model(trt_tracking_model)
    trt = TrackerRefiner.from_model(trt_tracking_model, "trt")
    layers = {}
    for name, refiner in (("ort", ort), ("trt", trt)):
        layers[name] = [refiner.backbone(crop) for crop in crops]
        refiner.initialize(layers[name][0], box)
    for actual, expected in zip(layers["trt"][1], layers["ort"][1], strict=True):
        assert actual.is_cuda
        assert (actual.cpu() - expected).abs().max() <= 1e-4 * expected.abs().max()
    test = layers["ort"][1]  # the same maps for both: the IoU-Net's own error only
    test_cuda = tuple(t.cuda() for t in test)
    expected = ort.predict_iou(test, proposals)
    assert (trt.predict_iou(test_cuda, proposals).cpu() - expected).abs().max() <= 1e-4
    for parametrization in ("atom", "relative"):
        settings = {"iterations": 5, "step_length": (1.0, 0.8), "step_decay": 0.9}
        boxes, iou = ort.refine(test, proposals, parametrization=parametrization, **settings)
        trt_boxes, trt_iou = trt.refine(
            test_cuda, proposals, parametrization=parametrization, **settings
        )
        assert trt_boxes.is_cuda and (boxes - proposals).abs().max() > 0.5  # the boxes move
        assert (trt_boxes.cpu() - boxes).abs().max() <= 1e-2
        assert (trt_iou.cpu() - iou).abs().max() <= 1e-4
    with pytest.raises(ValueError, match=r"65 boxes exceed the engine's profile \(max 64\)"):
        trt.predict_iou(test_cuda, proposals[:1].repeat(65, 1))
