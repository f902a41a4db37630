"""The exported graphs through a real TensorRT builder: TensorRT-RTX, which builds without a GPU.

TensorRT-RTX takes no user plugins, so each PrRoIPool / PrRoIPoolCoordGrad node is replaced by a
stand-in of standard ops with the same output shape and dtype (tests/tensorrt_rtx_standin.py);
everything else in the graphs is parsed and built as exported, strongly typed, with the
optimization profile `iounet build-engine` would use. This guards what the exporter emits around
our nodes. The build runs in a subprocess: TensorRT aborts the process on what it cannot take.

Both export opsets are built: 20 (the tiny IoU-Net's and joint IoU-Net's folders) and 17 (the
joint IoU-Net's folder exported with ``--opset 17``, whose first four graphs are the IoU-Net's).

The detector's graphs of a joint IoU-Net (rpn, box_head) are built too. TensorRT-RTX parses the
rpn graph's NonMaxSuppression node into an NMS layer but has no implementation of that layer
("has no runners that implement it"; full TensorRT implements INMSLayer), so the rpn graph is
parsed as exported (its NMS layer checked) and built with the NMS node replaced by a TopK
stand-in of the same output type and rank.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from tensorrt_rtx_standin import (
    COORD_GRAD,
    CUSTOM_DOMAIN,
    NMS,
    POOL,
    STANDIN_TAG,
    replace_custom_nodes,
)

from iounet.export.engine import engine_profiles, parse_image_size, parse_range
from iounet.export.manifest import (
    DEFAULT_OPSET,
    DETECTOR_ROLES,
    GRAPH_ROLES,
    OPSETS,
    Manifest,
    load_manifest,
)

pytestmark = pytest.mark.skipif(
    not all(
        importlib.util.find_spec(name) for name in ("tensorrt_rtx_libs", "tensorrt_rtx_bindings")
    ),
    reason="TensorRT-RTX not installed (pip install -e .[test])",
)

# The `iounet build-engine` ranges of docs/usage.md.
BOXES = parse_range("1:100:1000", "--boxes")
IMAGE_SIZE = parse_image_size("192x192:800x1216:1344x1344")
#: Custom nodes per graph (see iounet.export.graphs: every box is pooled on all four levels).
REPLACED = {
    "backbone": {},
    "head": {POOL: 4},
    "iou_grad": {POOL: 4, COORD_GRAD: 4},
    "refine_step": {POOL: 4, COORD_GRAD: 4},
    "rpn": {NMS: 1},  # replaced only for the build (see the module docstring)
    "box_head": {POOL: 4},
}
STANDIN = Path(__file__).with_name("tensorrt_rtx_standin.py")
BUILD_TIMEOUT_S = 300  # the eight builds take about 2 s on 2 cores


@pytest.mark.parametrize("opset", OPSETS)
def test_standin_graphs_build_with_tensorrt_rtx(
    exported_model, exported_joint_model_17, tmp_path, opset
):
    folder = exported_model[1] if opset == DEFAULT_OPSET else exported_joint_model_17
    manifest = load_manifest(folder)
    assert manifest.precisions() == ["fp32", "fp16"] and manifest.opset == opset
    jobs = [
        _standin_job(manifest, role, precision, tmp_path)
        for precision in manifest.precisions()
        for role in GRAPH_ROLES
    ]
    built, _ = _run(jobs, tmp_path)
    assert built == [job["name"] for job in jobs]


@pytest.mark.parametrize("opset", OPSETS)
def test_detector_graphs_with_tensorrt_rtx(
    exported_joint_model, exported_joint_model_17, tmp_path, opset
):
    """rpn: parsed as exported (one NMS layer), built with the NMS stand-in; box_head: built
    with the PrRoIPool stand-ins; fp32 and fp16."""
    folder = exported_joint_model[1] if opset == DEFAULT_OPSET else exported_joint_model_17
    manifest = load_manifest(folder)
    assert manifest.precisions() == ["fp32", "fp16"] and manifest.roles()[4:] == DETECTOR_ROLES
    assert manifest.opset == opset
    jobs = []
    for precision in manifest.precisions():
        entry = manifest.graph("rpn", precision)
        exported = onnx.load(str(folder / entry.file))
        assert [n.op_type for n in exported.graph.node].count(NMS) == 1
        parse = {**_job(manifest, "rpn", precision, folder / entry.file), "build": False}
        parse["name"] += " (exported, parse only)"
        parse["layers"] = {"NMS": 1}
        jobs.append(parse)
        rpn = _standin_job(manifest, "rpn", precision, tmp_path)
        rpn["layers"] = {"NMS": 0}
        jobs.append(rpn)
        jobs.append(_standin_job(manifest, "box_head", precision, tmp_path))
    built, parsed = _run(jobs, tmp_path)
    assert parsed == [job["name"] for job in jobs if not job.get("build", True)]
    assert built == [job["name"] for job in jobs if job.get("build", True)]
    assert built == [f"{p}/{role}" for p in ("fp32", "fp16") for role in DETECTOR_ROLES]


def _job(manifest: Manifest, role: str, precision: str, path: Path) -> dict:
    """The job of one graph file for tensorrt_rtx_standin.py."""
    entry = manifest.graph(role, precision)
    return {
        "name": f"{precision}/{role}",
        "onnx": str(path),
        "profile": engine_profiles(manifest, role, BOXES, IMAGE_SIZE, precision),
        "inputs": [dataclasses.asdict(t) for t in entry.inputs],
        "outputs": [dataclasses.asdict(t) for t in entry.outputs],
    }


def _standin_job(manifest: Manifest, role: str, precision: str, folder: Path) -> dict:
    """The job of a graph with its custom nodes (and NMS) replaced, written to `folder`."""
    entry = manifest.graph(role, precision)
    exported = onnx.load(str(manifest.folder / entry.file))
    model, replaced = replace_custom_nodes(exported, nms=True)
    assert dict(replaced) == REPLACED[role], (precision, role)
    assert not any(n.domain == CUSTOM_DOMAIN or n.op_type == NMS for n in model.graph.node)
    kept = [n for n in model.graph.node if STANDIN_TAG not in n.name]
    assert kept == [
        n for n in exported.graph.node if n.domain != CUSTOM_DOMAIN and n.op_type != NMS
    ]
    onnx.checker.check_model(model, full_check=True)
    path = folder / entry.file
    onnx.save(model, str(path))
    return _job(manifest, role, precision, path)


def _run(jobs: list[dict], folder: Path) -> tuple[list[str], list[str]]:
    """Run tensorrt_rtx_standin.py on `jobs` in a subprocess; the names of the engines built
    (each of a positive size) and of the graphs only parsed."""
    job_file = folder / "jobs.json"
    job_file.write_text(json.dumps(jobs))
    result = subprocess.run(
        [sys.executable, str(STANDIN), str(job_file)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    print(result.stdout)
    assert result.returncode == 0, f"TensorRT-RTX exited with {result.returncode}\n{log}"
    built = re.findall(r"^built (.+?): (\d+) bytes", result.stdout, re.MULTILINE)
    assert all(int(size) > 0 for _, size in built), log
    parsed = re.findall(r"^parsed (.+?): \d+ layers", result.stdout, re.MULTILINE)
    assert len(built) + len(parsed) == len(jobs), log
    return [name for name, _ in built], parsed
