"""`iounet export --opset`: every graph (detection with the joint detector, fp32 and fp16, and
tracking) at opset 17 and 20, the manifests' record of it, ONNX Runtime outputs of the opset-17
graphs against the opset-20 ones, the refusal of other opsets, and what `iounet build-engine`
says about the TensorRT a folder needs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import exported_at
from fake_tensorrt import install_fake_tensorrt
from tiny_tracking import random_tracking_net, write_pytracking_checkpoint

from iounet.cli import main
from iounet.export.engine import TENSORRT_FOR_OPSET, tensorrt_note
from iounet.export.manifest import OPSETS, GraphEntry, ManifestError, load_manifest
from iounet.export.onnx_export import export_model
from iounet.export.tracking_export import export_tracking_model
from iounet.export.tracking_manifest import TRACKING_ROLES, load_tracking_manifest
from iounet.plugins import onnxruntime_session
from iounet.plugins.onnx_translation import translation_table


@pytest.fixture(scope="module")
def joint_17(exported_joint_model, exported_joint_model_17):
    """(opset-17 folder, opset-20 folder) of the tiny joint IoU-Net (fp32 and fp16 graphs)."""
    return exported_joint_model_17, exported_joint_model[1]


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """{opset: folder} of a tiny pytracking net exported at every opset."""
    root = tmp_path_factory.mktemp("tracking_opsets")
    checkpoint = write_pytracking_checkpoint(
        root / "ATOMnet_ep0050.pth.tar", random_tracking_net(seed=11)
    )
    return {opset: exported_at(tmp_path_factory, checkpoint, opset) for opset in OPSETS}


def _default_opsets(path: Path) -> set[int]:
    """The versions the graph (and any function in it) imports the default ONNX domain at."""
    model = onnx.load(str(path), load_external_data=False)
    protos = (model, *model.functions)
    return {o.version for p in protos for o in p.opset_import if o.domain in ("", "ai.onnx")}


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.onnx"))


def test_every_graph_is_at_the_asked_opset_and_the_manifest_records_it(
    exported_model, joint_17, tracking
):
    folder_17, folder_20 = joint_17
    detection = {17: folder_17, 20: folder_20}
    for opset, folder in detection.items():
        manifest = load_manifest(folder)
        assert manifest.opset == opset and manifest.custom_opsets == {"iounet": 1}
        assert manifest.precisions() == ["fp32", "fp16"] and manifest.has_detector
        assert json.loads((folder / "manifest.json").read_text())["opset"] == opset
        assert len(_files(folder)) == 12
    assert load_manifest(exported_model[1]).opset == 20
    for path in _files(exported_model[1]):
        assert _default_opsets(path) == {20}, path.name
    for opset, folder in tracking.items():
        assert load_tracking_manifest(folder).opset == opset
        assert len(_files(folder)) == len(TRACKING_ROLES)
    for opset, folder in [*detection.items(), *tracking.items()]:
        for path in _files(folder):
            assert _default_opsets(path) == {opset}, path.name
            if opset == 17:
                onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def _node_form(node: onnx.NodeProto, opset: int) -> tuple:
    """What a node computes: op, inputs, outputs and attributes (those the op has at `opset`)."""
    schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    known = {name: value for name, value in attributes.items() if name in schema.attributes}
    return node.domain, node.op_type, list(node.input), list(node.output), known


def _assert_same_graph(path_17: Path, path_20: Path) -> None:
    """The opset-17 graph is the opset-20 graph: the same weights and nodes; a node attribute
    that the op does not have at opset 17 is absent there and at its default in the other."""
    model_17, model_20 = onnx.load(str(path_17)), onnx.load(str(path_20))
    weights = [
        {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}
        for model in (model_17, model_20)
    ]
    assert weights[0] == weights[1], path_17.name
    assert len(model_17.graph.node) == len(model_20.graph.node), path_17.name
    for node_17, node_20 in zip(model_17.graph.node, model_20.graph.node, strict=True):
        assert _node_form(node_17, 17) == _node_form(node_20, 17), (path_17.name, node_20.name)
        schema_17 = onnx.defs.get_schema(node_17.op_type, 17, node_17.domain)
        schema_20 = onnx.defs.get_schema(node_20.op_type, 20, node_20.domain)
        for attribute in node_20.attribute:
            if attribute.name not in schema_17.attributes:
                default = schema_20.attributes[attribute.name].default_value
                value = onnx.helper.get_attribute_value(attribute)
                assert value == onnx.helper.get_attribute_value(default), (node_20.name, value)


def test_opset_17_graphs_are_the_opset_20_graphs(joint_17, tracking):
    for folder_17, folder_20 in (joint_17, (tracking[17], tracking[20])):
        for path in _files(folder_20):
            _assert_same_graph(folder_17 / path.name, path)


def _has_iounet_nodes(path: Path) -> bool:
    return any(node.domain == "iounet" for node in onnx.load(str(path)).graph.node)


def _assert_same_outputs(
    entries: list[GraphEntry], folder_17: Path, folder_20: Path, pool: dict[str, np.ndarray]
) -> None:
    """Run each graph of both folders in ONNX Runtime on the same feeds and compare the outputs
    (within the ONNX Runtime parity tests' 1e-5 of the outputs' scale; 1e-3 for float16).

    The feeds come from `pool` (cast to each input's type), which the opset-20 graphs' outputs
    join as they run, so later graphs take earlier ones' outputs (maps, IoU, proposals).
    """
    for entry in entries:
        feeds = {spec.name: pool[spec.name].astype(spec.dtype) for spec in entry.inputs}
        session_20 = onnxruntime_session(str(folder_20 / entry.file))
        expected = session_20.run(None, feeds)
        actual = onnxruntime_session(str(folder_17 / entry.file)).run(None, feeds)
        names = [output.name for output in session_20.get_outputs()]
        for name, got, want in zip(names, actual, expected, strict=True):
            where = f"{entry.file}: {name}"
            assert got.shape == want.shape and got.dtype == want.dtype, where
            if np.issubdtype(want.dtype, np.floating):
                scale = max(1.0, float(np.abs(want).max(initial=0.0)))
                tolerance = (1e-3 if want.dtype == np.float16 else 1e-5) * scale
                np.testing.assert_allclose(got, want, rtol=0, atol=tolerance, err_msg=where)
            else:
                np.testing.assert_array_equal(got, want, err_msg=where)
            pool.setdefault(name, np.asarray(want))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_opset_17_detection_graphs_match_opset_20(joint_17, precision):
    """Every fp32 graph; of the fp16 graphs those without iounet nodes (backbone, rpn), since
    the ONNX Runtime ops of the iounet nodes take float32 only."""
    folder_17, folder_20 = joint_17
    manifest = load_manifest(folder_20)
    generator = np.random.default_rng(3)
    height, width = 200, 260  # the image before padding to 224x288
    corners = generator.uniform(0, 1, (40, 2)) * [width - 40, height - 40]
    sides = generator.uniform(8, 120, (40, 2))
    boxes = np.concatenate([corners, np.minimum(corners + sides, [width, height])], axis=1)
    pool = {
        "image": generator.uniform(0, 1, (1, 3, 224, 288)),
        "rois": np.concatenate([np.zeros((40, 1)), boxes], axis=1),
        "labels": generator.integers(0, manifest.num_classes, 40),
        "active": np.ones(40, dtype=bool),
        "upper": np.array([width, height, width, height]),
        "step": np.array([0.5]),
        "early_stop": np.array([1e-3]),
        "degrade_tolerance": np.array([-1e-2]),
        "image_size": np.array([height, width]),
    }
    entries = [manifest.graph(role, precision) for role in manifest.roles()]
    if precision == "fp16":
        entries = [e for e in entries if not _has_iounet_nodes(folder_20 / e.file)]
        assert [e.file for e in entries] == ["backbone.fp16.onnx", "rpn.fp16.onnx"]
    _assert_same_outputs(entries, folder_17, folder_20, pool)
    assert len(pool["proposals"]) > 0  # the box_head graph had proposals to classify
    if precision == "fp32":
        assert pool["iou"].shape == (40,) and pool["rois_next"].shape == (40, 5)


def test_opset_17_tracking_graphs_match_opset_20(tracking):
    manifest = load_tracking_manifest(tracking[20])
    generator = np.random.default_rng(12)
    box = np.array([100.0, 90.0, 60.0, 80.0])
    proposals = box + generator.normal(0, 1, (10, 4)) * [8.0, 8.0, 6.0, 6.0]
    pool = {
        "image": generator.uniform(0, 1, (1, 3, 288, 288)),
        "box": box[None],
        "proposals": proposals,
        "boxes": proposals,
        "rel": generator.normal(0, 0.1, (10, 4)),
        "sz_norm": box[2:],
        "step": np.array([1.0, 1.0, 0.5, 0.5]),
    }
    entries = [manifest.graphs[role] for role in TRACKING_ROLES]
    _assert_same_outputs(entries, tracking[17], tracking[20], pool)
    assert pool["grad"].shape == (10, 4) and pool["rel_next"].shape == (10, 4)


@pytest.mark.parametrize("value", ["18", "16", "21", "seventeen", "17.0", ""])
def test_a_bad_opset_is_one_line_before_any_work(exported_model, tmp_path, capsys, value):
    checkpoint, _ = exported_model
    out = tmp_path / "model"
    assert main(["export", str(checkpoint), "--out", str(out), "--opset", value]) == 2
    error = capsys.readouterr().err
    assert error.startswith("iounet export: --opset must be 17 or 20") and "got " in error
    assert error.count("\n") == 1 and "Traceback" not in error
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_export_functions_refuse_other_opsets(exported_model, tracking, tmp_path):
    checkpoint, _ = exported_model
    with pytest.raises(ValueError, match=r"opset must be 17 or 20 .*got 19"):
        export_model(checkpoint, tmp_path / "model", opset=19)
    with pytest.raises(ValueError, match=r"opset must be 17 or 20 .*got True"):
        export_tracking_model(tmp_path / "absent.pth.tar", tmp_path / "tracking", opset=True)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="opset 13 or newer"):
        translation_table(12)


@pytest.mark.parametrize("value", [18, 16, "17", 17.0, None])
def test_manifests_refuse_other_opsets(exported_model, tracking, tmp_path, value):
    for source, load in (
        (exported_model[1], load_manifest),
        (tracking[17], load_tracking_manifest),
    ):
        folder = tmp_path / source.name
        shutil.copytree(source, folder)
        data = json.loads((folder / "manifest.json").read_text())
        data["opset"] = value
        (folder / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(ManifestError, match=r"manifest\.json: opset must be"):
            load(folder)


def test_build_engine_says_which_tensorrt_the_graphs_need(tracking, tmp_path, monkeypatch, capsys):
    assert set(TENSORRT_FOR_OPSET) == set(OPSETS)
    assert tensorrt_note(17) == "graphs at opset 17: TensorRT 8.5 or newer"
    assert tensorrt_note(20) == (
        "graphs at opset 20: TensorRT 10 or newer; export with --opset 17 for TensorRT 8.5/8.6"
    )
    install_fake_tensorrt(monkeypatch)
    for opset, source in tracking.items():
        folder = tmp_path / f"model{opset}"
        folder.mkdir()
        for path in source.iterdir():
            (folder / path.name).symlink_to(path)
        argv = ["build-engine", str(folder), "--boxes", "1:8:16", "--image-size", "288x288"]
        assert main(argv) == 0
        assert capsys.readouterr().out.splitlines()[-1] == tensorrt_note(opset)
