"""TensorRT engines (export/engine.py): argument parsing, profiles, building (with a fake
TensorRT), metadata checks and profile limits."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from engine_models import (
    ALL_ROLES,
    BOXES,
    GRAPH_INPUTS,
    MAPS,
    SCALARS,
    SIZES,
    fake_model,
)

from iounet import version
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
    load_manifest,
    sha256_file,
)


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
        "iounet": version.__version__,
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
