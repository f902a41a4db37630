"""The backend names (a module of its own so that the command line imports no torch)."""

BACKENDS = ("ort", "ort-cuda", "trt", "torch", "torch-native", "torch-cuda")
