"""Inference backends, IoU-guided NMS, box refinement, pipeline and benchmark.

The names below are imported on first use (PEP 562), so that importing a submodule such as
``iounet.runtime.commands`` (the command line) loads no torch.
"""

import importlib
from typing import Any

_EXPORTS = {
    "Detections": "iounet.runtime.pipeline",
    "Pipeline": "iounet.runtime.pipeline",
    "PipelineConfig": "iounet.runtime.pipeline",
    "Objective": "iounet.runtime.refinement",
    "refine_boxes": "iounet.runtime.refinement",
    "iou_nms": "iounet.runtime.suppression",
    "nms": "iounet.runtime.suppression",
    "soft_nms": "iounet.runtime.suppression",
    "TrackerRefiner": "iounet.runtime.tracker_refiner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'iounet.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
