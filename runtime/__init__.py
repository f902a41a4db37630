"""Inference backends, IoU-guided NMS, box refinement, pipeline and benchmark."""

from iounet.runtime.pipeline import Detections, Pipeline, PipelineConfig
from iounet.runtime.refinement import IoUAndGrad, refine_boxes
from iounet.runtime.suppression import iou_nms, nms, soft_nms

__all__ = [
    "Detections",
    "IoUAndGrad",
    "Pipeline",
    "PipelineConfig",
    "iou_nms",
    "nms",
    "refine_boxes",
    "soft_nms",
]
