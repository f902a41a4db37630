"""The PyTorch model as a backend: the reference, with the box gradient from autograd."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import Tensor

from iounet.plugins import native, reference_kernels
from iounet.runtime.backend import Backend, Features
from iounet.training.model import IoUNet

POOLS = ("pytorch", "native")


class TorchBackend(Backend):
    """An ``IoUNet`` in eval mode. ``pool`` picks the kernels of the PrRoIPool ops: the plain
    PyTorch ones ("pytorch") or the native CPU kernels ("native", CPU only)."""

    name = "torch"

    def __init__(
        self, model: IoUNet, device: str | torch.device = "cpu", pool: str = "pytorch"
    ) -> None:
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.reference = pool == "pytorch"
        if not self.reference:
            if self.device.type != "cpu":
                raise ValueError("pool='native' runs on the CPU only")
            native.load_library()
            self.name = "torch-native"

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", pool: str = "pytorch"
    ) -> TorchBackend:
        from iounet.training.checkpoint import load_model

        model, _ = load_model(path, device)
        return cls(model, device, pool)

    @contextlib.contextmanager
    def _kernels(self) -> Iterator[None]:
        with reference_kernels() if self.reference else contextlib.nullcontext():
            yield

    @torch.no_grad()
    def features(self, image: Tensor) -> Features:
        return self.model.backbone(image.to(self.device, torch.float32))

    @torch.no_grad()
    def iou(self, features: Features, rois: Tensor, labels: Tensor) -> Tensor:
        with self._kernels():
            return self.model.head.iou(features, rois.to(self.device), labels.to(self.device))

    def iou_and_grad(
        self, features: Features, rois: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        with torch.enable_grad(), self._kernels():
            corners = rois[:, 1:].detach().to(self.device).clone().requires_grad_()
            full = torch.cat([rois[:, :1].to(self.device), corners], dim=1)
            t = self.model.head(features, full, labels.to(self.device))
            iou = (t + 1) / 2
            (grad,) = torch.autograd.grad(iou.sum(), corners)
        return iou.detach(), grad

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
