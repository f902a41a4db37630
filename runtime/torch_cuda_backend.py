"""The PyTorch model on a GPU with our CUDA kernels: the backend for machines without TensorRT.

PrRoIPool runs on the CUDA library (``iounet.plugins.cuda``) through the registered ops, the box
gradient is the head's written-out backward (``IoUHead.iou_and_box_gradient``, no autograd), and
the refinement (the IoU and gradient at the start, then the steps of Algorithm 2) is captured
once per input shape as a CUDA graph and replayed per image: no host synchronization until the
results are read.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from iounet.export.refine_step import RefineParams
from iounet.plugins import cuda
from iounet.runtime.backend import Maps
from iounet.runtime.refinement import (
    Refined,
    StepSettings,
    run_algorithm2,
)
from iounet.runtime.torch_backend import DetectorStages
from iounet.training.joint_model import JointIoUNet
from iounet.training.model import IoUNet

#: Captured refinement graphs kept per backend (one per box count and map size); the oldest goes.
GRAPH_CACHE = 8


@dataclass
class _Captured:
    """A captured refinement: its graph and the static tensors it reads and writes."""

    graph: torch.cuda.CUDAGraph
    maps: tuple[Tensor, ...]
    boxes: Tensor
    labels: Tensor
    settings: StepSettings
    refined: Refined


class TorchCudaBackend(DetectorStages):
    """An ``IoUNet`` (or a ``JointIoUNet``, detector included) in eval mode on a CUDA device,
    PrRoIPool on the CUDA library; `refinement`: Algorithm 2's settings where ``refine`` is given
    none (the model folder's manifest's)."""

    name = "torch-cuda"

    def __init__(
        self,
        model: IoUNet | JointIoUNet,
        device: str | torch.device = "cuda",
        graphs: bool = True,
        refinement: RefineParams | None = None,
    ) -> None:
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise ValueError("the torch-cuda backend needs a CUDA device (none is visible)")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if not cuda.available(self.device):
            cuda.load_library()  # raises saying how to build it when it is missing
            raise ValueError(
                f"the CUDA library cannot run on {torch.cuda.get_device_name(self.device)}: "
                "rebuild it for this GPU's architecture (make native CUDA_ARCHS=...)"
            )
        if model.head is None:
            raise ValueError("the model has no IoU branch (an FPN baseline): nothing to run")
        self.model = model.to(self.device).eval()
        self.has_detector = isinstance(model, JointIoUNet)
        self.graphs = graphs
        self.refinement = refinement or self.refinement
        self._captured: collections.OrderedDict[tuple, _Captured] = collections.OrderedDict()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cuda",
        graphs: bool = True,
        refinement: RefineParams | None = None,
    ) -> TorchCudaBackend:
        from iounet.training.checkpoint import load_model

        model, _ = load_model(path, "cpu")
        return cls(model, device, graphs, refinement)

    @torch.no_grad()
    def features(self, image: Tensor) -> Maps:
        return tuple(self.model.backbone(image.to(self.device, torch.float32)))

    @torch.no_grad()
    def iou(self, features: Maps, rois: Tensor, labels: Tensor) -> Tensor:
        return self.model.head.iou(features, rois.to(self.device), labels.to(self.device))

    @torch.no_grad()
    def iou_and_grad(self, features: Maps, rois: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.head.iou_and_box_gradient(
            features, rois.to(self.device), labels.to(self.device)
        )

    @torch.no_grad()
    def replayed(
        self,
        features: Maps,
        boxes: Tensor,
        labels: Tensor,
        settings: StepSettings,
        iterations: int,
    ) -> Refined | None:
        """With ``graphs``, the whole refinement as one CUDA graph replay (captured once per
        input shape); without, None (the steps run one by one)."""
        if not self.graphs:
            return None
        labels = labels.to(torch.int64)
        captured = self._capture(tuple(features), boxes, labels, iterations)
        for static, value in zip(captured.maps, features, strict=True):
            static.copy_(value)
        captured.boxes.copy_(boxes)
        captured.labels.copy_(labels)
        static_settings = captured.settings.feeds()
        for name, value in settings.feeds().items():
            static_settings[name].copy_(value)
        captured.graph.replay()
        out = captured.refined
        return Refined(out.boxes.clone(), out.iou.clone(), out.steps.clone())

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def _capture(
        self, maps: tuple[Tensor, ...], boxes: Tensor, labels: Tensor, iterations: int
    ) -> _Captured:
        key = (tuple(m.shape for m in maps), maps[0].dtype, len(boxes), iterations)
        if key in self._captured:
            self._captured.move_to_end(key)
            return self._captured[key]
        static_maps = tuple(m.clone() for m in maps)
        static_boxes, static_labels = boxes.clone(), labels.clone()

        def zeros(size: int) -> Tensor:
            return torch.zeros(size, device=self.device)

        settings = StepSettings(zeros(1), zeros(1), zeros(1), upper=zeros(4))
        objective = self.box_objective(static_maps, static_labels)

        def run() -> Refined:
            return run_algorithm2(static_boxes, objective, settings, iterations)

        side = torch.cuda.Stream(self.device)  # warm up off the default stream, as capture needs
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            refined = run()
        captured = _Captured(graph, static_maps, static_boxes, static_labels, settings, refined)
        self._captured[key] = captured
        if len(self._captured) > GRAPH_CACHE:
            self._captured.popitem(last=False)
        return captured
