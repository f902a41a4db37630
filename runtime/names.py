"""The backend names (a module of its own so that the command line imports no torch)."""

BACKENDS = ("ort", "ort-cuda", "trt", "torch", "torch-native", "torch-cuda")
#: The backends that run the training checkpoint (the one the model folder was exported from).
CHECKPOINT_BACKENDS = ("torch", "torch-native", "torch-cuda")
