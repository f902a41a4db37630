"""The small interface every inference backend implements (PyTorch, ONNX Runtime, TensorRT).

A backend holds the four graphs of an exported model (see ``iounet.export.graphs``) and runs
them on its device. Tensors cross the interface as torch tensors on ``backend.device``; the
FPN maps stay in whatever form the backend keeps them: ``Backend[FeaturesT]`` is generic over
that form (``Maps`` for the PyTorch and TensorRT backends, numpy arrays by name for ONNX
Runtime).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Generic, TypeVar

import torch
from torch import Tensor

from iounet.export.refine_step import RefineParams
from iounet.runtime.refinement import (
    Objective,
    Refined,
    Step,
    StepHook,
    StepSettings,
    algorithm2_settings,
    run_algorithm2,
)

__all__ = ["Backend", "FeaturesT", "Maps", "RefineParams", "Refined", "StepHook"]

#: The FPN maps p2..p5 of one image batch, in the form a backend keeps them.
FeaturesT = TypeVar("FeaturesT")
#: FPN maps p2..p5 as torch tensors on the backend's device.
Maps = Sequence[Tensor]


class Backend(abc.ABC, Generic[FeaturesT]):
    """Backbone, IoU head and refinement of one model on one device."""

    #: Short name used on the command line and in benchmark tables ("torch", "ort", "trt").
    name: str = ""
    device: torch.device = torch.device("cpu")
    #: The most boxes one call may take (a TensorRT engine's profile), or None for no limit.
    max_boxes: int | None = None
    #: Whether the model holds the detector (``proposals`` and ``raw_detections`` run).
    has_detector: bool = False
    #: Algorithm 2's settings where ``refine`` is given none: the model's manifest's (a backend
    #: on a model without one: those export writes).
    refinement: RefineParams = RefineParams()

    @abc.abstractmethod
    def features(self, image: Tensor) -> FeaturesT:
        """FPN maps of ``image`` (N, 3, H, W) float32 RGB in [0, 1] (any device)."""

    @abc.abstractmethod
    def iou(self, features: FeaturesT, rois: Tensor, labels: Tensor) -> Tensor:
        """Predicted IoU in [0, 1] (K,) of rois (K, 5) with class labels (K,)."""

    @abc.abstractmethod
    def iou_and_grad(
        self, features: FeaturesT, rois: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Unclamped IoU (K,) and its gradient w.r.t. the box corners (K, 4)."""

    def proposals(self, features: FeaturesT, image_size: tuple[int, int]) -> Tensor:
        """The detector's proposals (P, 4) of image 0 (``image_size`` = (height, width) before
        padding), most objective first. Only on a model exported from a joint IoU-Net."""
        raise ValueError(self._no_detector())

    def raw_detections(
        self, features: FeaturesT, proposals: Tensor, image_size: tuple[int, int]
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
        features: FeaturesT,
        boxes: Tensor,
        labels: Tensor,
        image_size: tuple[int, int],
        params: RefineParams | None = None,
        on_step: StepHook | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Algorithm 2 on boxes (K, 4) of image 0 (``image_size`` = (height, width)): the refined
        boxes and their IoU, on ``self.device``; `params` default to ``self.refinement``.

        ``on_step(i)`` is called after the IoU and gradient at the start (i = 0) and after each
        step i; with ``synchronous_steps`` the steps end once no box is active (the result is
        the same). The steps are the backend's fused step where it has one (see ``refined``).
        """
        refined = self.refined(features, boxes, labels, image_size, params, on_step)
        return refined.boxes, refined.iou

    def refined(
        self,
        features: FeaturesT,
        boxes: Tensor,
        labels: Tensor,
        image_size: tuple[int, int],
        params: RefineParams | None = None,
        on_step: StepHook | None = None,
        fused: bool = True,
    ) -> Refined:
        """``refine``'s boxes and IoU with the number of steps each box took: with `fused`, the
        backend's whole refinement in one replay where it has one and ``on_step`` is not given
        (``replayed``), else on its fused step where it has one (``fused_step``), else stepping
        with ``iou_and_grad``."""
        params = params or self.refinement
        boxes = boxes.to(self.device, torch.float32)
        settings = algorithm2_settings(params, image_size, boxes)
        if len(boxes) == 0:
            empty = torch.zeros(0, device=self.device)
            return Refined(boxes.clone(), empty, empty.long())
        labels = labels.to(self.device)
        if fused and on_step is None:
            replayed = self.replayed(features, boxes, labels, settings, params.iterations)
            if replayed is not None:
                return replayed
        step = self.fused_step(features, labels) if fused else None
        objective = self.box_objective(features, labels)
        return run_algorithm2(
            boxes, objective, settings, params.iterations, step, on_step, self.synchronous_steps
        )

    @property
    def synchronous_steps(self) -> bool:
        """Whether a refinement step has finished when it returns (on the CPU), so that
        ``refine`` can end once no box is active without waiting for the device."""
        return self.device.type == "cpu"

    def box_objective(self, features: FeaturesT, labels: Tensor) -> Objective:
        """``iou_and_grad`` of boxes (K, 4) of image 0 with class `labels` (K,)."""

        def objective(boxes: Tensor) -> tuple[Tensor, Tensor]:
            rois = torch.cat([boxes.new_zeros((len(boxes), 1)), boxes], dim=1)
            return self.iou_and_grad(features, rois, labels)

        return objective

    def fused_step(self, features: FeaturesT, labels: Tensor) -> Step | None:
        """The backend's own step of Algorithm 2 for boxes with class `labels`, one graph or
        engine call computing ``refine_step``; None where it has none."""
        return None

    def replayed(
        self,
        features: FeaturesT,
        boxes: Tensor,
        labels: Tensor,
        settings: StepSettings,
        iterations: int,
    ) -> Refined | None:
        """The whole of Algorithm 2 on boxes (K, 4) and their labels (K,) on this device, as one
        replay of work the backend recorded (``run_algorithm2`` computes the same); None where
        it has none."""
        return None

    def synchronize(self) -> None:
        """Wait for the work queued on the device (for timing); on the CPU there is none."""
