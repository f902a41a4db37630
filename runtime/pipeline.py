"""Image (+ raw detections of any detector) -> IoU-guided NMS -> refinement -> final detections.

Without raw detections the model's own detector runs (a model folder exported from a joint
IoU-Net): backbone -> RPN -> box head -> IoU head -> IoU-guided NMS -> refinement.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from iounet.export.manifest import Manifest, load_manifest
from iounet.export.manifest_format import check_exported_from
from iounet.resize import resize_image, resize_pixels, source_region
from iounet.runtime.backend import Backend, RefineParams
from iounet.runtime.budget import (
    DEFAULT_MEMORY_BUDGET,
    PAPER_BOX,
    boxes_per_call,
    bytes_per_box,
    chunks,
)
from iounet.runtime.names import CHECKPOINT_BACKENDS, check_backend
from iounet.runtime.suppression import iou_nms, nms
from iounet.training.images import pad_images

#: Called with (stage name, seconds) after each stage when timing is asked for.
StageTimer = Callable[[str, float], None]
#: Post-processing methods: IoU-Net's (IoU head, IoU-guided NMS, refinement), or the detector's
#: own class-wise NMS on the classification scores (the FPN baseline: no IoU head).
METHODS = ("iou-nms", "nms")


@dataclass(frozen=True)
class PipelineConfig:
    """Post-processing settings: the method (``METHODS``), the (IoU-)NMS threshold, boxes
    refined, Algorithm 2's settings, and the memory budget (bytes) of one backend call, which
    sets how many boxes a call takes."""

    nms_threshold: float = 0.5
    refine_top: int = 100
    refine: RefineParams = field(default_factory=RefineParams)
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    method: str = "iou-nms"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")


@dataclass
class Detections:
    """The final detections of one image, in the pixels of the image given to the pipeline."""

    boxes: Tensor  # (M, 4) x0, y0, x1, y1
    scores: Tensor  # (M,) classification scores after IoU-NMS
    labels: Tensor  # (M,) class labels (0 .. num_classes - 1)
    ious: Tensor | None  # (M,) predicted IoU (after refinement); None for the method "nms"


class Pipeline:
    """IoU-Net on one image with one backend: its detector or given raw detections, then the
    IoU head, IoU-guided NMS and refinement.

    ``pipeline(image)`` takes one RGB image (3, H, W) in its own pixels (float in [0, 1], or
    uint8, which is divided by 255) and runs the model's detector (backbone, RPN, box head: a
    model exported from a joint IoU-Net) for its raw detections; ``pipeline(image, boxes,
    scores, labels)`` takes another detector's raw detections instead: (N, 4) boxes, (N,) scores
    and (N,) integer class labels in that image's pixels. A pipeline on a model
    (``from_model``, ``for_manifest``) resizes the image as ``iounet infer`` does (the
    manifest's min_size / max_size, ``iounet.resize``) and scales the boxes with it,
    clipped to the image. It returns the detections kept by IoU-guided NMS (scores as IoU-NMS
    leaves them, most confident first), the ``refine_top`` most confident of them refined by
    Algorithm 2, in the given image's pixels; every box lies within the image.

    The IoU head and the refinement run on at most ``boxes_per_call`` boxes per backend call
    (from ``config.memory_budget``, and at most the backend's ``max_boxes``), so memory does
    not grow with the number of boxes.
    """

    def __init__(
        self,
        backend: Backend,
        num_classes: int,
        config: PipelineConfig | None = None,
        size_divisor: int = 32,
        input_size: tuple[int, int] | None = None,
        box_bytes: int | None = None,
        padding_score: float = -1.0,
    ) -> None:
        """`input_size` (min_size, max_size) resizes images (None: taken as they are);
        `box_bytes` is the memory one box takes in a backend call (default: the paper's
        model's, ``iounet.runtime.budget``); `padding_score` marks the padding rows of the
        detector's raw detections (the manifest's). The detector's box head takes all
        proposals in one call (at most the manifest's post_nms_top_n)."""
        self.backend = backend
        self.num_classes = num_classes
        self.config = config or PipelineConfig()
        self.size_divisor = size_divisor
        self.input_size = input_size
        self.box_bytes = box_bytes or bytes_per_box(*PAPER_BOX)
        self.padding_score = padding_score
        self.boxes_per_call = boxes_per_call(self.config.memory_budget, self.box_bytes)
        if getattr(backend, "max_boxes", None):  # a TensorRT engine's profile
            self.boxes_per_call = min(self.boxes_per_call, int(backend.max_boxes))

    @classmethod
    def from_model(
        cls,
        model_dir: str | os.PathLike,
        backend: str = "ort",
        config: PipelineConfig | None = None,
        **backend_options: object,
    ) -> Pipeline:
        """A pipeline on an exported model folder with the named backend (see ``BACKENDS``).

        Without `config`, the refinement settings are the manifest's.
        """
        manifest = load_manifest(model_dir)
        return cls.for_manifest(
            manifest, open_backend(manifest, backend, **backend_options), config
        )

    @classmethod
    def for_manifest(
        cls, manifest: Manifest, backend: Backend, config: PipelineConfig | None = None
    ) -> Pipeline:
        """A pipeline with `backend` on the model `manifest` describes (its settings)."""
        config = config or PipelineConfig(refine=manifest.refinement)
        detector = manifest.detector
        box = bytes_per_box(manifest.fpn_channels, manifest.pool_size, len(manifest.strides))
        return cls(
            backend,
            manifest.num_classes,
            config,
            manifest.input.size_divisor,
            (manifest.input.min_size, manifest.input.max_size),
            box,
            detector.padding_score if detector else -1.0,
        )

    def __call__(
        self,
        image: Tensor,
        boxes: Tensor | None = None,
        scores: Tensor | None = None,
        labels: Tensor | None = None,
        timer: StageTimer | None = None,
    ) -> Detections:
        """The final detections of `image` in its own pixels (see the class docstring). A uint8
        image is resized in 8 bits, as ``iounet infer`` resizes image files; a float one in
        float."""
        _check_inputs(image, boxes, scores, labels, self.num_classes)
        self._check_detector(boxes)
        if self.input_size is None:
            return self._run(_float_image(image), boxes, scores, labels, timer)
        size = (int(image.shape[1]), int(image.shape[2]))
        if image.dtype == torch.uint8:
            resized, scale = resize_pixels(image, *self.input_size)
        else:
            resized, scale = resize_image(image, *self.input_size)
        return self._run_mapped(_float_image(resized), scale, size, (boxes, scores, labels), timer)

    def run_scaled(
        self,
        resized: Tensor,
        scale: float = 1.0,
        size: tuple[int, int] | None = None,
        boxes: Tensor | None = None,
        scores: Tensor | None = None,
        labels: Tensor | None = None,
        timer: StageTimer | None = None,
    ) -> Detections:
        """The final detections of an image given at the model's input size (`resized`, float in
        [0, 1], or uint8). With `size`, `resized` is an image of `size` (height, width) resized
        by the rule of ``iounet.resize.resized_shape`` with `scale` (as ``load_resized`` gives
        it), and raw boxes and results are in the pixels of `size`, within the image; without,
        they are in the pixels of `resized` (scale 1: ``iounet bench`` times this)."""
        _check_inputs(resized, boxes, scores, labels, self.num_classes)
        self._check_detector(boxes)
        if size is None and scale != 1.0:
            raise ValueError(f"scale {scale} needs the size of the original image (size=)")
        return self._run_mapped(_float_image(resized), scale, size, (boxes, scores, labels), timer)

    def _run_mapped(
        self,
        resized: Tensor,
        scale: float,
        size: tuple[int, int] | None,
        raw: tuple[Tensor | None, Tensor | None, Tensor | None],
        timer: StageTimer | None,
    ) -> Detections:
        """``_run`` on checked inputs, raw boxes and results in the pixels of `size` (see
        ``run_scaled``)."""
        boxes, scores, labels = raw
        if size is None:
            return self._run(resized, boxes, scores, labels, timer)
        resized_size = (int(resized.shape[1]), int(resized.shape[2]))
        factors = _axis_scales(size, resized_size, scale)
        if boxes is not None:
            boxes = _scale_to(boxes.to(torch.float32), factors, resized_size)
        found = self._run(resized, boxes, scores, labels, timer)
        found.boxes = _unscale(found.boxes, factors, size)
        return found

    def detect_resized(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The model's detector alone on an image at the model's input size: its raw
        detections before NMS (boxes (D, 4) in the image's pixels, scores (D,), labels (D,)),
        most confident first. The image is float in [0, 1], or uint8."""
        _check_inputs(image, None, None, None, self.num_classes)
        self._check_detector(None)
        image = _float_image(image)
        features = self.backend.features(pad_images([image.float()], self.size_divisor))
        return self._detect(features, (int(image.shape[1]), int(image.shape[2])), None)

    def _detect(
        self, features: object, size: tuple[int, int], clock: _Clock | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        backend = self.backend
        proposals = backend.proposals(features, size)
        if clock is not None:
            clock("rpn")
        boxes, scores, labels = backend.raw_detections(features, proposals, size)
        count = int((scores > self.padding_score).sum())  # the padding rows come last
        if clock is not None:
            clock("box_head")
        return boxes[:count], scores[:count], labels[:count]

    def _check_detector(self, boxes: Tensor | None) -> None:
        if boxes is None and not self.backend.has_detector:
            raise ValueError(
                "no raw detections given, and the model has no detector: pass boxes, scores "
                "and labels, or export a joint IoU-Net (recipe joint-*) to run on images alone"
            )

    def _run(
        self,
        image: Tensor,
        boxes: Tensor | None,
        scores: Tensor | None,
        labels: Tensor | None,
        timer: StageTimer | None,
    ) -> Detections:
        backend, config = self.backend, self.config
        device = backend.device
        clock = _Clock(backend, timer)
        height, width = (int(v) for v in image.shape[1:])
        features = backend.features(pad_images([image.float()], self.size_divisor))
        clock("backbone")
        if boxes is None:
            boxes, scores, labels = self._detect(features, (height, width), clock)
        boxes = boxes.to(device, torch.float32)
        scores = scores.to(device, torch.float32)
        labels = labels.to(device, torch.int64)
        if config.method == "nms":
            keep = nms(boxes, scores, labels, config.nms_threshold)
            clock("nms")
            clock.since("total", clock.start)
            return Detections(_clip(boxes[keep], (height, width)), scores[keep], labels[keep], None)
        rois = torch.cat([boxes.new_zeros((len(boxes), 1)), boxes], dim=1)
        per_call = self.boxes_per_call
        # Results go into tensors allocated before the calls: results kept between calls would
        # pin the heap above each call's large temporaries and memory would grow with the calls.
        ious = boxes.new_zeros(len(boxes))
        for part in chunks(len(rois), per_call):
            ious[part] = backend.iou(features, rois[part], labels[part])
        clock("iou_head")
        keep, kept_scores = iou_nms(boxes, scores, ious, labels, config.nms_threshold)
        order = torch.argsort(kept_scores, descending=True, stable=True)
        keep, kept_scores = keep[order], kept_scores[order]
        clock("iou_nms")
        boxes, labels, ious = boxes[keep], labels[keep], ious[keep]
        refine_start = clock.last
        top = min(config.refine_top, len(keep))
        if top:
            refined, refined_iou = boxes[:top].clone(), ious.new_zeros(top)
            for part in chunks(top, per_call):
                refined[part], refined_iou[part] = backend.refine(
                    features,
                    boxes[part],
                    labels[part],
                    (height, width),
                    config.refine,
                    on_step=clock.step if timer is not None else None,
                )
            boxes = torch.cat([refined, boxes[top:]])
            ious = torch.cat([refined_iou.clamp(0, 1), ious[top:]])
        clock.since("refine", refine_start)
        clock.since("total", clock.start)
        return Detections(_clip(boxes, (height, width)), kept_scores, labels, ious)


def open_backend(manifest: Manifest, name: str, **options: object) -> Backend:
    """The backend `name` on an exported model (the ``CHECKPOINT_BACKENDS`` need
    ``checkpoint=``, which the others refuse)."""
    check_backend(name)
    if name not in CHECKPOINT_BACKENDS and "checkpoint" in options:
        raise ValueError(
            f"the {name} backend runs the exported graphs and takes no checkpoint (only "
            f"{', '.join(CHECKPOINT_BACKENDS)} do)"
        )
    if name in ("ort", "ort-cuda"):
        from iounet.runtime.ort_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(manifest, "cpu" if name == "ort" else "cuda", **options)
    if name == "trt":
        from iounet.runtime.trt_backend import TensorRTBackend

        return TensorRTBackend(manifest.folder, **options)
    checkpoint = options.pop("checkpoint", None)
    if checkpoint is None:
        raise ValueError(f"the {name} backend needs the checkpoint the model was exported from")
    check_exported_from(manifest, checkpoint)
    options.setdefault("refinement", manifest.refinement)
    if name == "torch-cuda":
        from iounet.runtime.torch_cuda_backend import TorchCudaBackend

        return TorchCudaBackend.from_checkpoint(checkpoint, **options)
    from iounet.runtime.torch_backend import TorchBackend

    pool = "native" if name == "torch-native" else "pytorch"
    return TorchBackend.from_checkpoint(checkpoint, pool=pool, **options)


def _axis_scales(
    size: tuple[int, int], resized: tuple[int, int], scale: float
) -> tuple[float, float]:
    """The factors (x, y) from the pixels of an image of `size` (height, width) to those of its
    resized image of `resized`: `scale`, unless a resized side was rounded up to its minimum of
    1 pixel (an extreme aspect ratio), which then covers the whole side: that side's own factor."""
    region = source_region(size[0], size[1], scale, resized)
    x = scale if region[2] == resized[1] / scale else resized[1] / region[2]
    y = scale if region[3] == resized[0] / scale else resized[0] / region[3]
    return x, y


def _scale_to(boxes: Tensor, factors: tuple[float, float], size: tuple[int, int]) -> Tensor:
    """Boxes (N, 4) times the factors (x, y), clipped to an image of `size` (height, width)."""
    return _clip(boxes * boxes.new_tensor(factors).repeat(2), size)


def _unscale(boxes: Tensor, factors: tuple[float, float], size: tuple[int, int]) -> Tensor:
    """Boxes (N, 4) divided by the factors (x, y), clipped to an image of `size` (height,
    width)."""
    return _clip(boxes / boxes.new_tensor(factors).repeat(2), size)


def _clip(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Boxes (N, 4) clipped to an image of `size` (height, width)."""
    height, width = size
    return boxes.clamp_min(0).minimum(boxes.new_tensor([width, height, width, height]))


def _float_image(image: Tensor) -> Tensor:
    """uint8 images as float / 255 (the loader's conversion); others as they are."""
    if isinstance(image, Tensor) and image.dtype == torch.uint8:
        return image.to(torch.float32).div_(255.0)
    return image


def _check_inputs(
    image: Tensor,
    boxes: Tensor | None,
    scores: Tensor | None,
    labels: Tensor | None,
    num_classes: int,
) -> None:
    given = [value is not None for value in (boxes, scores, labels)]
    if any(given) and not all(given):
        raise ValueError("pass boxes, scores and labels together (or none: the model detects)")
    for name, value in (("image", image), ("boxes", boxes), ("scores", scores), ("labels", labels)):
        if value is None and name != "image":
            continue
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"image must be one RGB image of shape (3, H, W), got {tuple(image.shape)}"
        )
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"image is empty: shape {tuple(image.shape)}")
    _check_pixels(image)
    if boxes is None or scores is None or labels is None:
        return
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    count = boxes.shape[0]
    for name, value in (("scores", scores), ("labels", labels)):
        if tuple(value.shape) != (count,):
            raise ValueError(f"{name} must have shape ({count},), got {tuple(value.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor (class indices), got {labels.dtype}")
    if count and not bool(torch.isfinite(boxes).all() and torch.isfinite(scores).all()):
        raise ValueError("boxes and scores must be finite")
    if count and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}] ({num_classes} classes)")


def _check_pixels(image: Tensor) -> None:
    """uint8 pixels are all valid; float ones must be finite and in [0, 1]."""
    if image.dtype == torch.uint8:
        return
    if not image.is_floating_point():
        raise TypeError(f"image must be a float (RGB in [0, 1]) or uint8 tensor, got {image.dtype}")
    if not bool(torch.isfinite(image).all()):
        raise ValueError("image has NaN or Inf pixels")
    low, high = float(image.min()), float(image.max())
    if low < 0 or high > 1:
        raise ValueError(
            f"image values must lie in [0, 1] (8-bit pixels / 255), got [{low:g}, {high:g}]"
        )


class _Clock:
    """Calls the stage timer with each stage's duration (after waiting for the device)."""

    def __init__(self, backend: Backend, timer: StageTimer | None) -> None:
        self.backend = backend
        self.timer = timer
        self.start = self.last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        """Report the time since the previous report as `stage`."""
        self.since(stage, self.last)

    def step(self, index: int) -> None:
        self(f"refine_step_{index}")

    def since(self, stage: str, start: float) -> None:
        """Report the time since `start` (a perf_counter value) as `stage`."""
        if self.timer is None:
            return
        self.backend.synchronize()
        now = time.perf_counter()
        self.timer(stage, now - start)
        self.last = now
