"""Images as the model takes them: one loader, padded batches, and the resize rule of
``iounet.resize``.

Files are decoded as viewers show them (:func:`decode_image`: EXIF orientation, a pixel limit
against decompression bombs) and resized in 8 bits (:func:`resize_decoded`): training and
evaluation (``CocoDetection``), ``iounet infer`` (:func:`load_resized`) and the Python API on
uint8 images (``iounet.runtime.Pipeline``, ``iounet.resize.resize_pixels``) take the same
pixels, sized by ``iounet.resize.resized_shape``. PIL is imported inside the functions that need
it, so importing this module loads no image library.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from iounet.resize import resize_image, resize_rgb8, resized_shape, rgb8_to_tensor

if TYPE_CHECKING:
    from PIL import Image

#: Images of a batch are padded to a multiple of the coarsest FPN stride.
SIZE_DIVISOR = 32
#: PIL modes whose pixels are 16-bit (or wider) integers, read as value / 65535.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: Images with more pixels are refused (decompression bombs): 200 million, a 14142 px square.
MAX_IMAGE_PIXELS = 200_000_000
#: The EXIF orientation tag, and its values that turn the image by 90 degrees.
_ORIENTATION = 0x0112
_TURNED = (5, 6, 7, 8)
_PIL_LIMIT = threading.Lock()


def pad_images(images: list[Tensor], size_divisor: int = SIZE_DIVISOR) -> Tensor:
    """Stack (C, H, W) images (or maps) into one batch, zero-padded at the bottom and right to
    multiples of `size_divisor`."""
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    height = math.ceil(height / size_divisor) * size_divisor
    width = math.ceil(width / size_divisor) * size_divisor
    batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for index, image in enumerate(images):
        batch[index, :, : image.shape[1], : image.shape[2]] = image
    return batch


def is_wide(image: Image.Image) -> bool:
    """Whether a PIL image holds 16-bit (or wider) integer pixels."""
    return image.mode in WIDE_MODES


def wide_to_tensor(image: Image.Image) -> Tensor:
    """A 16-bit grayscale PIL image as float32 (3, H, W) in [0, 1]: value / 65535, not clipped."""
    values = np.asarray(image, dtype=np.float64) / 65535.0
    if values.min() < 0 or values.max() > 1:
        raise ValueError(f"{image.mode} image has values outside [0, 65535]")
    return torch.from_numpy(values.astype(np.float32)).expand(3, *values.shape).contiguous()


def open_image(
    path: str | os.PathLike,
    max_pixels: int | None = None,
    expected_size: tuple[int, int] | None = None,
) -> Image.Image:
    """An image file decoded as viewers show it: its EXIF orientation applied, RGB (16-bit
    images as they are). ValueError naming the file if it cannot be decoded or has more than
    `max_pixels` pixels (default ``MAX_IMAGE_PIXELS``; a decompression bomb is refused before
    its pixels are read).

    `expected_size` (height, width), an annotation's size: when it matches the file's stored
    pixels but not its displayed orientation, the stored pixels are kept (annotations made on
    them).
    """
    return decode_image(path, max_pixels, expected_size, None)[0]


def decode_image(
    path: str | os.PathLike,
    max_pixels: int | None = None,
    expected_size: tuple[int, int] | None = None,
    model_size: tuple[int, int] | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """``open_image``'s image and its (height, width) as shown at full resolution. With
    `model_size` (min_size, max_size), a JPEG over four times the size the model takes is
    decoded at a power-of-two reduction that stays at least twice that size (then the image
    is smaller than the size returned)."""
    from PIL import Image, ImageOps

    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if limit < 1:
        raise ValueError(f"the image pixel limit must be positive, got {limit}")
    try:
        with _pil_without_limit():
            image = Image.open(path)
        with image:
            width, height = image.size
            if width * height > limit:
                raise _TooLarge(
                    f"image {path} is {width}x{height} = {width * height:,} pixels, above the "
                    f"limit of {limit:,} (a decompression bomb or a very large image; raise "
                    "the limit with --max-image-pixels)"
                )
            upright = image.getexif().get(_ORIENTATION, 1) != 1
            turned = image.getexif().get(_ORIENTATION, 1) in _TURNED
            shown = (width, height) if turned else (height, width)
            if expected_size is not None and shown != tuple(expected_size):
                if (height, width) == tuple(expected_size):  # annotated on the stored pixels
                    upright, turned, shown = False, False, (height, width)
            if model_size is not None and image.format == "JPEG":
                scale, new_height, new_width = resized_shape(*shown, *model_size)
                if scale < 0.25:
                    size = (new_height, new_width) if turned else (new_width, new_height)
                    image.draft("RGB", (2 * size[0], 2 * size[1]))
            image.load()
            shown_image = ImageOps.exif_transpose(image) if upright else image
            keep = is_wide(shown_image) or shown_image.mode == "RGB"
            decoded = shown_image if keep else shown_image.convert("RGB")
    except _TooLarge:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot decode image {path}: {error}") from error
    return decoded, shown


class _TooLarge(ValueError):
    """An image over the pixel limit."""


@contextlib.contextmanager
def _pil_without_limit() -> Iterator[None]:
    """PIL's own decompression-bomb check off (``open_image`` applies its own limit)."""
    from PIL import Image

    with _PIL_LIMIT:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def to_tensor(image: Image.Image) -> Tensor:
    """A decoded image (``open_image``) as float32 (3, H, W) in [0, 1]: 8-bit / 255, 16-bit
    / 65535 (not clipped to 8 bits)."""
    if is_wide(image):
        return wide_to_tensor(image)
    return rgb8_to_tensor(image)


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> Tensor:
    """An image file as float32 RGB (3, H, W) in [0, 1], as viewers show it (``open_image``):
    8-bit images / 255, 16-bit images / 65535 (not clipped to 8 bits)."""
    return to_tensor(open_image(path, max_pixels))


def load_resized(
    path: str | os.PathLike,
    min_size: int,
    max_size: int,
    max_pixels: int | None = None,
    expected_size: tuple[int, int] | None = None,
) -> tuple[Tensor, float, tuple[int, int]]:
    """An image file at the model's size: (the image as :func:`resize_decoded` makes it, its
    scale, the file's (height, width) as shown).

    A JPEG over four times the model's size is reduced at decode (``open_image``), and 8-bit
    images are resized in 8 bits, so memory holds the decoded image and the small one, never
    the whole image in float.
    """
    image, (height, width) = decode_image(path, max_pixels, expected_size, (min_size, max_size))
    resized, scale = resize_decoded(image, (height, width), min_size, max_size)
    return resized, scale, (height, width)


def resize_decoded(
    image: Image.Image, size: tuple[int, int], min_size: int, max_size: int
) -> tuple[Tensor, float]:
    """A decoded image (``open_image``) of full-resolution `size` (height, width) resized by the
    rule of ``iounet.resize``, as float32 (3, h, w), and its scale: 8-bit images with PIL's
    bilinear filter in 8 bits (``resize_rgb8``), 16-bit images by ``resize_image`` in float. The
    image may be smaller than `size` (a JPEG reduced at decode): the same region of the scene is
    taken."""
    if is_wide(image):
        return resize_image(wide_to_tensor(image), min_size, max_size)
    return resize_rgb8(image, size, min_size, max_size)
