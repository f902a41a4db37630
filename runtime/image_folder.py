"""The images of a plain folder, as ``iounet infer --images DIR`` takes them (no annotations).

The rule: the folder's regular files (links followed) whose name ends in an image extension
(``IMAGE_EXTENSIONS``, any case) are the images, in name order, and each image's id is its file
name. Everything else is skipped and reported, not an error: files with another extension,
hidden files (names starting with "."), subfolders (not searched) and entries that are not
regular files. A file with an image extension that cannot be decoded is an error naming it,
raised when it is read (``iounet.training.images.load_image``). Listing loads no image library.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Extensions (lower case) of the files taken as images; PIL decodes every one of them.
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
)
#: How many skipped names a note shows.
SHOWN_NAMES = 5


@dataclass(frozen=True)
class ImageListing:
    """A folder's images (paths, in name order) and the names of the entries skipped."""

    folder: Path
    images: list[Path]
    skipped: list[str]  # subfolders end in "/"

    def skipped_note(self) -> str | None:
        """One line naming how many entries were skipped and the first few; None if none."""
        if not self.skipped:
            return None
        return f"skipped {len(self.skipped)} {_entries(self.skipped)} in {self.folder}: " + (
            f"{_names(self.skipped)} (images are the files ending in {', '.join(IMAGE_EXTENSIONS)})"
        )


def is_image_name(name: str) -> bool:
    """Whether a file name is taken as an image: an image extension, not hidden."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: str | os.PathLike) -> ImageListing:
    """The images of `folder` by the rule of this module.

    FileNotFoundError for a missing folder, NotADirectoryError for a path that is not a folder,
    ValueError for a folder that is empty or holds no image (naming what it holds).
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"images folder not found: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"--images {folder} is not a folder")
    images: list[Path] = []
    skipped: list[str] = []
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        if entry.is_dir():
            skipped.append(entry.name + "/")
        elif entry.is_file() and is_image_name(entry.name):
            images.append(folder / entry.name)
        else:
            skipped.append(entry.name)
    if not images and not skipped:
        raise ValueError(f"images folder {folder} is empty: no images to run on")
    if not images:
        raise ValueError(
            f"images folder {folder} holds no images (files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)}), only {len(skipped)} other "
            f"{_entries(skipped)}: {_names(skipped)}"
        )
    return ImageListing(folder, images, skipped)


def _entries(names: list[str]) -> str:
    return "entry" if len(names) == 1 else "entries"


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")
