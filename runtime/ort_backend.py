"""An exported model in ONNX Runtime: on the CPU (the default) or with the CUDA provider.

The PrRoIPool nodes run on the native CPU kernels (``iounet.plugins.onnxruntime_session``); with
the CUDA provider the rest of the graph runs on the GPU and ONNX Runtime moves the PrRoIPool
inputs and outputs through host memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import Tensor

from iounet.export.manifest import ROLE_OUTPUTS, Manifest, load_manifest
from iounet.runtime.backend import Backend
from iounet.runtime.refinement import RefineState, Step, StepSettings

if TYPE_CHECKING:
    import onnxruntime

DEVICES = ("cpu", "cuda")


#: Arrays by name: a session's feeds or outputs (the FPN maps of this backend).
NamedArrays = dict[str, np.ndarray]


class Session(Protocol):
    """What the backend runs a graph with: ONNX Runtime's ``InferenceSession.run``."""

    def run(self, output_names: list[str] | None, input_feed: NamedArrays) -> list[np.ndarray]: ...


class OnnxRuntimeBackend(Backend[NamedArrays]):
    """The graphs of an exported model folder in ONNX Runtime sessions (the detector's too when
    the folder holds them)."""

    def __init__(
        self,
        model_dir: str | os.PathLike | Manifest,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        from iounet.plugins import onnxruntime_session

        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        manifest = model_dir if isinstance(model_dir, Manifest) else load_manifest(model_dir)
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError(
                    "ONNX Runtime has no CUDA provider here: on a GPU machine install "
                    "onnxruntime-gpu (`pip install -e .[gpu]`)"
                )
            providers.insert(0, "CUDAExecutionProvider")
        sessions = {
            role: onnxruntime_session(
                manifest.graph_path(role),
                sess_options=session_options(threads),
                providers=providers,
            )
            for role in manifest.roles()
        }
        for role, session in sessions.items():
            names = [output.name for output in session.get_outputs()]
            expected = [spec.name for spec in manifest.graph(role).outputs] or list(
                ROLE_OUTPUTS.get(role, manifest.map_names)
            )
            if names != expected:
                raise ValueError(
                    f"{manifest.graph_path(role)} has outputs {names}, but the manifest's "
                    f"{role} graph has {expected} (graphs swapped?)"
                )
        name = "ort" if device == "cpu" else "ort-cuda"
        on_gpu = device == "cuda" and torch.cuda.is_available()
        self.use_sessions(manifest, sessions, name, torch.device("cuda" if on_gpu else "cpu"))

    def use_sessions(
        self, manifest: Manifest, sessions: Mapping[str, Session], name: str, device: torch.device
    ) -> None:
        """Run the graphs of `manifest` by `sessions` (one per role, each with ONNX Runtime's
        ``run(output_names, feeds)``), as the backend `name` on `device`."""
        self.manifest = manifest
        self.refinement = manifest.refinement
        self.name = name
        self.device = device
        self.sessions = dict(sessions)
        self.has_detector = manifest.has_detector

    def features(self, image: Tensor) -> NamedArrays:
        _check_image(image)
        maps = self.sessions["backbone"].run(None, {"image": _array(image)})
        return dict(zip(self.manifest.map_names, maps, strict=True))

    def proposals(self, features: NamedArrays, image_size: tuple[int, int]) -> Tensor:
        if not self.has_detector:
            raise ValueError(self._no_detector())
        feeds = {name: features[name] for name in self.manifest.map_names}
        feeds["image_size"] = np.array(image_size, dtype=np.float32)
        (proposals,) = self._run_graph("rpn", feeds)
        return self._tensor(proposals)

    def raw_detections(
        self, features: NamedArrays, proposals: Tensor, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        if not self.has_detector:
            raise ValueError(self._no_detector())
        if len(proposals) == 0:
            empty = torch.zeros(0, device=self.device)
            labels = torch.zeros(0, dtype=torch.int64, device=self.device)
            return empty.reshape(0, 4), empty, labels
        feeds = {name: features[name] for name in self.manifest.map_names}
        feeds["proposals"] = _array(proposals)
        feeds["image_size"] = np.array(image_size, dtype=np.float32)
        boxes, scores, labels = self._run_graph("box_head", feeds)
        return self._tensor(boxes), self._tensor(scores), self._tensor(labels)

    def iou(self, features: NamedArrays, rois: Tensor, labels: Tensor) -> Tensor:
        feeds = self._box_feeds(features, rois, labels)
        if feeds is None:
            return torch.zeros(0, device=self.device)
        (iou,) = self._run("head", feeds, len(rois))
        return self._tensor(iou)

    def iou_and_grad(
        self, features: NamedArrays, rois: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        feeds = self._box_feeds(features, rois, labels)
        if feeds is None:
            return torch.zeros(0, device=self.device), torch.zeros((0, 4), device=self.device)
        iou, grad = self._run("iou_grad", feeds, len(rois))
        return self._tensor(iou), self._tensor(grad)

    @property
    def synchronous_steps(self) -> bool:
        """Always: a session run returns its outputs in host memory."""
        return True

    def fused_step(self, features: NamedArrays, labels: Tensor) -> Step:
        """One run of the refine_step graph per step."""
        feeds = {name: features[name] for name in self.manifest.map_names}
        feeds["labels"] = labels.detach().cpu().numpy().astype(np.int64)

        def step(state: RefineState, settings: StepSettings) -> RefineState:
            count = len(state.boxes)
            rois = torch.cat([state.boxes.new_zeros((count, 1)), state.boxes], dim=1)
            given = {"rois": rois, "iou": state.iou, "grad": state.grad, **settings.feeds()}
            feeds.update({name: _array(value) for name, value in given.items()})
            feeds["active"] = state.active.cpu().numpy()
            moved, iou, grad, active = self._run("refine_step", feeds, count)
            arrays = (moved[:, 1:], iou, grad, active)
            return RefineState(*(self._tensor(array) for array in arrays))

        return step

    def _box_feeds(self, features: NamedArrays, rois: Tensor, labels: Tensor) -> NamedArrays | None:
        if rois.dim() != 2 or rois.shape[1] != 5:
            raise ValueError(f"rois must have shape (K, 5), got {tuple(rois.shape)}")
        if labels.shape != (rois.shape[0],):
            raise ValueError(
                f"labels must have shape ({rois.shape[0]},), got {tuple(labels.shape)}"
            )
        if rois.shape[0] == 0:
            return None
        self._check_box_count(rois.shape[0])
        if labels.numel() and (
            int(labels.min()) < 0 or int(labels.max()) >= self.manifest.num_classes
        ):
            raise ValueError(
                f"labels must lie in [0, {self.manifest.num_classes - 1}] "
                f"({self.manifest.num_classes} classes)"
            )
        feeds = {name: features[name] for name in self.manifest.map_names}
        feeds["rois"] = _array(rois)
        feeds["labels"] = labels.detach().cpu().numpy().astype(np.int64)
        return feeds

    def _check_box_count(self, count: int) -> None:
        """ValueError when one node's pooled output for `count` boxes would exceed what the
        PrRoIPool ops compute (``MAX_OUTPUT_BYTES``): the op would refuse it."""
        from iounet.plugins.onnxruntime import MAX_OUTPUT_BYTES

        manifest = self.manifest
        pooled = count * manifest.fpn_channels * manifest.pool_size**2 * 4
        if pooled > MAX_OUTPUT_BYTES:
            raise ValueError(
                f"{count} boxes in one call need {pooled} bytes per PrRoIPool node, over the "
                f"ops' limit of {MAX_OUTPUT_BYTES}: split them (Pipeline does, by its "
                "memory_budget)"
            )

    def _run_graph(self, role: str, feeds: NamedArrays) -> list[np.ndarray]:
        try:
            return self.sessions[role].run(None, feeds)
        except Exception as error:  # ONNX Runtime raises its own exception types
            raise RuntimeError(f"ONNX Runtime failed on the {role} graph: {error}") from error

    def _run(self, role: str, feeds: NamedArrays, rows: int) -> list[np.ndarray]:
        """The session's outputs, each checked to have `rows` rows (a PrRoIPool op that could
        not compute its output returns an empty one; that is an error here, not a result)."""
        outputs = self._run_graph(role, feeds)
        for output in outputs:
            if output.ndim == 0 or output.shape[0] != rows:
                raise RuntimeError(
                    f"the {role} graph gave an output of shape {output.shape} for {rows} boxes "
                    "(a PrRoIPool node could not compute its output: see the log)"
                )
        return outputs

    def _tensor(self, array: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)


def _check_image(image: Tensor) -> None:
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(
            f"image must have shape (1, 3, H, W) (one RGB image), got {tuple(image.shape)}"
        )
    if min(image.shape[2:]) < 32:
        raise ValueError(f"image must be at least 32x32 pixels, got {tuple(image.shape[2:])}")


def _array(tensor: Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())


def session_options(threads: int | None) -> onnxruntime.SessionOptions:
    """Fresh session options (each session registers the custom-op library on its own).

    ONNX Runtime's idle workers spin by default; they would take the cores from the native
    PrRoIPool threads that run inside the graph (3.9 ms instead of 6.8 ms per IoU-and-gradient
    call for 100 boxes on 2 cores with spinning off).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    return options
