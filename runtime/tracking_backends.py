"""The backends behind ``TrackerRefiner``: the exported tracking graphs in ONNX Runtime or as
TensorRT engines (``iounet build-engine``), or the PyTorch model (``TrackingNet``) with the
PrRoIPool ops on the plain PyTorch kernels, the native CPU kernels or the CUDA library.

Every backend computes the box gradient without autograd (``AtomIoUNet.iou_and_box_gradient``,
exported in the step graphs) and refines with the one step function of
``iounet.export.tracking_refine``. Tensors cross the interface as torch tensors; modulation
vectors and IoU features stay in the backend's own form.
"""

from __future__ import annotations

import abc
import contextlib
import os
from collections.abc import Iterator
from typing import Generic, TypeVar

import numpy as np
import torch
from torch import Tensor

from iounet.export.manifest_format import check_exported_from
from iounet.export.tracking_manifest import TRACKING_ROLES, TrackingManifest
from iounet.export.tracking_refine import TrackingStep, eager_step
from iounet.plugins.trt_loader import import_tensorrt
from iounet.runtime.names import TRACKING_BACKENDS, check_backend
from iounet.runtime.ort_backend import NamedArrays
from iounet.runtime.trt_backend import NamedTensors, open_engines
from iounet.training.tracking_model import Pair, TrackingNet

#: The modulation vectors and the IoU features, in the form a backend keeps them.
VectorsT = TypeVar("VectorsT")


class TrackingBackend(abc.ABC, Generic[VectorsT]):
    """The stages of a tracking IoU-Net on one device."""

    name: str = ""
    device: torch.device = torch.device("cpu")

    @abc.abstractmethod
    def backbone(self, image: Tensor) -> Pair:
        """crop (1, 3, H, W) RGB in [0, 1] -> (layer2, layer3)."""

    @abc.abstractmethod
    def modulation(self, layers: Pair, box: Tensor) -> VectorsT:
        """Reference layer2, layer3 and the target box (1, 4) x, y, w, h -> modulation."""

    @abc.abstractmethod
    def iou_features(self, layers: Pair) -> VectorsT:
        """Test layer2, layer3 -> the IoU features."""

    @abc.abstractmethod
    def predict_iou(self, modulation: VectorsT, features: VectorsT, proposals: Tensor) -> Tensor:
        """IoU (K,) of proposals (K, 4) x, y, w, h."""

    @abc.abstractmethod
    def iou_and_grad(self, modulation: VectorsT, features: VectorsT, proposals: Tensor) -> Pair:
        """IoU (K,) and its gradient w.r.t. x, y, w, h (K, 4)."""

    @abc.abstractmethod
    def step(self, modulation: VectorsT, features: VectorsT, parametrization: str) -> TrackingStep:
        """One refinement step of `parametrization`: (state, sz_norm, step) -> (the state after
        the step, the IoU at the state) (see ``iounet.export.tracking_refine``)."""


class TorchTrackingBackend(TrackingBackend[Pair]):
    """``TrackingNet`` in eval mode; `pool`: "pytorch" (plain PyTorch PrRoIPool kernels), "native"
    (the native CPU kernels) or "cuda" (the CUDA library on a GPU)."""

    def __init__(self, model: TrackingNet, pool: str = "pytorch") -> None:
        from iounet.plugins import cuda, native

        names = {"pytorch": "torch", "native": "torch-native", "cuda": "torch-cuda"}
        if pool not in names:
            raise ValueError(f"pool must be one of {sorted(names)}, got {pool!r}")
        self.name = names[pool]
        self.reference = pool == "pytorch"
        if pool == "native":
            native.load_library()
        if pool == "cuda":
            if not torch.cuda.is_available():
                raise ValueError("the torch-cuda backend needs a CUDA device (none is visible)")
            self.device = torch.device("cuda", torch.cuda.current_device())
            if not cuda.available(self.device):
                cuda.load_library()  # raises saying how to build it when it is missing
                raise ValueError("the CUDA library cannot run on this GPU: rebuild it for it")
        self.model = model.to(self.device).eval()

    @contextlib.contextmanager
    def _kernels(self) -> Iterator[None]:
        from iounet.plugins import reference_kernels

        with torch.no_grad(), reference_kernels() if self.reference else contextlib.nullcontext():
            yield

    def backbone(self, image: Tensor) -> Pair:
        with self._kernels():
            return self.model.feature_extractor(image.to(self.device, torch.float32))

    def modulation(self, layers: Pair, box: Tensor) -> Pair:
        with self._kernels():
            return self.model.bb_regressor.get_modulation(self._on(layers), box.to(self.device))

    def iou_features(self, layers: Pair) -> Pair:
        with self._kernels():
            return self.model.bb_regressor.get_iou_feat(self._on(layers))

    def predict_iou(self, modulation: Pair, features: Pair, proposals: Tensor) -> Tensor:
        with self._kernels():
            boxes = proposals.to(self.device)[None]
            return self.model.bb_regressor.predict_iou(modulation, features, boxes)[0]

    def iou_and_grad(self, modulation: Pair, features: Pair, proposals: Tensor) -> Pair:
        with self._kernels():
            boxes = proposals.to(self.device)[None]
            iou, grad = self.model.bb_regressor.iou_and_box_gradient(modulation, features, boxes)
            return iou[0], grad[0]

    def step(self, modulation: Pair, features: Pair, parametrization: str) -> TrackingStep:
        def objective(boxes: Tensor) -> Pair:
            return self.iou_and_grad(modulation, features, boxes)

        inner = eager_step(objective, parametrization)

        def run(state: Tensor, sz_norm: Tensor, step: Tensor) -> Pair:
            with self._kernels():
                return inner(state.to(self.device), sz_norm.to(self.device), step.to(self.device))

        return run

    def _on(self, layers: Pair) -> Pair:
        return tuple(t.to(self.device, torch.float32) for t in layers)  # type: ignore[return-value]


class OrtTrackingBackend(TrackingBackend[NamedArrays]):
    """The exported tracking graphs in ONNX Runtime sessions on the CPU (PrRoIPool nodes on the
    native kernels)."""

    name = "ort"

    def __init__(self, manifest: TrackingManifest, threads: int | None = None) -> None:
        from iounet.plugins import onnxruntime_session
        from iounet.runtime.ort_backend import session_options

        self.manifest = manifest
        self.sessions = {
            role: onnxruntime_session(
                manifest.graph_path(role), sess_options=session_options(threads)
            )
            for role in TRACKING_ROLES
        }

    def backbone(self, image: Tensor) -> Pair:
        layer2, layer3 = self.sessions["backbone"].run(None, {"image": _array(image)})
        return torch.from_numpy(layer2), torch.from_numpy(layer3)

    def modulation(self, layers: Pair, box: Tensor) -> NamedArrays:
        feeds = {"layer2": _array(layers[0]), "layer3": _array(layers[1]), "box": _array(box)}
        mod3, mod4 = self.sessions["modulation"].run(None, feeds)
        return {"modulation3": mod3, "modulation4": mod4}

    def iou_features(self, layers: Pair) -> NamedArrays:
        feeds = {"layer2": _array(layers[0]), "layer3": _array(layers[1])}
        feat3, feat4 = self.sessions["iou_feat"].run(None, feeds)
        return {"feat3": feat3, "feat4": feat4}

    def predict_iou(
        self, modulation: NamedArrays, features: NamedArrays, proposals: Tensor
    ) -> Tensor:
        feeds = {**modulation, **features, "proposals": _array(proposals)}
        (iou,) = self.sessions["predict_iou"].run(None, feeds)
        return torch.from_numpy(iou)

    def iou_and_grad(
        self, modulation: NamedArrays, features: NamedArrays, proposals: Tensor
    ) -> Pair:
        feeds = {**modulation, **features, "proposals": _array(proposals)}
        iou, grad = self.sessions["iou_grad"].run(None, feeds)
        return torch.from_numpy(iou), torch.from_numpy(grad)

    def step(
        self, modulation: NamedArrays, features: NamedArrays, parametrization: str
    ) -> TrackingStep:
        session = self.sessions[f"refine_step_{parametrization}"]
        feeds = {**modulation, **features}
        state_name = "boxes" if parametrization == "atom" else "rel"

        def run(state: Tensor, sz_norm: Tensor, step: Tensor) -> Pair:
            feeds[state_name] = _array(state)
            feeds["step"] = _array(step)
            if parametrization == "relative":
                feeds["sz_norm"] = _array(sz_norm)
            after, iou = session.run(None, feeds)
            return torch.from_numpy(after), torch.from_numpy(iou)

        return run


class TensorRTTrackingBackend(TrackingBackend[NamedTensors]):
    """The TensorRT engines of ``iounet build-engine`` on a tracking model folder, on the current
    GPU: torch CUDA tensors as the engines' device buffers, every call enqueued on the current
    stream. A refinement step is one call of the ``refine_step_*`` engine on the previous step's
    device tensors, so the loop never waits for the GPU; shapes outside an engine's profile are
    refused (ValueError with the rebuild hint) before anything is copied to the device."""

    name = "trt"

    def __init__(self, manifest: TrackingManifest, precision: str = "fp32") -> None:
        import_tensorrt()  # without TensorRT, say what to install before anything else
        if not torch.cuda.is_available():
            raise ValueError("the trt backend needs a CUDA device (none is visible)")
        self.manifest = manifest
        self.metadata, self.engines = open_engines(manifest, precision, TRACKING_ROLES)
        self.device = torch.device("cuda", torch.cuda.current_device())

    def _run(self, role: str, inputs: NamedTensors) -> NamedTensors:
        engine = self.engines[role]
        engine.check(inputs)
        return engine.run(
            {
                name: tensor.to(self.device, engine.dtypes[name]).contiguous()
                for name, tensor in inputs.items()
            }
        )

    def backbone(self, image: Tensor) -> Pair:
        outputs = self._run("backbone", {"image": image})
        return outputs["layer2"], outputs["layer3"]

    def modulation(self, layers: Pair, box: Tensor) -> NamedTensors:
        inputs = {"layer2": layers[0], "layer3": layers[1], "box": box}
        outputs = self._run("modulation", inputs)
        return {"modulation3": outputs["modulation3"], "modulation4": outputs["modulation4"]}

    def iou_features(self, layers: Pair) -> NamedTensors:
        outputs = self._run("iou_feat", {"layer2": layers[0], "layer3": layers[1]})
        return {"feat3": outputs["feat3"], "feat4": outputs["feat4"]}

    def predict_iou(
        self, modulation: NamedTensors, features: NamedTensors, proposals: Tensor
    ) -> Tensor:
        inputs = {**modulation, **features, "proposals": proposals}
        return self._run("predict_iou", inputs)["iou"]

    def iou_and_grad(
        self, modulation: NamedTensors, features: NamedTensors, proposals: Tensor
    ) -> Pair:
        outputs = self._run("iou_grad", {**modulation, **features, "proposals": proposals})
        return outputs["iou"], outputs["grad"]

    def step(
        self, modulation: NamedTensors, features: NamedTensors, parametrization: str
    ) -> TrackingStep:
        role = f"refine_step_{parametrization}"
        state_name = "boxes" if parametrization == "atom" else "rel"

        def run(state: Tensor, sz_norm: Tensor, step: Tensor) -> Pair:
            inputs = {**modulation, **features, state_name: state, "step": step}
            if parametrization == "relative":
                inputs["sz_norm"] = sz_norm
            outputs = self._run(role, inputs)
            return outputs[f"{state_name}_next"], outputs["iou"]

        return run


def open_tracking_backend(
    manifest: TrackingManifest,
    name: str,
    checkpoint: str | os.PathLike | None = None,
    threads: int | None = None,
) -> TrackingBackend:
    """The backend `name` (one of ``TRACKING_BACKENDS``) on an exported tracking model (PyTorch
    backends need its checkpoint; "trt" the engines ``iounet build-engine`` built in the folder)."""
    check_backend(name, TRACKING_BACKENDS)
    if name == "ort":
        return OrtTrackingBackend(manifest, threads)
    if name == "trt":
        return TensorRTTrackingBackend(manifest)
    if checkpoint is None:
        raise ValueError(f"the {name} backend needs the pytracking checkpoint (checkpoint=...)")
    from iounet.training.pytracking_checkpoint import load_pytracking_checkpoint

    check_exported_from(manifest, checkpoint)
    found = load_pytracking_checkpoint(checkpoint)
    model = TrackingNet.from_state_dict(found.state, str(checkpoint)).float()
    pool = {"torch": "pytorch", "torch-native": "native", "torch-cuda": "cuda"}[name]
    return TorchTrackingBackend(model, pool)


def _array(tensor: Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())
