"""Imports follow the data flow: runtime -> export -> training -> plugins, never back; the runtime
loads neither pycocotools, PIL nor the training datasets."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Each layer may import the layers after it (and the shared utilities in iounet/).
LAYERS = ("runtime", "export", "training", "plugins")
SHARED = {
    "iounet",
    "iounet.version",
    "iounet.devices",
    "iounet.files",
    "iounet.progress",
    "iounet.resize",
    "iounet.staging",
}


def _imported_iounet_modules(path: Path) -> set[str]:
    """Every `iounet...` module a file imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name == "iounet" or name.startswith("iounet.")}


@pytest.mark.parametrize("layer", LAYERS)
def test_source_imports_only_layers_below(layer):
    allowed = {f"iounet.{name}" for name in LAYERS[LAYERS.index(layer) :]}
    wrong = {}
    for path in sorted((ROOT / layer).glob("*.py")):
        for module in _imported_iounet_modules(path):
            if module in SHARED:
                continue
            if not any(module == a or module.startswith(a + ".") for a in allowed):
                wrong.setdefault(path.name, []).append(module)
    assert not wrong, f"{layer} imports against the data flow: {wrong}"


def _modules_after(code: str) -> set[str]:
    """The modules loaded after running `code` in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def _package_modules(layer: str) -> list[str]:
    return [f"iounet.{layer}.{p.stem}" for p in sorted((ROOT / layer).glob("*.py"))]


@pytest.mark.parametrize("layer", ["plugins", "training", "export"])
def test_importing_a_layer_loads_no_layer_above(layer):
    imports = "\n".join(
        f"import {name}" for name in _package_modules(layer) if not name.endswith("__init__")
    )
    loaded = _modules_after(imports)
    above = LAYERS[: LAYERS.index(layer)]
    assert not {m for m in loaded if any(m.startswith(f"iounet.{a}") for a in above)}


HEAVY = ("pycocotools", "PIL", "iounet.training.coco_dataset", "iounet.training.synthetic")


def test_runtime_import_loads_no_dataset_code():
    loaded = _modules_after("import iounet.runtime")
    assert not {m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY}


def test_pipeline_from_model_loads_no_dataset_code(exported_model):
    pytest.importorskip("onnxruntime_extensions")
    _, model = exported_model
    loaded = _modules_after(
        f"from iounet.runtime import Pipeline\nPipeline.from_model({str(model)!r})"
    )
    assert "onnxruntime" in loaded  # it did open the sessions
    assert not {m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY}
