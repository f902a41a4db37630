"""TensorRT engines: argument parsing, profiles, building (with a fake TensorRT), metadata checks,
and on a GPU with TensorRT the TensorRT backend against ONNX Runtime."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tensorrt_missing
from fake_tensorrt import FakeTensorRT, install_fake_tensorrt
from tiny_model import CLASSES, write_tiny_checkpoint

from iounet import cli
from iounet.export import engine
from iounet.export.engine import (
    build_engines,
    check_engine_metadata,
    check_within_profile,
    engine_profiles,
    load_engine_metadata,
    parse_image_size,
    parse_range,
)
from iounet.export.manifest import (
    DETECTOR_ROLES,
    GRAPH_ROLES,
    Category,
    CheckpointInfo,
    DetectorSpec,
    FeatureMap,
    GraphEntry,
    InputSpec,
    Manifest,
    TensorSpec,
    load_manifest,
    sha256_file,
)
from iounet.runtime.backend import RefineParams

CHANNELS = 8
MAPS = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
BOX_TENSORS = {"rois": ["K", 5], "labels": ["K"], "iou": ["K"], "grad": ["K", 4], "active": ["K"]}
SCALARS = {"step": [1], "early_stop": [1], "degrade_tolerance": [1]}
GRAPH_INPUTS = {
    "backbone": {"image": [1, 3, "H", "W"]},
    "head": {
        **{name: [1, CHANNELS, f"H{name[1]}", f"W{name[1]}"] for name in MAPS},
        "rois": ["K", 5],
        "labels": ["K"],
    },
}
GRAPH_INPUTS["iou_grad"] = GRAPH_INPUTS["head"]
GRAPH_INPUTS["refine_step"] = {**GRAPH_INPUTS["head"], **BOX_TENSORS, "upper": [4], **SCALARS}
#: The detector's graphs (a model exported from a joint IoU-Net).
DETECTOR_INPUTS = {
    "rpn": {**{name: GRAPH_INPUTS["head"][name] for name in MAPS}, "image_size": [2]},
    "box_head": {
        **{name: GRAPH_INPUTS["head"][name] for name in MAPS},
        "proposals": ["P", 4],
        "image_size": [2],
    },
}
DETECTOR = DetectorSpec(
    pre_nms_top_n=600,
    post_nms_top_n=300,
    rpn_nms_threshold=0.7,
    score_threshold=0.05,
    detections_per_image=100,
    nms_threshold=0.5,
    padding_score=-1.0,
)
ALL_ROLES = GRAPH_ROLES + DETECTOR_ROLES
BOXES = (1, 100, 1000)
SIZES = ((33, 65), (100, 200), (257, 513))


def fake_model(
    folder: Path, precisions: tuple[str, ...] = ("fp32",), detector: bool = False
) -> Path:
    """A model folder whose graph files are JSON lists of inputs (what the fake parser reads);
    with `detector`, the rpn and box_head graphs too (a joint IoU-Net's folder)."""
    folder.mkdir(parents=True)
    graphs = {}
    roles = {**GRAPH_INPUTS, **(DETECTOR_INPUTS if detector else {})}
    for precision in precisions:
        graphs[precision] = {}
        for role, inputs in roles.items():
            file = f"{role}.onnx" if precision == "fp32" else f"{role}.{precision}.onnx"
            network = [
                {"name": n, "shape": [d if isinstance(d, int) else -1 for d in s]}
                for n, s in inputs.items()
            ]
            (folder / file).write_text(json.dumps(network))
            graphs[precision][role] = GraphEntry(
                file,
                sha256_file(folder / file),
                tuple(TensorSpec(n, "float32", tuple(s)) for n, s in inputs.items()),
                (),
            )
    Manifest(
        folder=folder,
        categories=(Category(1, "thing"),),
        maps=tuple(FeatureMap(name, stride) for name, stride in MAPS.items()),
        fpn_channels=CHANNELS,
        pool_size=7,
        input=InputSpec(64, 64, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        refinement=RefineParams(),
        checkpoint=CheckpointInfo("last.pt", "0" * 64, 1),
        graphs=graphs,
        opset=20,
        custom_opsets={"iounet": 1},
        detector=DETECTOR if detector else None,
    ).save(folder)
    return folder


@pytest.fixture
def fake_trt(monkeypatch):
    return install_fake_tensorrt(monkeypatch)


@pytest.fixture
def built(fake_trt, tmp_path):
    """A fake model folder with fp32 engines from the fake TensorRT."""
    model = fake_model(tmp_path / "model")
    build_engines(model, "fp32", BOXES, SIZES)
    return model


# --- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7", (7, 7, 7)),
        ("1:100:1000", (1, 100, 1000)),
        ("5:5:9", (5, 5, 9)),
        (" 2:3:4 ", (2, 3, 4)),
    ],
)
def test_parse_range_accepts(text, expected):
    assert parse_range(text, "--boxes") == expected


@pytest.mark.parametrize(
    "text", ["", "0", "-1", "1.5", "a", "1:2", "1:2:3:4", "3:2:1", "1:5:4", "0:1:2", "1::3"]
)
def test_parse_range_rejects_naming_the_argument(text):
    with pytest.raises(ValueError, match=r"^--boxes"):
        parse_range(text, "--boxes")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("480x640", ((480, 640), (480, 640), (480, 640))),
        ("320x320:640X480:800x1333", ((320, 320), (640, 480), (800, 1333))),
    ],
)
def test_parse_image_size_accepts(text, expected):
    assert parse_image_size(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("640", "HxW"),
        ("axb", "HxW"),
        ("10x10:20x20", "HxW"),
        ("0x10", "positive"),
        ("10x10:5x20:30x30", "heights"),
        ("10x10:20x5:30x30", "widths"),
        ("10x10:20x20:30x30:40x40", "HxW"),
    ],
)
def test_parse_image_size_rejects(text, problem):
    with pytest.raises(ValueError, match=f"--image-size.*{problem}"):
        parse_image_size(text)


# --- profiles ----------------------------------------------------------------------------------


def test_profiles_follow_the_image_size_and_box_ranges(tmp_path):
    manifest = load_manifest(fake_model(tmp_path / "model"))
    assert engine_profiles(manifest, "backbone", BOXES, SIZES) == {
        "image": ([1, 3, 33, 65], [1, 3, 100, 200], [1, 3, 257, 513])
    }
    head = engine_profiles(manifest, "head", BOXES, SIZES)
    assert head["p2"] == ([1, 8, 9, 17], [1, 8, 25, 50], [1, 8, 65, 129])
    assert head["p3"] == ([1, 8, 5, 9], [1, 8, 13, 25], [1, 8, 33, 65])
    assert head["p5"] == ([1, 8, 2, 3], [1, 8, 4, 7], [1, 8, 9, 17])
    assert head["rois"] == ([1, 5], [100, 5], [1000, 5])
    assert head["labels"] == ([1], [100], [1000])
    step = engine_profiles(manifest, "refine_step", (3, 3, 3), SIZES)
    assert set(step) == set(GRAPH_INPUTS["refine_step"])
    assert step["grad"] == ([3, 4], [3, 4], [3, 4])
    assert step["active"] == ([3], [3], [3])
    assert step["upper"] == ([4], [4], [4])
    assert step["degrade_tolerance"] == ([1], [1], [1])
    assert engine_profiles(manifest, "iou_grad", BOXES, SIZES) == head


def test_profiles_refuse_unknown_dynamic_dimensions(tmp_path):
    manifest = load_manifest(fake_model(tmp_path / "model"))
    entry = manifest.graph("refine_step")
    inputs = (*entry.inputs[:-1], dataclasses.replace(entry.inputs[-1], shape=("S",)))
    manifest.graphs["fp32"]["refine_step"] = dataclasses.replace(entry, inputs=inputs)
    with pytest.raises(ValueError, match="refine_step input degrade_tolerance"):
        engine_profiles(manifest, "refine_step", BOXES, SIZES)


# --- building with a fake TensorRT -------------------------------------------------------------


def test_build_writes_engines_and_metadata(fake_trt, tmp_path):
    model = fake_model(tmp_path / "model")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    folder = build_engines(model, "fp32", BOXES, SIZES, workspace_mb=64, timing_cache=cache)

    assert folder == model / "engines" / "fp32"
    assert sorted(p.name for p in (model / "engines").iterdir()) == ["fp32"]  # nothing left over
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{role}.engine" for role in GRAPH_ROLES] + ["engines.json"]
    )
    assert [b["file"] for b in fake_trt.builds] == [f"{role}.onnx" for role in GRAPH_ROLES]
    assert {b["flags"] for b in fake_trt.builds} == {1 << 3}
    assert {b["workspace"] for b in fake_trt.builds} == {64 << 20}
    assert all(b["cleared"] == ["tf32"] for b in fake_trt.builds)  # fp32 is not TensorFloat-32
    # One profile per engine, set for the inputs with dynamic dimensions only.
    assert all(len(b["profiles"]) == 1 for b in fake_trt.builds)
    step_profile = fake_trt.builds[3]["profiles"][0]
    assert set(step_profile) == set(GRAPH_INPUTS["refine_step"]) - {"upper", *SCALARS}
    assert step_profile["rois"] == ([1, 5], [100, 5], [1000, 5])
    assert fake_trt.builds[0]["profiles"][0] == {
        "image": ([1, 3, 33, 65], [1, 3, 100, 200], [1, 3, 257, 513])
    }
    # One timing cache, read from the file, shared, and written back.
    assert fake_trt.cache_given == [b"old"]
    assert len({id(b["cache"]) for b in fake_trt.builds}) == 1
    assert cache.read_bytes() == b"old+"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "timing.cache"]

    metadata = json.loads((folder / "engines.json").read_text())
    assert metadata["precision"] == "fp32"
    assert metadata["versions"] == {
        "tensorrt": "10.99.1",
        "plugin_library": "0.1.0",
        "iounet": engine.__version__,
    }
    assert metadata["boxes"] == [1, 100, 1000]
    assert metadata["image_size"] == [[33, 65], [100, 200], [257, 513]]
    manifest = load_manifest(model)
    for index, role in enumerate(GRAPH_ROLES):
        entry = metadata["engines"][role]
        data = (folder / entry["file"]).read_bytes()
        assert data == f"engine {index + 1} of {role}.onnx".encode()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["onnx"] == {
            "file": f"{role}.onnx",
            "sha256": manifest.graph(role).sha256,
        }
    assert metadata["engines"]["refine_step"]["profile"]["upper"] == {
        "min": [4],
        "opt": [4],
        "max": [4],
    }
    assert load_engine_metadata(folder) == metadata


def test_build_without_timing_cache_or_workspace_sets_neither(fake_trt, tmp_path):
    build_engines(fake_model(tmp_path / "model"), "fp32", BOXES, SIZES)
    assert [(b["workspace"], b["cache"]) for b in fake_trt.builds] == [(None, None)] * 4
    assert fake_trt.cache_given == []


def test_existing_engines_need_force_and_a_failed_build_keeps_them(fake_trt, built):
    folder = built / "engines" / "fp32"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(FileExistsError, match="--force"):
        build_engines(built, "fp32", BOXES, SIZES)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    # A graph TensorRT cannot parse: the error names it, the old engines stay, nothing is left.
    bad = built / "refine_step.onnx"
    bad.write_bytes(b"\x08not json")
    manifest = json.loads((built / "manifest.json").read_text())
    manifest["graphs"]["fp32"]["refine_step"]["sha256"] = sha256_file(bad)
    (built / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"refine_step\.onnx: In node 3 \(importPrRoIPool\)"):
        build_engines(built, "fp32", BOXES, SIZES, force=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in (built / "engines").iterdir()) == ["fp32"]


def test_force_replaces_the_engines(fake_trt, built):
    folder = build_engines(built, "fp32", (2, 4, 8), SIZES, force=True)
    assert (folder / "backbone.engine").read_bytes() == b"engine 5 of backbone.onnx"
    assert load_engine_metadata(folder)["boxes"] == [2, 4, 8]
    assert sorted(p.name for p in (built / "engines").iterdir()) == ["fp32"]


def test_fp16_engines_come_from_the_fp16_graphs(fake_trt, tmp_path):
    with pytest.raises(ValueError, match="iounet export --fp16"):
        build_engines(fake_model(tmp_path / "fp32-only"), "fp16", BOXES, SIZES)
    model = fake_model(tmp_path / "model", ("fp32", "fp16"))
    folder = build_engines(model, "fp16", BOXES, SIZES)
    assert folder == model / "engines" / "fp16"
    assert [b["file"] for b in fake_trt.builds] == [f"{r}.fp16.onnx" for r in GRAPH_ROLES]
    assert all(b["cleared"] == [] for b in fake_trt.builds)
    metadata = load_engine_metadata(folder)
    assert metadata["precision"] == "fp16"
    assert metadata["engines"]["head"]["onnx"]["file"] == "head.fp16.onnx"


def test_bad_workspace_is_refused(fake_trt, tmp_path):
    with pytest.raises(ValueError, match="workspace"):
        build_engines(fake_model(tmp_path / "model"), "fp32", BOXES, SIZES, workspace_mb=0)


# --- metadata checks ---------------------------------------------------------------------------


def _check(model: Path, **versions: str) -> None:
    manifest = load_manifest(model)
    metadata = load_engine_metadata(model / "engines" / "fp32")
    arguments = {"tensorrt_version": "10.99.1", "plugin_version": "0.1.0", **versions}
    check_engine_metadata(metadata, manifest=manifest, **arguments)


def test_matching_engines_pass(built):
    _check(built)


def test_other_tensorrt_or_plugin_version_is_refused(built):
    with pytest.raises(ValueError, match=r"engines\.json.*TensorRT 10\.99\.1, this is TensorRT 11"):
        _check(built, tensorrt_version="11.0.0")
    with pytest.raises(ValueError, match=r"plugin library 0\.1\.0, the loaded one is 0\.2\.0"):
        _check(built, plugin_version="0.2.0")


def test_engines_of_another_export_are_refused(built):
    (built / "head.onnx").write_text(json.dumps([{"name": "image", "shape": [1, 3, 8, 8]}]))
    manifest = json.loads((built / "manifest.json").read_text())
    manifest["graphs"]["fp32"]["head"]["sha256"] = sha256_file(built / "head.onnx")
    (built / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"head engine was built from another export.*--force"):
        _check(built)


def test_missing_or_corrupt_engine_files_are_refused(built):
    folder = built / "engines" / "fp32"
    (folder / "iou_grad.engine").write_bytes(b"engine 3 of iou_grad.onnx, changed")
    with pytest.raises(ValueError, match=r"iou_grad\.engine does not match its sha256"):
        _check(built)
    (folder / "iou_grad.engine").unlink()
    with pytest.raises(ValueError, match=r"iou_grad\.engine, which is missing"):
        _check(built)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda m: "{not json", "not valid JSON"),
        (lambda m: [], "JSON object"),
        (lambda m: {**m, "format": "other"}, "format"),
        (lambda m: {**m, "precision": "int8"}, "precision"),
        (lambda m: {**m, "versions": {"tensorrt": "10"}}, "versions"),
        (lambda m: {**m, "boxes": [1, 2]}, "boxes"),
        (lambda m: {**m, "image_size": [[1, 2]]}, "image_size"),
        (lambda m: {**m, "engines": {"head": m["engines"]["head"]}}, "engines must hold"),
        (
            lambda m: {**m, "engines": {**m["engines"], "head": {"file": "../head.engine"}}},
            "engines.head needs",
        ),
        (
            lambda m: {
                **m,
                "engines": {
                    **m["engines"],
                    "head": {**m["engines"]["head"], "profile": {"rois": {"min": [1]}}},
                },
            },
            "engines.head needs",
        ),
    ],
)
def test_malformed_metadata_is_refused(built, edit, problem):
    path = built / "engines" / "fp32" / "engines.json"
    edited = edit(json.loads(path.read_text()))
    path.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(ValueError, match=f"engines\\.json.*{problem}"):
        load_engine_metadata(path.parent)


def test_missing_metadata_says_how_to_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="iounet build-engine"):
        load_engine_metadata(tmp_path)


# --- profile limits ----------------------------------------------------------------------------


def test_shapes_within_the_profile_pass(built):
    metadata = load_engine_metadata(built / "engines" / "fp32")
    check_within_profile(metadata, "backbone", "image", (1, 3, 33, 513))
    check_within_profile(metadata, "head", "rois", (1000, 5))
    check_within_profile(metadata, "head", "p2", (1, 8, 65, 17))
    check_within_profile(metadata, "refine_step", "upper", (4,))


@pytest.mark.parametrize(
    ("role", "name", "shape", "message"),
    [
        (
            "head",
            "rois",
            (42000, 5),
            "42000 boxes exceed the engine's profile (max 1000); rebuild with --boxes",
        ),
        ("refine_step", "active", (1001,), "1001 boxes exceed the engine's profile (max 1000)"),
        ("head", "labels", (0,), "0 boxes are fewer than the engine's profile allows (min 1)"),
        (
            "backbone",
            "image",
            (1, 3, 600, 200),
            "image size 600x200 is outside the engine's profile (min 33x65, max 257x513); "
            "rebuild with --image-size",
        ),
        ("backbone", "image", (1, 3, 32, 100), "image size 32x100 is outside"),
        ("iou_grad", "p4", (1, 8, 1, 10), "feature map p4 size 1x10 is outside"),
        ("backbone", "image", (2, 3, 64, 64), "image of shape (2, 3, 64, 64) is outside"),
        ("head", "rois", (10, 4), "rois of shape (10, 4) is outside the head engine's profile"),
        ("refine_step", "upper", (2,), "upper of shape (2,) is outside"),
        ("head", "rois", (10,), "rois has shape (10,), the head engine expects 2 dims"),
        ("head", "upper", (4,), "the head engine has no input 'upper'"),
    ],
)
def test_shapes_outside_the_profile_are_refused(built, role, name, shape, message):
    metadata = load_engine_metadata(built / "engines" / "fp32")
    with pytest.raises(ValueError) as error:
        check_within_profile(metadata, role, name, shape)
    assert str(error.value).startswith(message)


# --- the detector's engines (a joint IoU-Net's folder) -----------------------------------------


def test_detector_profiles(tmp_path):
    manifest = load_manifest(fake_model(tmp_path / "model", detector=True))
    head = engine_profiles(manifest, "head", BOXES, SIZES)
    rpn = engine_profiles(manifest, "rpn", BOXES, SIZES)
    assert set(rpn) == {*MAPS, "image_size"}
    assert all(rpn[name] == head[name] for name in MAPS)
    assert rpn["image_size"] == ([2], [2], [2])
    box_head = engine_profiles(manifest, "box_head", BOXES, SIZES)
    assert set(box_head) == {*MAPS, "proposals", "image_size"}
    # 1 .. post_nms_top_n proposals, whatever the --boxes range.
    assert box_head["proposals"] == ([1, 4], [300, 4], [300, 4])
    assert box_head["image_size"] == ([2], [2], [2])
    assert box_head["p3"] == ([1, 8, 5, 9], [1, 8, 13, 25], [1, 8, 33, 65])


def test_profiles_keep_a_fixed_proposal_count(tmp_path):
    """A box_head graph exported with a fixed number of proposals gets exactly that many."""
    manifest = load_manifest(fake_model(tmp_path / "model", detector=True))
    entry = manifest.graph("box_head")
    inputs = tuple(
        dataclasses.replace(t, shape=(100, 4)) if t.name == "proposals" else t for t in entry.inputs
    )
    manifest.graphs["fp32"]["box_head"] = dataclasses.replace(entry, inputs=inputs)
    profile = engine_profiles(manifest, "box_head", BOXES, SIZES)
    assert profile["proposals"] == ([100, 4], [100, 4], [100, 4])


def test_build_writes_the_detector_engines(fake_trt, tmp_path):
    model = fake_model(tmp_path / "model", ("fp32", "fp16"), detector=True)
    folder = build_engines(model, "fp16", BOXES, SIZES)

    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{role}.engine" for role in ALL_ROLES] + ["engines.json"]
    )
    assert [b["file"] for b in fake_trt.builds] == [f"{role}.fp16.onnx" for role in ALL_ROLES]
    built = dict(zip(ALL_ROLES, (b["profiles"][0] for b in fake_trt.builds), strict=True))
    # image_size is a static (2,) input: no profile; the maps and the proposals are dynamic.
    assert set(built["rpn"]) == set(MAPS)
    assert set(built["box_head"]) == {*MAPS, "proposals"}
    assert built["box_head"]["proposals"] == ([1, 4], [300, 4], [300, 4])
    assert built["rpn"]["p2"] == ([1, 8, 9, 17], [1, 8, 25, 50], [1, 8, 65, 129])

    manifest = load_manifest(model)
    metadata = load_engine_metadata(folder, manifest.roles())
    assert set(metadata["engines"]) == set(ALL_ROLES)
    assert metadata["engines"]["box_head"]["profile"]["proposals"] == {
        "min": [1, 4],
        "opt": [300, 4],
        "max": [300, 4],
    }
    assert metadata["engines"]["rpn"]["profile"]["image_size"] == {
        "min": [2],
        "opt": [2],
        "max": [2],
    }
    for role in DETECTOR_ROLES:
        entry = metadata["engines"][role]
        assert entry["onnx"] == {
            "file": f"{role}.fp16.onnx",
            "sha256": manifest.graph(role, "fp16").sha256,
        }
        assert entry["sha256"] == sha256_file(folder / entry["file"])
    check_engine_metadata(
        metadata, tensorrt_version="10.99.1", plugin_version="0.1.0", manifest=manifest
    )
    # The four roles of a model without the detector are not those of this folder.
    with pytest.raises(ValueError, match=r"engines must hold exactly \['backbone'"):
        load_engine_metadata(folder)
    four = {**metadata, "engines": {role: metadata["engines"][role] for role in GRAPH_ROLES}}
    with pytest.raises(ValueError, match="the engines are not those of"):
        check_engine_metadata(
            four, tensorrt_version="10.99.1", plugin_version="0.1.0", manifest=manifest
        )


def test_a_detector_engine_of_another_export_is_refused(fake_trt, tmp_path):
    model = fake_model(tmp_path / "model", detector=True)
    folder = build_engines(model, "fp32", BOXES, SIZES)
    (folder / "rpn.engine").write_bytes(b"changed")
    manifest = load_manifest(model)
    with pytest.raises(ValueError, match=r"rpn\.engine does not match its sha256"):
        check_engine_metadata(
            load_engine_metadata(folder, manifest.roles()),
            tensorrt_version="10.99.1",
            plugin_version="0.1.0",
            manifest=manifest,
        )


@pytest.mark.parametrize(
    ("role", "name", "shape", "message"),
    [
        (
            "box_head",
            "proposals",
            (301, 4),
            "301 proposals exceed the box_head engine's profile (max 300, the detector's "
            "post_nms_top_n)",
        ),
        ("box_head", "proposals", (0, 4), "0 proposals are fewer than the box_head engine's"),
        ("box_head", "proposals", (10, 5), "proposals of shape (10, 5) is outside the box_head"),
        (
            "rpn",
            "p2",
            (1, 8, 80, 17),
            "feature map p2 size 80x17 is outside the engine's profile (min 9x17, max 65x129); "
            "rebuild with --image-size",
        ),
        ("rpn", "image_size", (3,), "image_size of shape (3,) is outside the rpn engine's"),
    ],
)
def test_detector_shapes_outside_the_profile_are_refused(
    fake_trt, tmp_path, role, name, shape, message
):
    model = fake_model(tmp_path / "model", detector=True)
    metadata = load_engine_metadata(build_engines(model, "fp32", BOXES, SIZES), ALL_ROLES)
    check_within_profile(metadata, "box_head", "proposals", (300, 4))
    check_within_profile(metadata, "box_head", "proposals", (1, 4))
    with pytest.raises(ValueError) as error:
        check_within_profile(metadata, role, name, shape)
    assert str(error.value).startswith(message)


# --- the TensorRT backend on the fake TensorRT, which runs the graphs with ONNX Runtime --------

#: Image sizes of the engines of the tiny joint model (the pipeline pads to 160x192).
JOINT_SIZES = ((64, 64), (160, 192), (224, 256))


@pytest.fixture(scope="module")
def joint_folder(exported_joint_model, tmp_path_factory):
    """A copy of the tiny joint model's folder (its files linked) to build engines in."""
    _, source = exported_joint_model
    folder = tmp_path_factory.mktemp("joint") / "model"
    folder.mkdir()
    for path in source.iterdir():
        if path.is_file():
            (folder / path.name).symlink_to(path)
    return folder


@pytest.fixture
def fake_trt_on_cpu(fake_trt, monkeypatch):
    """The fake TensorRT, with the TensorRT backend on the CPU (the fake reads host memory)."""
    from iounet.runtime import trt_backend

    monkeypatch.setattr(trt_backend, "_current_device", lambda: torch.device("cpu"))
    return fake_trt


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

    folder = tmp_path / "model"
    folder.mkdir()
    for path in exported_model[1].iterdir():
        if path.is_file():
            (folder / path.name).symlink_to(path)
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


def test_pipeline_on_images_alone_through_the_fake_matches_onnxruntime(
    fake_trt_on_cpu, joint_folder
):
    from iounet.runtime.ort_backend import OnnxRuntimeBackend
    from iounet.runtime.pipeline import Pipeline

    manifest = load_manifest(joint_folder)
    image = torch.rand((3, 96, 128), generator=torch.Generator().manual_seed(5))
    found = Pipeline.for_manifest(manifest, _joint_backend(joint_folder))(image)
    expected = Pipeline.for_manifest(manifest, OnnxRuntimeBackend(joint_folder))(image)
    assert len(found.boxes) > 0 and found.boxes.shape == expected.boxes.shape
    torch.testing.assert_close(found.boxes, expected.boxes, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(found.scores, expected.scores)
    torch.testing.assert_close(found.ious, expected.ious, rtol=1e-4, atol=1e-4)
    assert torch.equal(found.labels, expected.labels)
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


# --- command line ------------------------------------------------------------------------------


def test_cli_without_tensorrt_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails
    model = fake_model(tmp_path / "model")
    argv = ["build-engine", str(model), "--boxes", "1:10:100", "--image-size", "64x64"]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("iounet build-engine: TensorRT is not installed")
    assert "pip install -e .[gpu]" in error
    assert error.count("\n") == 1 and "Traceback" not in error
    assert not (model / "engines" / "fp32").exists()


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [("--boxes", "10:1:100", "--boxes must have min <= opt <= max"), ("--image-size", "64", "HxW")],
)
def test_cli_bad_ranges_are_one_line(tmp_path, capsys, option, value, problem):
    arguments = {"--boxes": "1:10:100", "--image-size": "64x64", option: value}
    argv = ["build-engine", str(tmp_path), *[x for pair in arguments.items() for x in pair]]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("iounet build-engine: ") and problem in error
    assert error.count("\n") == 1


def test_cli_builds_with_the_given_settings(fake_trt, tmp_path, capsys):
    model = fake_model(tmp_path / "model", ("fp32", "fp16"))
    cache = tmp_path / "cache.bin"
    argv = ["build-engine", str(model), "--precision", "fp16", "--boxes", "8"]
    argv += ["--image-size", "64x96:128x128:256x320", "--workspace", "32"]
    argv += ["--timing-cache", str(cache)]
    assert cli.main(argv) == 0
    assert str(model / "engines" / "fp16") in capsys.readouterr().out
    metadata = load_engine_metadata(model / "engines" / "fp16")
    assert metadata["boxes"] == [8, 8, 8]
    assert metadata["image_size"] == [[64, 96], [128, 128], [256, 320]]
    assert metadata["workspace_mb"] == 32
    assert fake_trt.cache_given == [b""] and cache.read_bytes() == b"+"
    assert cli.main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert cli.main([*argv, "--force"]) == 0


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


def test_cli_without_the_plugin_library_says_how_to_build_it(monkeypatch, tmp_path, capsys):
    from iounet.plugins import trt_loader

    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT())
    monkeypatch.setenv(trt_loader.LIBRARY_ENV, str(tmp_path / "absent.so"))
    trt_loader.load_plugin_library.cache_clear()
    model = fake_model(tmp_path / "model")
    argv = ["build-engine", str(model), "--boxes", "1:8:16", "--image-size", "64x64"]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert "absent.so" in error and "make native TENSORRT_ROOT" in error
    assert not (model / "engines" / "fp32").exists()


@pytest.fixture(scope="module")
def trt_joint_model(exported_joint_model, tmp_path_factory):
    """The tiny joint IoU-Net (its folder linked) with fp32 and fp16 engines, detector included."""
    reason = tensorrt_missing()
    if reason:
        pytest.skip(reason)
    _, source = exported_joint_model
    folder = tmp_path_factory.mktemp("trt_joint") / "model"
    folder.mkdir()
    for path in source.iterdir():
        if path.is_file():
            (folder / path.name).symlink_to(path)
    for precision in ("fp32", "fp16"):
        build_engines(folder, precision, GPU_BOXES, GPU_SIZES)
    return folder


def _matched(boxes: torch.Tensor, reference: torch.Tensor, tol: float) -> float:
    """The share of the reference boxes with a box within `tol` pixels in `boxes`."""
    if len(reference) == 0:
        return 1.0
    distance = (boxes[:, None, :] - reference[None, :, :]).abs().amax(dim=2)
    return float((distance.amin(dim=0) <= tol).float().mean())


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
    assert _matched(proposals.cpu(), expected, tol) >= share
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
    assert _matched(boxes.cpu()[real], ref_boxes[real], tol) >= share
    if precision == "fp32":
        assert torch.equal(labels.cpu(), ref_labels)
    empty = backend.raw_detections(features, torch.zeros((0, 4), device="cuda"), (90, 120))
    assert [tuple(t.shape) for t in empty] == [(0, 4), (0,), (0,)]


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_pipeline_on_images_alone_matches_onnxruntime(trt_joint_model):
    from iounet.runtime.ort_backend import OnnxRuntimeBackend
    from iounet.runtime.pipeline import Pipeline
    from iounet.runtime.trt_backend import TensorRTBackend

    manifest = load_manifest(trt_joint_model)
    image = torch.rand((3, 96, 128), generator=torch.Generator().manual_seed(5))
    found = Pipeline.for_manifest(manifest, TensorRTBackend(trt_joint_model))(image.cuda())
    expected = Pipeline.for_manifest(manifest, OnnxRuntimeBackend(trt_joint_model))(image)
    assert len(expected.boxes) > 0
    assert abs(len(found.boxes) - len(expected.boxes)) <= 2
    assert _matched(found.boxes.cpu(), expected.boxes, 0.5) >= 0.9
    assert _matched(expected.boxes, found.boxes.cpu(), 0.5) >= 0.9


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_detector_refuses_images_beyond_the_profile(trt_joint_model):
    from iounet.runtime.trt_backend import TensorRTBackend

    backend = TensorRTBackend(trt_joint_model)
    features = backend.features(torch.rand((1, 3, 96, 128), device="cuda"))
    with pytest.raises(ValueError, match=r"image size 200x100 is outside the engine's profile"):
        backend.proposals(features, (200, 100))
