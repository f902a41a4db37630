"""`iounet triton-repo`: the repository's layout, its configs parsed as Triton's ModelConfig,
and its Python model run on the CPU: ``execute`` with the BLS calls answered by the ONNX Runtime
graphs of the same model gives what `iounet infer` writes."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iounet.cli import main

pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed (iounet[serve])")
pytest.importorskip("onnxruntime_extensions")


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Response:
    def __init__(self, output_tensors: list, error: object = None) -> None:
        self.output_tensors, self.error_value = output_tensors, error

    def has_error(self) -> bool:
        return self.error_value is not None

    def error(self) -> object:
        return self.error_value


class _Error:
    def __init__(self, message: str) -> None:
        self._message = message

    def message(self) -> str:
        return self._message


def _fake_backend_utils(model: Path) -> types.ModuleType:
    """``triton_python_backend_utils`` with BLS requests answered by ONNX Runtime sessions on
    the graphs of `model` (the model each tensorrt_plan of the repository was built from)."""
    from iounet.export.manifest import load_manifest
    from iounet.plugins import onnxruntime_session
    from iounet.runtime.ort_backend import session_options

    manifest = load_manifest(model)
    sessions = {
        role: onnxruntime_session(manifest.graph_path(role), sess_options=session_options(None))
        for role in manifest.roles()
    }

    class InferenceRequest:
        def __init__(self, model_name, inputs, requested_output_names, preferred_memory=None):
            self.model_name, self.inputs, self.outputs = model_name, inputs, requested_output_names

        def exec(self) -> _Response:
            feeds = {tensor.name(): tensor.as_numpy() for tensor in self.inputs}
            role = self.model_name.removeprefix("iounet_")
            arrays = sessions[role].run(self.outputs, feeds)
            return _Response([_Tensor(n, a) for n, a in zip(self.outputs, arrays, strict=True)])

    def tensor_by_name(holder, name):
        tensors = holder.output_tensors if isinstance(holder, _Response) else holder
        return next((tensor for tensor in tensors if tensor.name() == name), None)

    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor
    module.InferenceRequest = InferenceRequest
    module.InferenceResponse = _Response
    module.TritonError = _Error
    module.PreferredMemory = lambda kind, device: (kind, device)
    module.TRITONSERVER_MEMORY_CPU = 0
    module.get_input_tensor_by_name = tensor_by_name
    module.get_output_tensor_by_name = tensor_by_name
    return module


def _engines(model: Path, folder: Path) -> Path:
    """Stand-in engine files (the CPU test runs the ONNX graphs in their place)."""
    from iounet.export.manifest import load_manifest

    for role in load_manifest(model).roles():
        (folder / "fp32").mkdir(parents=True, exist_ok=True)
        (folder / "fp32" / f"{role}.engine").write_bytes(f"engine of {role}".encode())
    return folder


def test_repository_layout_and_configs(exported_joint_model, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from iounet.export.manifest import load_manifest

    model = exported_joint_model[1]
    engines = _engines(model, tmp_path / "engines")
    repo = tmp_path / "repo"
    args = ["triton-repo", "--model", str(model), "--engines", str(engines), "--out", str(repo)]
    assert main(args) == 0
    roles = load_manifest(model).roles()
    names = [f"iounet_{role}" for role in roles]
    assert sorted(path.name for path in repo.iterdir()) == sorted([*names, "iounet"])
    for role, name in zip(roles, names, strict=True):
        config = text_format.Parse(
            (repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        assert config.platform == "tensorrt_plan" and config.name == name
        assert (repo / name / "1" / "model.plan").read_bytes() == f"engine of {role}".encode()
    config = text_format.Parse(
        (repo / "iounet" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.backend == "python" and config.max_batch_size == 8
    assert {tensor.name for tensor in config.input} >= {"image", "pixels", "boxes"}
    assert (repo / "iounet" / "1" / "model.py").is_file()
    assert main(args) == 2  # exists: needs --force
    (engines / "fp32" / "rpn.engine").unlink()
    assert main([*args[:-1], str(tmp_path / "other")]) == 2  # names the missing engine


def test_python_model_on_the_cpu_gives_what_infer_writes(
    exported_joint_model, tmp_path, monkeypatch
):
    from iounet.runtime.serving_client import coco_results

    model = exported_joint_model[1]
    repo = tmp_path / "repo"
    engines = _engines(model, tmp_path / "engines")
    args = ["triton-repo", "--model", str(model), "--engines", str(engines), "--out", str(repo)]
    assert main(args) == 0
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)).save(images / "b.jpg")
    out = tmp_path / "infer.json"
    assert main(["infer", "--model", str(model), "--images", str(images), "--out", str(out)]) == 0

    utils = _fake_backend_utils(model)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    spec = importlib.util.spec_from_file_location("repo_model", repo / "iounet" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    python_model = module.TritonPythonModel()
    config = {"parameters": {"max_detections": {"string_value": "100"}}}
    python_model.initialize(
        {
            "model_config": json.dumps(config),
            "model_repository": str(repo / "iounet"),
            "model_version": "1",
        }
    )
    requests = [
        [_Tensor("image", np.array([[(images / name).read_bytes()]], np.object_))]
        for name in ("a.png", "b.jpg")
    ]
    requests.append([_Tensor("image", np.array([[b"not an image"]], np.object_))])
    responses = python_model.execute(requests)
    assert len(responses) == 3
    assert "cannot decode image" in responses[2].error().message()
    served = []
    for name, response in zip(("a.png", "b.jpg"), responses, strict=False):
        assert not response.has_error()
        found = {tensor.name(): tensor.as_numpy()[0] for tensor in response.output_tensors}
        found["num_detections"] = int(found["num_detections"][0])
        served.extend(coco_results(name, found))
    assert served == json.loads(out.read_text()) and served
