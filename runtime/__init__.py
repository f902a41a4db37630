"""Inference backends, IoU-guided NMS, box refinement, pipeline and benchmark."""
