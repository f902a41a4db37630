"""The small interface every inference backend implements (PyTorch, ONNX Runtime, TensorRT).

A backend holds the four graphs of an exported model (see ``iounet.export.graphs``) and runs
them on its device. Tensors cross the interface as torch tensors on ``backend.device``; the
FPN maps stay in whatever form the backend keeps them (``Features``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from iounet.export.refine_step import RefineParams
from iounet.runtime.refinement import refine_boxes

__all__ = ["Backend", "Features", "RefineParams", "StepHook"]

#: FPN maps p2..p5 of one image batch, in the backend's own form.
Features = Any
#: Called with the step index after the IoU and gradient at the start (0) and after each step.
StepHook = Callable[[int], None]


class Backend(abc.ABC):
    """Backbone, IoU head and refinement of one model on one device."""

    #: Short name used on the command line and in benchmark tables ("torch", "ort", "trt").
    name: str = ""
    device: torch.device = torch.device("cpu")
    #: The most boxes one call may take (a TensorRT engine's profile), or None for no limit.
    max_boxes: int | None = None
    #: Whether the model holds the detector (``proposals`` and ``raw_detections`` run).
    has_detector: bool = False

    @abc.abstractmethod
    def features(self, image: Tensor) -> Features:
        """FPN maps of ``image`` (N, 3, H, W) float32 RGB in [0, 1] (any device)."""

    @abc.abstractmethod
    def iou(self, features: Features, rois: Tensor, labels: Tensor) -> Tensor:
        """Predicted IoU in [0, 1] (K,) of rois (K, 5) with class labels (K,)."""

    @abc.abstractmethod
    def iou_and_grad(
        self, features: Features, rois: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Unclamped IoU (K,) and its gradient w.r.t. the box corners (K, 4)."""

    def proposals(self, features: Features, image_size: tuple[int, int]) -> Tensor:
        """The detector's proposals (P, 4) of image 0 (``image_size`` = (height, width) before
        padding), most objective first. Only on a model exported from a joint IoU-Net."""
        raise ValueError(self._no_detector())

    def raw_detections(
        self, features: Features, proposals: Tensor, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The box head's raw detections of image 0 before NMS: boxes (D, 4), scores (D,),
        labels (D,), most confident first, padded at the end with the manifest's padding score
        (``iounet.training.joint_model.drop_padding``)."""
        raise ValueError(self._no_detector())

    def _no_detector(self) -> str:
        return (
            f"the {self.name} backend's model has no detector: export a joint IoU-Net (recipe "
            "joint-*) to run on images alone, or pass the raw detections"
        )

    def refine(
        self,
        features: Features,
        boxes: Tensor,
        labels: Tensor,
        image_size: tuple[int, int],
        params: RefineParams | None = None,
        on_step: StepHook | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Algorithm 2 on boxes (K, 4) of image 0 (``image_size`` = (height, width)): the refined
        boxes and their IoU, on ``self.device``.

        ``on_step(i)`` is called after the IoU and gradient at the start (i = 0) and after each
        step i; a backend may stop early once no box is active (the result is the same). This
        default calls ``refine_boxes`` with ``iou_and_grad`` as the objective; backends with the
        fused step graph override it.
        """
        params = params or RefineParams()
        labels = labels.to(self.device)
        calls = 0

        def objective(current: Tensor) -> tuple[Tensor, Tensor]:
            nonlocal calls
            rois = torch.cat([current.new_zeros((len(current), 1)), current], dim=1)
            result = self.iou_and_grad(features, rois, labels)
            if on_step is not None:
                on_step(calls)
            calls += 1
            return result

        return refine_boxes(
            boxes.to(self.device, torch.float32),
            objective,
            step=params.step,
            iterations=params.iterations,
            early_stop=params.early_stop,
            degrade_tolerance=params.degrade_tolerance,
            image_size=image_size,
        )

    def synchronize(self) -> None:  # noqa: B027 - nothing to wait for on the CPU
        """Wait for the work queued on the device (for timing)."""
