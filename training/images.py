"""Images as the model takes them: one loader, one resize rule, padded batches.

The command line (through ``CocoDetection``) and the Python API (``iounet.runtime.Pipeline``)
both load files with :func:`load_image` and size images with :func:`resized_shape`; PIL is
imported inside the functions that need it, so importing this module loads no image library.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from PIL import Image

#: Images of a batch are padded to a multiple of the coarsest FPN stride.
SIZE_DIVISOR = 32
#: PIL modes whose pixels are 16-bit (or wider) integers, read as value / 65535.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


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


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[float, int, int]:
    """The scale factor and the (height, width) an image of (height, width) is resized to: the
    short side becomes `min_size` unless the long side would then exceed `max_size`."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return (
        scale,
        max(1, math.floor(height * scale + 1e-6)),
        max(1, math.floor(width * scale + 1e-6)),
    )


def source_region(height: int, width: int, scale: float, size: tuple[int, int]) -> tuple:
    """The region of the original image that the resized image of `size` covers (PIL's box):
    (width, height) / scale, one exact factor for both axes."""
    return (0.0, 0.0, min(width, size[1] / scale), min(height, size[0] / scale))


def is_wide(image: Image.Image) -> bool:
    """Whether a PIL image holds 16-bit (or wider) integer pixels."""
    return image.mode in WIDE_MODES


def wide_to_tensor(image: Image.Image) -> Tensor:
    """A 16-bit grayscale PIL image as float32 (3, H, W) in [0, 1]: value / 65535, not clipped."""
    values = np.asarray(image, dtype=np.float64) / 65535.0
    if values.min() < 0 or values.max() > 1:
        raise ValueError(f"{image.mode} image has values outside [0, 65535]")
    return torch.from_numpy(values.astype(np.float32)).expand(3, *values.shape).contiguous()


def load_image(path: str | os.PathLike) -> Tensor:
    """An image file as float32 RGB (3, H, W) in [0, 1]: 8-bit images / 255, 16-bit images
    / 65535 (not clipped to 8 bits). ValueError naming the file if it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            if is_wide(image):
                return wide_to_tensor(image)
            rgb = image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot decode image {path}: {error}") from error
    pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)
    return pixels.to(torch.float32).div_(255.0)


def resize_image(image: Tensor, min_size: int, max_size: int) -> tuple[Tensor, float]:
    """A float (3, H, W) image resized by the rule of :func:`resized_shape` and its scale.

    PIL's bilinear filter over the same source region as the datasets' resize, per channel in
    float32 (nothing is rounded to 8 bits); an image already at its size is returned as is.
    """
    height, width = (int(v) for v in image.shape[1:])
    scale, new_height, new_width = resized_shape(height, width, min_size, max_size)
    if scale == 1.0:
        return image, scale
    from PIL import Image

    region = source_region(height, width, scale, (new_height, new_width))
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(channel)).resize(
                (new_width, new_height), Image.Resampling.BILINEAR, box=region
            )
        )
        for channel in image.detach().to("cpu", torch.float32).numpy()
    ]
    return torch.from_numpy(np.stack(channels)).to(image.device), scale
