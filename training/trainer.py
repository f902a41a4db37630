"""The IoU-Net training loop: jittered boxes, smooth-L1 on the normalized IoU, SGD, checkpoints.

Every random choice of a step (data order, flips, box jitter) derives from (seed, step), so a run
resumed from a checkpoint continues exactly as if it had not stopped. Under `torchrun` each
process takes its share of every batch and gradients are averaged (DistributedDataParallel).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from iounet.progress import Progress
from iounet.staging import remove_stale
from iounet.training.checkpoint import (
    LAST_NAME,
    Checkpoint,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
)
from iounet.training.coco_dataset import CocoDetection, collate
from iounet.training.config import TrainConfig
from iounet.training.images import pad_images
from iounet.training.jitter import jitter_boxes
from iounet.training.model import IoUNet, to_target


@dataclass
class TrainResult:
    """Where a run ended: its last checkpoint, step and the mean loss of its last steps."""

    checkpoint: Path
    step: int
    recent_loss: float


def step_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """The generator of all random choices of one step."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7 + salt)


class StepBatches:
    """Image indices of each step's batch: a fresh permutation of the data set every epoch."""

    def __init__(
        self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1
    ) -> None:
        if size <= 0:
            raise ValueError("the training set has no images")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world = rank, world

    def indices(self, step: int) -> list[int]:
        """This process's share of the batch of `step`."""
        start = step * self.batch_size
        batch = [self._at(position) for position in range(start, start + self.batch_size)]
        return batch[self.rank :: self.world]

    def _at(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        return self._order(epoch)[offset]

    @functools.lru_cache(maxsize=2)  # noqa: B019 (a handful of instances per process)
    def _order(self, epoch: int) -> list[int]:
        return torch.randperm(
            self.size, generator=step_generator(self.seed, epoch, salt=1)
        ).tolist()


def training_boxes(
    targets: list[dict[str, Tensor]],
    sizes: list[tuple[int, int]],
    config: TrainConfig,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """Jittered rois (M, 5), their matched labels (M,) and IoU targets (M,) for a batch."""
    rois, labels, ious = [], [], []
    for index, (target, size) in enumerate(zip(targets, sizes, strict=True)):
        sample = jitter_boxes(
            target["boxes"],
            config.data.boxes_per_image,
            generator,
            min_iou=config.data.min_iou,
            bins=config.data.iou_bins,
            image_size=size,
        )
        column = sample.boxes.new_full((sample.boxes.shape[0], 1), float(index))
        rois.append(torch.cat([column, sample.boxes], dim=1))
        labels.append(target["labels"][sample.gt_index])
        ious.append(sample.iou)
    return torch.cat(rois), torch.cat(labels), torch.cat(ious)


def mirror(image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """The image (3, H, W) flipped horizontally and its boxes (n, 4) with it."""
    flipped = boxes.clone()
    flipped[:, [0, 2]] = image.shape[2] - boxes[:, [2, 0]]
    return image.flip(2), flipped


def flip_batch(
    images: list[Tensor], targets: list[dict[str, Tensor]], generator: torch.Generator
) -> None:
    """Flip each image and its boxes horizontally with probability 1/2, in place."""
    for index, image in enumerate(images):
        if bool(torch.rand((), generator=generator) < 0.5):
            images[index], boxes = mirror(image, targets[index]["boxes"])
            targets[index] = {**targets[index], "boxes": boxes}


class Trainer:
    """Trains an IoUNet on a COCO-format folder (`train/images`, `train/annotations.json`).

    Subclasses train other models on the same loop by overriding configure, build_model,
    architecture and compute_loss.
    """

    def __init__(
        self,
        data_dir: str | Path,
        out_dir: str | Path,
        config: TrainConfig,
        weights: str | Path | None = None,
        device: str | None = None,
    ) -> None:
        self.config = config = self.configure(config, weights)
        self.out_dir = Path(out_dir)
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank, self.world = 0, 1
        if self.distributed:
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if self.rank == 0:
            remove_stale(self.out_dir)  # checkpoints half-written by a killed run
        if device is None:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if config.optim.batch_size % self.world:
            raise ValueError(
                f"batch_size {config.optim.batch_size} is not a multiple of {self.world} processes"
            )
        split = Path(data_dir) / "train"
        self.dataset = CocoDetection(
            split / "images",
            split / "annotations.json",
            min_size=config.data.min_size,
            max_size=config.data.max_size,
        )
        self.class_names = list(self.dataset.class_names)
        torch.manual_seed(config.seed)
        self.model = self.build_model(weights).to(self.device)
        self.optimizer = torch.optim.SGD(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=config.optim.lr,
            momentum=config.optim.momentum,
            weight_decay=config.optim.weight_decay,
        )
        self.amp = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.batch_order = StepBatches(
            len(self.dataset), config.optim.batch_size, config.seed, self.rank, self.world
        )
        self.step = 0
        #: Total gradient norm of the last step, before clipping.
        self.grad_norm = math.nan
        self.show_progress = False
        self.parallel: nn.Module = self.parallel_module()
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # FPN levels that no box of a step falls on get no gradient in that step.
            self.parallel = DistributedDataParallel(
                self.parallel_module(), device_ids=ids, find_unused_parameters=True
            )

    def configure(self, config: TrainConfig, weights: str | Path | None) -> TrainConfig:
        """The configuration to train with, from the one given (subclasses check or complete
        it before anything is set up)."""
        del weights
        return config

    def build_model(self, weights: str | Path | None) -> nn.Module:
        """The model to train, on the CPU."""
        config = self.config
        if config.model.frozen_backbone and not (config.backbone_from or weights):
            raise ValueError("a frozen backbone needs backbone_from (a detector) or weights")
        model = IoUNet(config.model, len(self.class_names), weights)
        if config.backbone_from:
            state = load_checkpoint(config.backbone_from)
            model.backbone.load_detector(state["model"], config.backbone_from)
        return model

    def architecture(self) -> dict:
        """What a checkpoint must match to be resumed or loaded into this model."""
        return self.model.architecture()

    def parallel_module(self) -> nn.Module:
        """The module whose gradients are averaged over processes under torchrun."""
        return self.model

    def step_batches(self, total: int) -> Iterable[tuple[list, list[dict[str, Tensor]]]]:
        """The batches (images, targets) of steps self.step .. total - 1."""
        return DataLoader(
            self.dataset,
            batch_sampler=(self.batch_order.indices(step) for step in range(self.step, total)),
            collate_fn=collate,
            num_workers=self.config.data.num_workers,
        )

    def augment(
        self, images: list[Tensor], targets: list[dict[str, Tensor]], generator: torch.Generator
    ) -> None:
        """Random changes of a step's batch, in place (horizontal flips)."""
        if self.config.data.flip:
            flip_batch(images, targets, generator)

    def compute_loss(
        self, images: list[Tensor], targets: list[dict[str, Tensor]], generator: torch.Generator
    ) -> Tensor:
        """Smooth-L1 between predicted and true normalized IoU of jittered boxes."""
        _, rois, labels, ious = self.jittered_boxes(images, targets, generator)
        batch = pad_images(images).to(self.device)
        prediction = self.parallel(batch, rois.to(self.device), labels.to(self.device))
        return nn.functional.smooth_l1_loss(
            prediction.float(),
            to_target(ious.to(self.device)),
            beta=self.config.optim.smooth_l1_beta,
        )

    def jittered_boxes(
        self, images: list[Tensor], targets: list[dict[str, Tensor]], generator: torch.Generator
    ) -> tuple[list[tuple[int, int]], Tensor, Tensor, Tensor]:
        """The (height, width) of `images` and their `training_boxes`: jittered rois (M, 5),
        labels (M,) and IoU targets (M,)."""
        sizes = [(int(image.shape[1]), int(image.shape[2])) for image in images]
        return (sizes, *training_boxes(targets, sizes, self.config, generator))

    @property
    def last_checkpoint(self) -> Path:
        return self.out_dir / LAST_NAME

    def resume(self) -> None:
        """Continue from the last checkpoint in out_dir; it must be from the same run setup."""
        state = load_checkpoint(self.last_checkpoint)
        check_compatible(state, self.architecture(), self.class_names, str(self.last_checkpoint))
        if state["config"] != self.config.to_dict():
            raise ValueError(
                f"{self.last_checkpoint} was written with another config; "
                "resume with the same config or start a new run in another folder"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])

    def state(self) -> Checkpoint:
        """Everything a checkpoint holds."""
        return {
            "model": self.model.state_dict(),
            "architecture": self.architecture(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "config": self.config.to_dict(),
            "class_names": self.class_names,
        }

    def save(self) -> None:
        if self.rank == 0:
            save_checkpoint(self.last_checkpoint, self.state())
        if self.distributed:
            dist.barrier()

    def train_step(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> float:
        """One optimizer step on this process's share of the batch; returns its loss."""
        config = self.config
        generator = step_generator(config.seed, self.step)
        images, targets = list(images), list(targets)
        self.augment(images, targets, generator)
        for group in self.optimizer.param_groups:
            group["lr"] = config.optim.lr_at(self.step)
        self.model.train()
        autocast = (
            torch.autocast("cuda", enabled=self.amp) if self.amp else contextlib.nullcontext()
        )
        with autocast, _global_generators(step_generator(config.seed, self.step, salt=3), self):
            loss = self.compute_loss(images, targets, generator)
        if not self.amp and not bool(torch.isfinite(loss.detach())):
            # (with AMP the gradient scaler skips such steps and lowers its scale)
            raise FloatingPointError(
                f"training diverged at step {self.step} (loss {float(loss)}): lower the learning "
                f"rate or the loss weights; {self.last_checkpoint} holds the last checkpoint"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        limit = config.optim.clip_grad_norm
        self.grad_norm = float(
            nn.utils.clip_grad_norm_(parameters, limit if limit > 0 else math.inf)
        )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return float(loss.detach())

    def run(self, progress: bool = True, until: int | None = None) -> TrainResult:
        """Train to step `until` (default: config.optim.steps), checkpointing as configured.

        The last step of the call always writes a checkpoint.
        """
        total = self.config.optim.steps if until is None else min(until, self.config.optim.steps)
        losses: list[float] = []
        self.show_progress = progress and self.rank == 0
        try:
            batches = self.step_batches(total)
            with Progress(
                total, f"train {self.config.recipe}", initial=self.step, enabled=self.show_progress
            ) as bar:
                for images, targets in batches:
                    losses.append(self.train_step(images, targets))
                    losses = losses[-20:]
                    bar.update(
                        loss=f"{sum(losses) / len(losses):.4f}",
                        lr=f"{self.config.optim.lr_at(self.step - 1):.4g}",
                        grad_norm=f"{self.grad_norm:.3g}",
                    )
                    if self.step % self.config.checkpoint_every == 0 or self.step == total:
                        self.save()
        finally:
            if self.distributed:
                dist.destroy_process_group()
        recent = sum(losses) / len(losses) if losses else math.nan
        return TrainResult(self.last_checkpoint, self.step, recent)


@contextlib.contextmanager
def _global_generators(generator: torch.Generator, trainer: Trainer) -> Iterator[None]:
    """torch's global generators seeded from `generator`, restored afterwards: models that
    sample with them (torchvision's RPN and R-CNN samplers) then draw the same in a resumed run
    as in an uninterrupted one."""
    seed = int(torch.randint(1 << 62, (1,), generator=generator))
    device = trainer.device
    with torch.random.fork_rng(
        devices=[device] if device.type == "cuda" else [], device_type=device.type
    ):
        torch.manual_seed(seed)
        yield
