"""Image batches as the backbone takes them: zero-padded to a multiple of the coarsest stride."""

from __future__ import annotations

import math

from torch import Tensor

#: Images of a batch are padded to a multiple of the coarsest FPN stride.
SIZE_DIVISOR = 32


def pad_images(images: list[Tensor], size_divisor: int = SIZE_DIVISOR) -> Tensor:
    """Stack (3, H, W) images into one batch, zero-padded at the bottom and right to multiples of
    `size_divisor`."""
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    height = math.ceil(height / size_divisor) * size_divisor
    width = math.ceil(width / size_divisor) * size_divisor
    batch = images[0].new_zeros((len(images), 3, height, width))
    for index, image in enumerate(images):
        batch[index, :, : image.shape[1], : image.shape[2]] = image
    return batch
