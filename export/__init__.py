"""Checkpoint -> ONNX graphs and manifest; ONNX -> TensorRT engine."""
