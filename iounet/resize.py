"""The one resize rule of images the model takes, shared by training and the runtime.

:func:`resized_shape` sizes an image (the short side becomes min_size unless the long side would
then exceed max_size) and :func:`source_region` is the region of the original it covers; 8-bit
RGB images are resampled in 8 bits (:func:`resize_rgb8`, and :func:`resize_pixels` for uint8
tensors), float images per channel in float32 (:func:`resize_image`), both with PIL's bilinear
filter over that region. PIL is imported inside the functions that need it, so importing this
module loads no image library.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from PIL import Image

#: PIL's box argument: (left, top, right, bottom) of the source image.
Region = tuple[float, float, float, float]


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[float, int, int]:
    """The scale factor and the (height, width) an image of (height, width) is resized to: the
    short side becomes `min_size` unless the long side would then exceed `max_size`."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return (
        scale,
        max(1, math.floor(height * scale + 1e-6)),
        max(1, math.floor(width * scale + 1e-6)),
    )


def source_region(height: int, width: int, scale: float, size: tuple[int, int]) -> Region:
    """The region of the original image that the resized image of `size` covers (PIL's box):
    (width, height) / scale, one exact factor for both axes."""
    return (0.0, 0.0, min(width, size[1] / scale), min(height, size[0] / scale))


def rgb8_to_tensor(image: Image.Image) -> Tensor:
    """An 8-bit RGB PIL image as float32 (3, H, W) in [0, 1]: value / 255."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    return pixels.to(torch.float32).div_(255.0)


def resize_rgb8(
    image: Image.Image, size: tuple[int, int], min_size: int, max_size: int
) -> tuple[Tensor, float]:
    """An 8-bit RGB PIL image of full-resolution `size` (height, width) resized by the rule of
    :func:`resized_shape` with PIL's bilinear filter in 8 bits, as float32 (3, h, w) in [0, 1],
    and its scale. The image may be smaller than `size` (a JPEG reduced at decode): the same
    region of the scene is taken."""
    height, width = size
    scale, new_height, new_width = resized_shape(height, width, min_size, max_size)
    if scale == 1.0 and image.size == (width, height):
        return rgb8_to_tensor(image), scale
    factor = image.size[0] / width  # below 1 for a JPEG reduced at decode
    region = source_region(image.size[1], image.size[0], scale / factor, (new_height, new_width))
    from PIL import Image

    resized = image.resize((new_width, new_height), Image.Resampling.BILINEAR, box=region)
    return rgb8_to_tensor(resized), scale


def resize_pixels(image: Tensor, min_size: int, max_size: int) -> tuple[Tensor, float]:
    """A uint8 (3, H, W) image resized as an 8-bit file is (:func:`resize_rgb8`), and its
    scale."""
    from PIL import Image

    pixels = Image.fromarray(image.detach().to("cpu").permute(1, 2, 0).numpy())
    height, width = (int(v) for v in image.shape[1:])
    resized, scale = resize_rgb8(pixels, (height, width), min_size, max_size)
    return resized.to(image.device), scale


def resize_image(image: Tensor, min_size: int, max_size: int) -> tuple[Tensor, float]:
    """A float (3, H, W) image resized by the rule of :func:`resized_shape` and its scale.

    PIL's bilinear filter over the same source region as the 8-bit resize, per channel in
    float32 (nothing is rounded to 8 bits); an image already at its size is returned as is.
    """
    height, width = (int(v) for v in image.shape[1:])
    scale, new_height, new_width = resized_shape(height, width, min_size, max_size)
    if scale == 1.0:
        return image, scale
    region = source_region(height, width, scale, (new_height, new_width))
    channels = [
        _resize_channel(channel, (new_height, new_width), region)
        for channel in image.detach().to("cpu", torch.float32).numpy()
    ]
    return torch.from_numpy(np.stack(channels)).to(image.device), scale


def _resize_channel(channel: np.ndarray, size: tuple[int, int], region: Region) -> np.ndarray:
    """One float32 channel (H, W) resampled to `size` (height, width) from `region`."""
    from PIL import Image

    return np.asarray(
        Image.fromarray(np.ascontiguousarray(channel)).resize(
            (size[1], size[0]), Image.Resampling.BILINEAR, box=region
        )
    )
