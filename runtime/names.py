"""The backend names (a module of its own so that the command line imports no torch)."""

BACKENDS = ("ort", "ort-cuda", "trt", "torch", "torch-native", "torch-cuda")
#: The backends that run the training checkpoint (the one the model folder was exported from).
CHECKPOINT_BACKENDS = ("torch", "torch-native", "torch-cuda")
#: The backends of a tracking model (``TrackerRefiner``): ONNX Runtime on the CPU, TensorRT, and
#: the PyTorch model on the plain, native CPU or CUDA PrRoIPool kernels.
TRACKING_BACKENDS = ("ort", "trt", *CHECKPOINT_BACKENDS)


def check_backend(name: str, backends: tuple[str, ...] = BACKENDS) -> None:
    """ValueError unless `name` is one of `backends`."""
    if name not in backends:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(backends)}")
