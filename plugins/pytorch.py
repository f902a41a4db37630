"""PrRoIPool for PyTorch users: functional ops and the module, with torchvision's argument names.

Contract (docs/design.md): `input` (N, C, H, W); `rois` (K, 5) rows `[batch_index, x0, y0, x1, y1]`
in input-image coordinates, multiplied by `spatial_scale`; output (K, C, PH, PW). Feature
w[i, j] sits at the continuous point (x = j, y = i), the surface is 0 outside the map, and each
bin's integral is divided by the bin's full area. A box's width and height are clamped at 0 and a
bin of zero area outputs 0 with zero gradient.

These functions check every argument, roi values included (NaN/Inf and batch indices outside
[0, N) raise ValueError), then call the registered ops (``iounet.plugins.ops``), which pick the
kernel of the device.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from iounet.plugins import ops
from iounet.plugins.arguments import (
    check_grad_output,
    check_spatial_scale,
    checked_call,
    output_size_pair,
)


def prroi_pool(
    input: Tensor,
    rois: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Pool each box into an `output_size` grid of exact bin averages of the bilinear surface.

    Args:
        input: feature map (N, C, H, W), floating point.
        rois: (K, 5) boxes `[batch_index, x0, y0, x1, y1]`, or a list of N per-image (Ki, 4)
            boxes `[x0, y0, x1, y1]`; floating point (float32 boxes with float16/bfloat16 maps,
            as autocast gives, are computed in float32), on the device of `input`.
        output_size: (pooled_height, pooled_width), or one int for both.
        spatial_scale: multiplies the box coordinates to map them onto `input`.

    Returns:
        (K, C, pooled_height, pooled_width) in the dtype of `input`, differentiable w.r.t.
        `input` and `rois`.
    """
    table, pooled, scale = checked_call(input, rois, output_size, spatial_scale)
    return ops.prroi_pool_op(input, table, *pooled, scale)


def prroi_pool_coord_grad(
    input: Tensor,
    rois: Tensor | Sequence[Tensor],
    grad_output: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Gradient of `(prroi_pool(input, rois, ...) * grad_output).sum()` w.r.t. the boxes.

    Computed in closed form (the line integrals of the surface along each bin edge, chained to the
    box corners), without autograd, so an exported graph can call it as one op.

    Returns:
        (K, 5) in the dtype of the boxes; column 0 (the batch index) is 0.
    """
    table, pooled, scale = checked_call(input, rois, output_size, spatial_scale)
    check_grad_output(grad_output, (table.shape[0], input.shape[1], *pooled), input)
    return ops.prroi_pool_coord_grad_op(input, table, grad_output, *pooled, scale)


def prroi_pool_feature_grad(
    input: Tensor,
    rois: Tensor | Sequence[Tensor],
    grad_output: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Gradient of `(prroi_pool(input, rois, ...) * grad_output).sum()` w.r.t. `input`."""
    table, pooled, scale = checked_call(input, rois, output_size, spatial_scale)
    check_grad_output(grad_output, (table.shape[0], input.shape[1], *pooled), input)
    return ops.prroi_pool_feature_grad_op(input, table, grad_output, *pooled, scale)


class PrRoIPool(nn.Module):
    """Module form of :func:`prroi_pool`."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float = 1.0) -> None:
        super().__init__()
        self.output_size = output_size_pair(output_size)
        self.spatial_scale = check_spatial_scale(spatial_scale)

    def forward(self, input: Tensor, rois: Tensor | Sequence[Tensor]) -> Tensor:
        return prroi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
