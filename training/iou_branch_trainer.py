"""Trains only the IoU branch of a trained detector (a joint IoU-Net or its FPN baseline) on the
detector's frozen backbone: the paper's standalone IoU-Net (Sec. 4.1-4.2), and IoU-Net added to
a trained detector in minutes.

The run starts from the detector checkpoint ``detector_from`` (``iounet train --from``): its
model and detector settings and its resize rule become the run's, a fresh IoU branch is
trained, and every checkpoint is a joint IoU-Net checkpoint (the detector's weights unchanged)
that exports and deploys like one trained jointly. The backbone's maps of every training image
are computed once (``FeatureCache``) and reused every epoch with fresh IoU-uniform jitter.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from iounet.progress import Progress
from iounet.training.checkpoint import Checkpoint, load_checkpoint, tensor_checksum
from iounet.training.config import TrainConfig
from iounet.training.feature_cache import CachedImage, FeatureCache, files_sha256
from iounet.training.images import SIZE_DIVISOR, pad_images
from iounet.training.joint_model import JointIoUNet
from iounet.training.model import to_target
from iounet.training.trainer import Trainer, mirror, step_generator, training_boxes

CACHE_FOLDER = "feature-cache"
_MB = 1 << 20


def iou_branch_config(config: TrainConfig, detector_state: Checkpoint) -> TrainConfig:
    """The run's config: `config` with the model, detector and resize rule of the detector
    checkpoint `detector_state` (the IoU branch switched on)."""
    trained = TrainConfig.from_dict(detector_state["config"])
    return replace(
        config,
        model=trained.model,
        detector=replace(trained.detector, iou_branch=True),
        data=replace(config.data, min_size=trained.data.min_size, max_size=trained.data.max_size),
    )


def load_detector_state(path: str | Path) -> Checkpoint:
    """The checkpoint `--from` names, checked before any work (clear errors for a missing,
    corrupt or foreign file, or one without a detector)."""
    state = load_checkpoint(path)
    architecture = state["architecture"]
    if not isinstance(architecture, dict) or architecture.get("kind") != "joint":
        raise ValueError(
            f"{path} is not a detector checkpoint (a joint IoU-Net or FPN baseline from "
            "`iounet train --recipe joint-*/fpn-*`): it holds an IoU-Net without a detector"
        )
    return state


class IoUBranchTrainer(Trainer):
    """Smooth-L1 on the normalized IoU of jittered ground truth, on cached frozen maps; only
    the IoU head's parameters train (and are averaged over processes under torchrun)."""

    cache: FeatureCache | None = None

    def configure(self, config: TrainConfig, weights: str | Path | None) -> TrainConfig:
        if not config.detector_from:
            raise ValueError("an IoU branch trains on a detector: pass --from CHECKPOINT")
        if weights is not None:
            raise ValueError("an IoU branch starts from --from's detector, not from --weights")
        self._detector_state = load_detector_state(config.detector_from)
        return iou_branch_config(config, self._detector_state)

    def build_model(self, weights: str | Path | None) -> nn.Module:
        del weights
        config, state = self.config, self._detector_state
        del self._detector_state
        if state["class_names"] != self.class_names:
            raise ValueError(
                f"{config.detector_from} was trained on classes "
                f"{state['class_names']}, not this data set's {self.class_names}"
            )
        model = JointIoUNet(config.model, config.detector, len(state["class_names"]))
        detector = {k: v for k, v in state["model"].items() if not k.startswith("head.")}
        missing, unexpected = model.load_state_dict(detector, strict=False)
        head = {name for name in model.state_dict() if name.startswith("head.")}
        if set(missing) != head or unexpected:
            raise ValueError(
                f"{config.detector_from} does not fit its own architecture: missing "
                f"{sorted(set(missing) - head)[:5]}, unexpected {unexpected[:5]}"
            )
        model.requires_grad_(False)
        assert model.head is not None
        model.head.requires_grad_(True)
        return model.eval()

    def parallel_module(self) -> nn.Module:
        assert isinstance(self.model, JointIoUNet) and self.model.head is not None
        return self.model.head

    def architecture(self) -> dict:
        return self.model.architecture()

    def augment(
        self, images: list[Tensor], targets: list[dict[str, Tensor]], generator: torch.Generator
    ) -> None:
        """Nothing: mirroring picks a cached entry (``batches``)."""

    def step_batches(
        self, total: int
    ) -> Iterator[tuple[list[CachedImage], list[dict[str, Tensor]]]]:
        """Each step's cached entries, mirrored by the step's own coin flips (the cache is
        filled first)."""
        return self._cached_batches(self._open_cache(), total)

    def _cached_batches(
        self, cache: FeatureCache, total: int
    ) -> Iterator[tuple[list[CachedImage], list[dict[str, Tensor]]]]:
        for step in range(self.step, total):
            generator = step_generator(self.config.seed, step, salt=4)
            entries = []
            for index in self.batch_order.indices(step):
                flipped = self.config.data.flip and bool(torch.rand((), generator=generator) < 0.5)
                entries.append(cache.get(index, flipped))
            yield entries, [{"boxes": e.boxes, "labels": e.labels} for e in entries]

    def compute_loss(
        self,
        images: Sequence[CachedImage],
        targets: list[dict[str, Tensor]],
        generator: torch.Generator,
    ) -> Tensor:
        config = self.config
        rois, labels, ious = training_boxes(targets, [e.size for e in images], config, generator)
        # beyond a map's edge PrRoIPool reads zeros either way: a box pools as on its own maps
        maps = [pad_images([e.maps[level] for e in images], 1) for level in range(4)]
        device = self.device
        prediction = self.parallel([m.to(device) for m in maps], rois.to(device), labels.to(device))
        return nn.functional.smooth_l1_loss(
            prediction.float(), to_target(ious.to(device)), beta=config.optim.smooth_l1_beta
        )

    def _open_cache(self) -> FeatureCache:
        """The cache of this run, filled for every image (and mirror image) before training."""
        if self.cache is None:
            data = self.config.data
            split = self.dataset.images_dir
            identity = {
                "backbone_sha256": tensor_checksum(self.model.backbone.state_dict()),
                "data_sha256": files_sha256(self.dataset.annotation_file, split),
                "min_size": data.min_size,
                "max_size": data.max_size,
                "size_divisor": SIZE_DIVISOR,
            }
            self.cache = FeatureCache(
                self._compute,
                identity,
                memory_bytes=data.cache_memory_mb * _MB,
                folder=self.out_dir / CACHE_FOLDER,
                disk_bytes=data.cache_disk_mb * _MB if self.rank == 0 else 0,
            )
            keys = [
                (index, flipped)
                for index in range(len(self.dataset))
                for flipped in ((False, True) if data.flip else (False,))
            ]
            with Progress(
                len(keys), "cache the frozen FPN maps", unit="image", enabled=self.show_progress
            ) as bar:
                self.cache.fill(keys, lambda: bar.update())
        return self.cache

    @torch.no_grad()
    def _compute(self, index: int, flipped: bool) -> CachedImage:
        image, target = self.dataset[index]
        boxes = target["boxes"]
        if flipped:
            image, boxes = mirror(image, boxes)
        size = (int(image.shape[1]), int(image.shape[2]))
        maps = self.model.backbone(pad_images([image]).to(self.device))
        return CachedImage([m[0].cpu() for m in maps], size, boxes, target["labels"])
