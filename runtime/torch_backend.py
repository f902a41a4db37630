"""The PyTorch model as a backend: the reference, with the box gradient from autograd."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import Tensor

from iounet.export.refine_step import RefineParams
from iounet.plugins import native, reference_kernels
from iounet.runtime.backend import Backend, Maps
from iounet.training.joint_model import JointIoUNet
from iounet.training.model import IoUNet

POOLS = ("pytorch", "native")


class DetectorStages(Backend[Maps]):
    """The detector stages of a PyTorch model (``proposals``, ``raw_detections``) for the
    backends that hold a ``JointIoUNet`` in ``self.model``, inside ``self._kernels()``."""

    model: IoUNet | JointIoUNet

    def _kernels(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    @torch.no_grad()
    def proposals(self, features: Maps, image_size: tuple[int, int]) -> Tensor:
        if not isinstance(self.model, JointIoUNet):
            raise ValueError(self._no_detector())
        with self._kernels():
            return self.model.proposals(features, self._size(image_size))

    @torch.no_grad()
    def raw_detections(
        self, features: Maps, proposals: Tensor, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        if not isinstance(self.model, JointIoUNet):
            raise ValueError(self._no_detector())
        with self._kernels():
            return self.model.raw_detections(
                features, proposals.to(self.device, torch.float32), self._size(image_size)
            )

    def _size(self, image_size: tuple[int, int]) -> Tensor:
        return torch.tensor(image_size, dtype=torch.float32, device=self.device)


class TorchBackend(DetectorStages):
    """An ``IoUNet`` or a ``JointIoUNet`` (which runs the detector too) in eval mode.
    ``pool`` picks the kernels of the PrRoIPool ops: the plain PyTorch ones ("pytorch") or the
    native CPU kernels ("native", CPU only); `refinement`: Algorithm 2's settings where
    ``refine`` is given none (the model folder's manifest's)."""

    name = "torch"

    def __init__(
        self,
        model: IoUNet | JointIoUNet,
        device: str | torch.device = "cpu",
        pool: str = "pytorch",
        refinement: RefineParams | None = None,
    ) -> None:
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if model.head is None:
            raise ValueError("the model has no IoU branch (an FPN baseline): nothing to run")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.has_detector = isinstance(model, JointIoUNet)
        self.refinement = refinement or self.refinement
        self.reference = pool == "pytorch"
        if not self.reference:
            if self.device.type != "cpu":
                raise ValueError("pool='native' runs on the CPU only")
            native.load_library()
            self.name = "torch-native"

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        pool: str = "pytorch",
        refinement: RefineParams | None = None,
    ) -> TorchBackend:
        from iounet.training.checkpoint import load_model

        model, _ = load_model(path, device)
        return cls(model, device, pool, refinement)

    @contextlib.contextmanager
    def _kernels(self) -> Iterator[None]:
        with reference_kernels() if self.reference else contextlib.nullcontext():
            yield

    @torch.no_grad()
    def features(self, image: Tensor) -> Maps:
        return self.model.backbone(image.to(self.device, torch.float32))

    @torch.no_grad()
    def iou(self, features: Maps, rois: Tensor, labels: Tensor) -> Tensor:
        with self._kernels():
            return self.model.head.iou(features, rois.to(self.device), labels.to(self.device))

    def iou_and_grad(self, features: Maps, rois: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
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
