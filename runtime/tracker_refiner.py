"""``TrackerRefiner``: pytracking's IoU-Net box refinement (ATOM, DiMP, PrDiMP) per frame, on an
exported tracking model, without autograd.

```python
refiner = TrackerRefiner.from_model("runs/atom")        # ONNX Runtime on the CPU
refiner.initialize(refiner.backbone(first_crop), box)   # box (4,) x, y, w, h in the crop
boxes, ious = refiner.refine(refiner.backbone(crop), proposals)
```

``refine`` is pytracking's ``optimize_boxes`` ("atom", ATOM and DiMP) or
``optimize_boxes_relative`` ("relative", PrDiMP): the final boxes and the IoUs of the last
forward pass. IoUs are the network's raw output, as in pytracking.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from iounet.export.tracking_manifest import TrackingManifest, load_tracking_manifest
from iounet.export.tracking_refine import (
    TrackingRefineParams,
    TrackingStep,
    rect_to_rel,
    rel_to_rect,
    step_pair,
    step_vector,
)
from iounet.runtime.refinement import RefineState, StepSettings, run_refinement
from iounet.runtime.tracking_backends import TrackingBackend, open_tracking_backend
from iounet.training.tracking_model import Pair


@dataclass(frozen=True)
class TrackFeatures:
    """The IoU features of one test frame (``TrackerRefiner.iou_features``), reusable for
    ``predict_iou`` and ``refine`` on that frame."""

    value: object


class TrackerRefiner:
    """The IoU-Net of one tracked target on one backend (``iounet.runtime.tracking_backends``)."""

    def __init__(self, backend: TrackingBackend, manifest: TrackingManifest) -> None:
        self.backend = backend
        self.manifest = manifest
        self._modulation: object = None

    @classmethod
    def from_model(
        cls,
        model_dir: str | os.PathLike,
        backend: str = "ort",
        *,
        checkpoint: str | os.PathLike | None = None,
        threads: int | None = None,
    ) -> TrackerRefiner:
        """A refiner on an exported tracking model folder: backend "ort" (default), "trt" (the
        folder's TensorRT engines, ``iounet build-engine``), or "torch", "torch-native",
        "torch-cuda" with ``checkpoint=`` the pytracking file it came from."""
        manifest = load_tracking_manifest(model_dir)
        return cls(open_tracking_backend(manifest, backend, checkpoint, threads), manifest)

    @property
    def name(self) -> str:
        return self.backend.name

    def backbone(self, image: Tensor) -> Pair:
        """layer2 and layer3 of a crop (3, H, W) or (1, 3, H, W), RGB in [0, 1]."""
        if not isinstance(image, Tensor):
            raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
        image = image[None] if image.dim() == 3 else image
        if image.dim() != 4 or image.shape[:2] != (1, 3) or min(image.shape[2:]) < 32:
            raise ValueError(
                f"image must be one RGB crop (1, 3, H, W) of at least 32x32, got "
                f"{tuple(image.shape)}"
            )
        return self.backend.backbone(image)

    def initialize(self, features: Sequence[Tensor], box: Tensor | Sequence[float]) -> None:
        """Set the target from the reference frame's (layer2, layer3) and its box (4,) x, y, w, h.

        ValueError for a box that is not finite, has non-positive size or lies entirely outside
        the crop the maps cover (stride 8 x layer2's size); a box partly outside is used as it is
        (PrRoIPool sees zeros outside the maps).
        """
        layers = self._layers(features)
        box = torch.as_tensor(box, dtype=torch.float32).reshape(-1)
        if box.shape != (4,) or not bool(torch.isfinite(box).all()):
            raise ValueError(f"box must be 4 finite numbers x, y, w, h, got {box.tolist()}")
        x, y, w, h = box.tolist()
        if w <= 0 or h <= 0:
            raise ValueError(f"box must have positive width and height, got {box.tolist()}")
        stride = self.manifest.maps[0].stride
        width, height = layers[0].shape[3] * stride, layers[0].shape[2] * stride
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            raise ValueError(
                f"box {box.tolist()} lies outside the {width}x{height} crop of the reference maps"
            )
        self._modulation = self.backend.modulation(layers, box[None])

    def iou_features(self, features: Sequence[Tensor] | TrackFeatures) -> TrackFeatures:
        """The IoU features of a test frame's (layer2, layer3), to reuse within the frame."""
        if isinstance(features, TrackFeatures):
            return features
        return TrackFeatures(self.backend.iou_features(self._layers(features)))

    def predict_iou(self, features: Sequence[Tensor] | TrackFeatures, proposals: Tensor) -> Tensor:
        """Predicted IoU (N,) of proposals (N, 4) x, y, w, h in the test frame."""
        modulation = self._target()
        boxes = _proposals(proposals)
        if len(boxes) == 0:
            return boxes.new_zeros(0)
        return self.backend.predict_iou(modulation, self.iou_features(features).value, boxes)

    def refine(
        self,
        features: Sequence[Tensor] | TrackFeatures,
        proposals: Tensor,
        iterations: int | None = None,
        step_length: float | Sequence[float] | None = None,
        step_decay: float | None = None,
        parametrization: str | None = None,
    ) -> Pair:
        """pytracking's box refinement of proposals (N, 4) x, y, w, h: (boxes (N, 4), IoUs (N,)).

        Settings left None come from the manifest; ``step_length`` is a number or an
        (xy, wh) pair. The IoUs are those of the last forward pass (before the last update);
        with 0 iterations the proposals and their IoUs come back.
        """
        modulation = self._target()
        defaults = self.manifest.refinement
        params = TrackingRefineParams(
            iterations=defaults.iterations if iterations is None else int(iterations),
            step_length=defaults.step_length if step_length is None else step_pair(step_length),
            step_decay=defaults.step_decay if step_decay is None else float(step_decay),
            parametrization=parametrization or defaults.parametrization,
        )
        boxes = _proposals(proposals)
        if len(boxes) == 0:
            return boxes.clone(), boxes.new_zeros(0)
        feats = self.iou_features(features).value
        step = self.backend.step(modulation, feats, params.parametrization)

        def predict(current: Tensor) -> Tensor:
            return self.backend.predict_iou(modulation, feats, current)

        return _refine(boxes.to(self.backend.device), step, predict, params)

    def _target(self) -> object:
        if self._modulation is None:
            raise RuntimeError("call initialize(reference_features, box) first")
        return self._modulation

    def _layers(self, features: Sequence[Tensor]) -> Pair:
        if not isinstance(features, (tuple, list)) or len(features) != 2:
            raise ValueError("features must be the pair (layer2, layer3)")
        for tensor, channels, name in zip(
            features, self.manifest.input_dim, ("layer2", "layer3"), strict=True
        ):
            if (
                not isinstance(tensor, Tensor)
                or tensor.dim() != 4
                or tensor.shape[:2]
                != (
                    1,
                    channels,
                )
            ):
                shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor)
                raise ValueError(f"{name} must have shape (1, {channels}, H, W), got {shape}")
        return features[0], features[1]


def _refine(
    boxes: Tensor,
    step: TrackingStep,
    predict: Callable[[Tensor], Tensor],
    params: TrackingRefineParams,
) -> Pair:
    """pytracking's refinement of boxes (K, 4) x, y, w, h with the backend's `step` of
    ``params.parametrization``, on ``run_refinement``: no box stops early and nothing is clipped.

    The step length is (xy, xy, wh, wh) times decay**i at iteration i. Returns the boxes after
    the last update and the IoUs of the last forward pass (the boxes before that update), as
    pytracking does; with 0 iterations the boxes and ``predict(boxes)``. The relative
    parametrization normalizes the centres by the first box's size.
    """
    if params.iterations == 0:
        return boxes, predict(boxes)
    sz_norm = boxes[0, 2:].clone()
    atom = params.parametrization == "atom"

    def advance(state: RefineState, settings: StepSettings) -> RefineState:
        moved, iou = step(state.boxes, sz_norm, settings.step)
        return RefineState(moved, iou, None, state.active)

    active = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    state = boxes if atom else rect_to_rel(boxes, sz_norm)
    start = RefineState(state, boxes.new_zeros(len(boxes)), None, active)
    settings = StepSettings(step_vector(params.step_length, boxes))
    refined = run_refinement(start, advance, settings, params.iterations, params.step_decay)
    return (refined.boxes if atom else rel_to_rect(refined.boxes, sz_norm)), refined.iou


def _proposals(proposals: Tensor) -> Tensor:
    """Proposals (N, 4) x, y, w, h as float32; ValueError for NaN/Inf or a non-positive size."""
    boxes = torch.as_tensor(proposals).detach().to(torch.float32)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"proposals must have shape (N, 4) x, y, w, h, got {tuple(boxes.shape)}")
    if not bool(torch.isfinite(boxes).all()):
        rows = (~torch.isfinite(boxes).all(1)).nonzero().flatten().tolist()
        raise ValueError(f"proposals must be finite: rows {rows[:10]} hold NaN or Inf")
    bad = (boxes[:, 2:] <= 0).any(1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(f"proposals must have positive width and height: rows {rows[:10]} do not")
    return boxes
