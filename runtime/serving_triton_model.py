"""The Python-backend model ``iounet`` of a Triton model repository (``iounet triton-repo``,
copied there as ``iounet/1/model.py``): the model ``iounet`` of `iounet serve` (the same
inputs, outputs and ``ModelServer``), its graphs run by BLS calls to the repository's
``tensorrt_plan`` models, one per graph role (``iounet_<role>``), on the same ``Pipeline``.

The graphs' calls go through ``OnnxRuntimeBackend``'s code (feeds, outputs, checks by name)
with each session's run replaced by a BLS request to the model of that role. Triton's
``triton_python_backend_utils`` is imported inside the methods, so this module imports anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iounet.export.manifest import Manifest, load_manifest
from iounet.runtime.ort_backend import OnnxRuntimeBackend
from iounet.runtime.serving import OUTPUTS, ModelServer, RequestError

#: The inputs of the model ``iounet`` (``iounet.runtime.serving.model_tensors``).
INPUTS = ("image", "pixels", "boxes", "scores", "labels", "nms_threshold", "refine_top")
#: The repository's model of a graph role is named ``iounet_<role>``.
ENGINE_PREFIX = "iounet_"
#: A graph call: (role, feeds by name, output names) -> the outputs in that order.
GraphCall = Callable[[str, dict[str, np.ndarray], list[str]], list[np.ndarray]]


class _GraphSession:
    """What ``OnnxRuntimeBackend`` calls a session: ``run(None, feeds)`` on one role's model."""

    def __init__(self, role: str, outputs: list[str], call: GraphCall) -> None:
        self.role = role
        self.outputs = outputs
        self.call = call

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.call(self.role, feeds, names or self.outputs)


class GraphCallBackend(OnnxRuntimeBackend):
    """``OnnxRuntimeBackend`` whose graphs are run by `call` (BLS requests on Triton; ONNX
    Runtime sessions in the CPU test) instead of its own sessions."""

    def __init__(self, manifest: Manifest, call: GraphCall) -> None:
        sessions = {
            role: _GraphSession(role, [spec.name for spec in manifest.graph(role).outputs], call)
            for role in manifest.roles()
        }
        self.use_sessions(manifest, sessions, "triton", torch.device("cpu"))


def model_server(folder: Path, call: GraphCall, max_detections: int) -> ModelServer:
    """The ``ModelServer`` of the manifest in `folder` with its graphs run by `call`."""
    from iounet.runtime.pipeline import Pipeline

    manifest = load_manifest(folder, verify=False)
    pipeline = Pipeline.for_manifest(manifest, GraphCallBackend(manifest, call))
    return ModelServer(pipeline, manifest, max_detections)


def bls_call(role: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    """One BLS request to the repository's model of `role`; its outputs in host memory."""
    import triton_python_backend_utils as pb_utils

    request = pb_utils.InferenceRequest(
        model_name=ENGINE_PREFIX + role,
        inputs=[
            pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in feeds.items()
        ],
        requested_output_names=outputs,
        preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
    )
    response = request.exec()
    if response.has_error():
        raise RuntimeError(f"the {role} model failed: {response.error().message()}")
    return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]


class TritonPythonModel:
    """Triton's Python-backend entry points."""

    def initialize(self, args: dict[str, str]) -> None:
        """Open the pipeline on the manifest beside this file (version folder)."""
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        rows = int(config["parameters"]["max_detections"]["string_value"])
        self.server = model_server(folder, bls_call, rows)

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request: the outputs, or an error naming the problem."""
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            inputs = {}
            for name in INPUTS:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    inputs[name] = tensor.as_numpy()
            try:
                outputs = self.server.answer(inputs)
            except RequestError as error:
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(str(error))
                    )
                )
                continue
            tensors = [pb_utils.Tensor(name, outputs[name]) for name in OUTPUTS]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
