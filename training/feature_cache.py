"""Frozen FPN maps of training images, computed once and reused every epoch.

A ``FeatureCache`` keeps each entry (the maps P2..P5 of one resized image, or of its mirror
image, with its ground truth) in memory up to a byte budget and in a folder beyond it up to a
second budget; entries past both are recomputed each time they are drawn, so memory and disk
stay bounded whatever the data set. The folder's ``identity.json`` names what the entries were
computed from (the backbone's weights, the annotation file, every image file's size and
modification time, the resize rule); a folder of another identity is emptied before use. Each
entry file is written atomically, so an interrupted run leaves only complete entries, which the
next run with the same identity reuses.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from iounet.files import atomic_path
from iounet.staging import is_temporary, remove_stale

IDENTITY_NAME = "identity.json"
_ENTRY = re.compile(r"^\d{7}(-flip)?\.pt$")
FORMAT = 1


@dataclass
class CachedImage:
    """One resized training image as the IoU branch sees it: FPN maps [P2..P5] of the image
    padded alone to the size divisor (C, h, w each), its content size, ground-truth boxes in its
    pixels (n, 4) and their labels (n,)."""

    maps: list[Tensor]
    size: tuple[int, int]
    boxes: Tensor
    labels: Tensor

    @property
    def nbytes(self) -> int:
        tensors = [*self.maps, self.boxes, self.labels]
        return sum(t.numel() * t.element_size() for t in tensors)

    def to_state(self) -> dict:
        return {
            "maps": self.maps,
            "size": list(self.size),
            "boxes": self.boxes,
            "labels": self.labels,
        }

    @classmethod
    def from_state(cls, state: dict) -> CachedImage:
        size = (int(state["size"][0]), int(state["size"][1]))
        return cls(list(state["maps"]), size, state["boxes"], state["labels"])


Key = tuple[int, bool]


class FeatureCache:
    """Entries by (image index, mirrored), in memory up to `memory_bytes`, then in `folder` up to
    `disk_bytes` (no folder or 0: memory only); ``get`` computes what is not kept."""

    def __init__(
        self,
        compute: Callable[[int, bool], CachedImage],
        identity: dict,
        memory_bytes: int,
        folder: Path | None = None,
        disk_bytes: int = 0,
    ) -> None:
        self.compute = compute
        self.memory_bytes, self.disk_bytes = memory_bytes, disk_bytes
        self.folder = folder if folder is not None and disk_bytes > 0 else None
        self._memory: dict[Key, CachedImage] = {}
        self._memory_used = self._disk_used = 0
        self._on_disk: set[Key] = set()
        self.counts = {"computed": 0, "read_from_disk": 0, "memory": 0, "disk": 0, "uncached": 0}
        if self.folder is not None:
            self._open_folder(identity)

    def get(self, index: int, flipped: bool) -> CachedImage:
        """The entry of image `index` (mirrored when `flipped`): kept, read, or computed."""
        key = (index, flipped)
        entry = self._memory.get(key)
        if entry is not None:
            return entry
        if key in self._on_disk:
            self.counts["read_from_disk"] += 1
            path = self._path(key)
            return CachedImage.from_state(torch.load(path, map_location="cpu", weights_only=True))
        entry = self.compute(index, flipped)
        self.counts["computed"] += 1
        self._keep(key, entry)
        return entry

    def fill(self, keys: list[Key], progress: Callable[[], None] | None = None) -> None:
        """Compute (or find) every entry of `keys` now, e.g. before the first epoch."""
        for key in keys:
            if key not in self._memory and key not in self._on_disk:
                self.get(*key)
            if progress is not None:
                progress()

    def _keep(self, key: Key, entry: CachedImage) -> None:
        size = entry.nbytes
        if self._memory_used + size <= self.memory_bytes:
            self._memory[key] = entry
            self._memory_used += size
            self.counts["memory"] += 1
        elif self.folder is not None and self._disk_used + size <= self.disk_bytes:
            path = self._path(key)
            with atomic_path(path) as temporary:
                torch.save(entry.to_state(), temporary)
            written = path.stat().st_size
            if self._disk_used + written <= self.disk_bytes:
                self._on_disk.add(key)
                self._disk_used += written
                self.counts["disk"] += 1
            else:  # the file's own overhead took it past the budget
                path.unlink()
                self.counts["uncached"] += 1
        else:
            self.counts["uncached"] += 1

    def _path(self, key: Key) -> Path:
        assert self.folder is not None
        index, flipped = key
        return self.folder / f"{index:07d}{'-flip' if flipped else ''}.pt"

    def _open_folder(self, identity: dict) -> None:
        """Reuse the entries of a folder of the same identity; empty one of another (only the
        files this cache writes: anything else there is refused)."""
        assert self.folder is not None
        folder = self.folder
        folder.mkdir(parents=True, exist_ok=True)
        names = [entry.name for entry in folder.iterdir()]
        foreign = [
            n for n in names if n != IDENTITY_NAME and not _ENTRY.match(n) and not is_temporary(n)
        ]
        if foreign:
            raise FileExistsError(
                f"{folder} holds files the feature cache did not write ({foreign[:3]}): "
                "move them away or choose another --out"
            )
        remove_stale(folder)  # left by an interrupted run
        identity = {"format": FORMAT, **identity}
        if _read_identity(folder / IDENTITY_NAME) != identity:
            for name in names:
                if _ENTRY.match(name):
                    (folder / name).unlink(missing_ok=True)
            with atomic_path(folder / IDENTITY_NAME) as temporary:
                temporary.write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n")
            return
        for name in names:
            if _ENTRY.match(name):
                key = (int(name[:7]), name.endswith("-flip.pt"))
                size = (folder / name).stat().st_size
                if self._disk_used + size <= self.disk_bytes:
                    self._on_disk.add(key)
                    self._disk_used += size


def _read_identity(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def files_sha256(annotations: Path, images: Path) -> str:
    """sha256 over the annotation file's bytes and every image file's name, size and
    modification time: it changes when the data do."""
    digest = hashlib.sha256(annotations.read_bytes())
    for entry in sorted(os.scandir(images), key=lambda e: e.name):
        if entry.is_file():
            info = entry.stat()
            digest.update(f"{entry.name}|{info.st_size}|{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()
