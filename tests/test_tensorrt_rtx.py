"""The exported graphs through a real TensorRT builder: TensorRT-RTX, which builds without a GPU.

TensorRT-RTX takes no user plugins, so each PrRoIPool / PrRoIPoolCoordGrad node is replaced by a
stand-in of standard ops with the same output shape and dtype (tests/tensorrt_rtx_standin.py);
everything else in the graphs is parsed and built as exported, strongly typed, with the
optimization profile `iounet build-engine` would use. This guards what the exporter emits around
our nodes. The build runs in a subprocess: TensorRT aborts the process on what it cannot take.
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
    POOL,
    STANDIN_TAG,
    replace_custom_nodes,
)

from iounet.export.engine import engine_profiles, parse_image_size, parse_range
from iounet.export.manifest import GRAPH_ROLES, load_manifest

pytestmark = pytest.mark.skipif(
    not all(
        importlib.util.find_spec(name) for name in ("tensorrt_rtx_libs", "tensorrt_rtx_bindings")
    ),
    reason="TensorRT-RTX not installed (pip install -e .[test])",
)

# The README's `iounet build-engine` ranges.
BOXES = parse_range("1:100:1000", "--boxes")
IMAGE_SIZE = parse_image_size("192x192:800x1216:1344x1344")
#: Custom nodes per graph (see iounet.export.graphs: every box is pooled on all four levels).
REPLACED = {
    "backbone": {},
    "head": {POOL: 4},
    "iou_grad": {POOL: 4, COORD_GRAD: 4},
    "refine_step": {POOL: 4, COORD_GRAD: 4},
}
STANDIN = Path(__file__).with_name("tensorrt_rtx_standin.py")
BUILD_TIMEOUT_S = 300  # the eight builds take about 2 s on 2 cores


def test_standin_graphs_build_with_tensorrt_rtx(exported_model, tmp_path):
    _, folder = exported_model
    manifest = load_manifest(folder)
    assert manifest.precisions() == ["fp32", "fp16"]
    jobs = []
    for precision in manifest.precisions():
        for role in GRAPH_ROLES:
            entry = manifest.graph(role, precision)
            exported = onnx.load(str(folder / entry.file))
            model, replaced = replace_custom_nodes(exported)
            assert dict(replaced) == REPLACED[role], (precision, role)
            assert not any(n.domain == CUSTOM_DOMAIN for n in model.graph.node)
            kept = [n for n in model.graph.node if STANDIN_TAG not in n.name]
            assert kept == [n for n in exported.graph.node if n.domain != CUSTOM_DOMAIN]
            onnx.checker.check_model(model, full_check=True)
            path = tmp_path / entry.file
            onnx.save(model, str(path))
            profile = engine_profiles(manifest, role, BOXES, IMAGE_SIZE, precision)
            jobs.append(
                {
                    "name": f"{precision}/{role}",
                    "onnx": str(path),
                    "profile": profile,
                    "inputs": [dataclasses.asdict(t) for t in entry.inputs],
                    "outputs": [dataclasses.asdict(t) for t in entry.outputs],
                }
            )
    job_file = tmp_path / "jobs.json"
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
    built = re.findall(r"^built (\S+): (\d+) bytes", result.stdout, re.MULTILINE)
    assert [name for name, _ in built] == [job["name"] for job in jobs], log
    assert all(int(size) > 0 for _, size in built), log
