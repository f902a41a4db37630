"""The `--device` option: a device this machine has, or a one-line error that says what it has."""

from __future__ import annotations

import re

_DEVICE = re.compile(r"(cpu|cuda)(?::(\d+))?")


def check_device(device: str | None, option: str = "--device") -> str | None:
    """`device` unchanged when this machine has it (None, the command's default, too).

    Accepts cpu, cuda and cuda:N; raises ValueError naming `option`, the device and the CUDA
    GPUs that are available otherwise.
    """
    if device is None:
        return None
    match = _DEVICE.fullmatch(device)
    if match is None or (match.group(1) == "cpu" and match.group(2) not in (None, "0")):
        raise ValueError(f"{option} {device}: not a device; use cpu, cuda or cuda:N")
    if match.group(1) == "cpu":
        return device

    import torch

    if not torch.cuda.is_available():
        build = "" if torch.version.cuda else f"; torch {torch.__version__} is a CPU-only build"
        raise ValueError(
            f"{option} {device}: this machine has no CUDA GPU "
            f"(torch.cuda.is_available() is False{build}); use cpu"
        )
    count = torch.cuda.device_count()
    index = match.group(2)
    if index is not None and int(index) >= count:
        available = "cuda:0" if count == 1 else f"cuda:0 .. cuda:{count - 1}"
        plural = "" if count == 1 else "s"
        raise ValueError(
            f"{option} {device}: this machine has {count} CUDA GPU{plural} ({available})"
        )
    return device
