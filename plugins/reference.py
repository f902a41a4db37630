"""Precise RoI Pooling (PrRoIPool) in PyTorch: the exact op, its box-coordinate gradient, a module.

Contract (DESIGN.md): `input` (N, C, H, W); `rois` (K, 5) rows `[batch_index, x0, y0, x1, y1]`
in input-image coordinates, multiplied by `spatial_scale`; output (K, C, PH, PW). Feature
w[i, j] sits at the continuous point (x = j, y = i), the surface is 0 outside the map, and each
bin's integral is divided by the bin's full area. A box's width and height are clamped at 0 and a
bin of zero area outputs 0 with zero gradient.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from iounet.plugins.arguments import (
    check_grad_output,
    check_input,
    check_spatial_scale,
    output_size_pair,
    rois_tensor,
)
from iounet.plugins.bilinear_integral import bin_edges, edge_weights, integral_weights

# Largest intermediate (in elements) one chunk of boxes may allocate: 2**24 is 64 MiB in float32.
CHUNK_ELEMENTS = 1 << 24


class _Chunk(NamedTuple):
    """Boxes of one image pooled together, and the window of the map that covers all of them."""

    image: int
    rows: Tensor
    window: tuple[int, int]


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
            boxes `[x0, y0, x1, y1]`; same dtype and device as `input`.
        output_size: (pooled_height, pooled_width), or one int for both.
        spatial_scale: multiplies the box coordinates to map them onto `input`.

    Returns:
        (K, C, pooled_height, pooled_width), differentiable w.r.t. `input` and `rois`.
    """
    check_input(input)
    pooled = output_size_pair(output_size)
    scale = check_spatial_scale(spatial_scale)
    table = rois_tensor(rois, input)
    num_channels = input.shape[1]
    if table.shape[0] == 0:
        return input.reshape(-1)[:0].reshape(0, num_channels, *pooled)
    needs_graph = torch.is_grad_enabled() and (input.requires_grad or table.requires_grad)
    features, boxes = _working_precision(input, table)

    def pool(feature: Tensor, chunk: _Chunk) -> Tensor:
        args = (feature, boxes[chunk.rows, 1:], pooled, scale, chunk.window)
        if needs_graph:
            return checkpoint(_pool_boxes, *args, use_reentrant=False)
        return _pool_boxes(*args)

    return _run_chunks(pool, features, boxes, pooled, scale).to(input.dtype)


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
        (K, 5) in the dtype of `input`; column 0 (the batch index) is 0.
    """
    check_input(input)
    pooled = output_size_pair(output_size)
    scale = check_spatial_scale(spatial_scale)
    table = rois_tensor(rois, input)
    check_grad_output(grad_output, (table.shape[0], input.shape[1], *pooled), input)
    if table.shape[0] == 0:
        return input.new_zeros((0, 5))
    with torch.no_grad():
        features, boxes = _working_precision(input, table)
        grad = grad_output.to(features.dtype)

        def coord_grad(feature: Tensor, chunk: _Chunk) -> Tensor:
            return _coord_grad_boxes(
                feature, boxes[chunk.rows, 1:], grad[chunk.rows], pooled, scale, chunk.window
            )

        corners = _run_chunks(coord_grad, features, boxes, pooled, scale)
    return torch.cat([corners.new_zeros((corners.shape[0], 1)), corners], dim=1).to(input.dtype)


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


def _working_precision(input: Tensor, table: Tensor) -> tuple[Tensor, Tensor]:
    """Half-precision inputs are computed in float32; float32 and float64 in their own type."""
    if input.dtype in (torch.float32, torch.float64):
        return input, table
    return input.float(), table.float()


class _Axis(NamedTuple):
    """One axis of a chunk of boxes: bins, and the window of grid points they touch."""

    edges: Tensor  # (k, bins + 1) bin edges in map coordinates
    bin_width: Tensor  # (k,)
    index: Tensor  # (k, L) grid indices of the window, clamped into the map
    grid: Tensor  # (k, L) grid positions, in the boxes' dtype
    inside: Tensor  # (k, L) whether the grid point lies on the map

    @classmethod
    def of(cls, low: Tensor, high: Tensor, bins: int, size: int, length: int) -> _Axis:
        edges, bin_width = bin_edges(low, high, bins)
        start, _ = _window_bounds(low, high, size)
        index = start[:, None] + torch.arange(length, device=low.device)
        grid = index.to(low.dtype)
        return cls(edges, bin_width, index.clamp(max=size - 1), grid, index < size)

    def integral(self) -> Tensor:
        """(k, bins, L) integral weights of each bin over the window."""
        return integral_weights(self.edges, self.grid) * self.inside[:, None, :]

    def edge(self) -> Tensor:
        """(k, bins + 1, L) interpolation weights on each bin edge over the window."""
        return edge_weights(self.edges, self.grid) * self.inside[:, None, :]


def _window_bounds(low: Tensor, high: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """First grid index and number of grid points (k,) whose hat overlaps [low, high]."""
    low = low.detach()
    high = torch.maximum(high.detach(), low)
    start = low.clamp(0, size - 1).floor().long()
    # One point past ceil(high): the last bin edge may round a hair above `high`.
    stop = (high.clamp(0, size - 1).ceil().long() + 1).clamp(max=size - 1)
    return start, stop - start + 1


def _crops(feature: Tensor, axis_y: _Axis, axis_x: _Axis) -> Tensor:
    """Windows (k, Lh, Lw, C) of an (H, W, C) map."""
    return feature[axis_y.index[:, :, None], axis_x.index[:, None, :]]


def _bin_rows(weights_y: Tensor, crops: Tensor) -> Tensor:
    """rows[k, p, j, c]: integral over bin row p of the surface on window column j."""
    k, lh, lw, c = crops.shape
    return torch.bmm(weights_y, crops.reshape(k, lh, lw * c)).view(k, -1, lw, c)


def _pool_boxes(
    feature: Tensor,
    boxes: Tensor,
    pooled: tuple[int, int],
    scale: float,
    window: tuple[int, int],
) -> Tensor:
    """PrRoIPool of one (H, W, C) map over boxes (k, 4): (k, C, PH, PW)."""
    height, width, _ = feature.shape
    x0, y0, x1, y1 = (boxes * scale).unbind(1)
    axis_x = _Axis.of(x0, x1, pooled[1], width, window[1])
    axis_y = _Axis.of(y0, y1, pooled[0], height, window[0])
    rows = _bin_rows(axis_y.integral(), _crops(feature, axis_y, axis_x))
    integral = torch.matmul(axis_x.integral().unsqueeze(1), rows)  # (k, PH, PW, C)
    inv_area = _inverse_area(axis_x.bin_width * axis_y.bin_width)
    return (integral * inv_area[:, None, None, None]).permute(0, 3, 1, 2)


def _coord_grad_boxes(
    feature: Tensor,
    boxes: Tensor,
    grad: Tensor,
    pooled: tuple[int, int],
    scale: float,
    window: tuple[int, int],
) -> Tensor:
    """Gradient of (PrRoIPool * grad).sum() w.r.t. boxes (k, 4) on one (H, W, C) map: (k, 4)."""
    pooled_h, pooled_w = pooled
    height, width, _ = feature.shape
    x0, y0, x1, y1 = (boxes * scale).unbind(1)
    axis_x = _Axis.of(x0, x1, pooled_w, width, window[1])
    axis_y = _Axis.of(y0, y1, pooled_h, height, window[0])
    weights_x = axis_x.integral().unsqueeze(1)
    crops = _crops(feature, axis_y, axis_x)
    grad = grad.permute(0, 2, 3, 1)  # (k, PH, PW, C), the layout of the products below

    rows = _bin_rows(axis_y.integral(), crops)  # (k, PH, Lw, C)
    cols = torch.matmul(weights_x, crops)  # (k, Lh, PW, C): integral over bin column q
    integral = torch.matmul(weights_x, rows)  # (k, PH, PW, C)
    # Line integrals of the surface along the vertical bin edges and the horizontal ones.
    vertical = torch.matmul(axis_x.edge().unsqueeze(1), rows)  # (k, PH, PW + 1, C)
    horizontal = _bin_rows(axis_y.edge(), cols)  # (k, PH + 1, PW, C)

    weighted_integral = (grad * integral).sum(-1)  # (k, PH, PW)
    left = (grad * vertical[:, :, :-1]).sum(-1)
    right = (grad * vertical[:, :, 1:]).sum(-1)
    top = (grad * horizontal[:, :-1]).sum(-1)
    bottom = (grad * horizontal[:, 1:]).sum(-1)

    # out = I / S with S = bin_w * bin_h: dout/dxa = (I / bin_w - L_a) / S, and so on.
    bin_w = axis_x.bin_width[:, None, None]
    bin_h = axis_y.bin_width[:, None, None]
    inv_area = _inverse_area(bin_w * bin_h)
    shrink_x = weighted_integral * bin_h * inv_area**2
    shrink_y = weighted_integral * bin_w * inv_area**2
    d_left = shrink_x - left * inv_area
    d_right = right * inv_area - shrink_x
    d_top = shrink_y - top * inv_area
    d_bottom = bottom * inv_area - shrink_y

    # Bin edge q sits at x0 + (x1 - x0) * q / PW; its weight on x1 is q / PW, on x0 the rest.
    frac_x = torch.arange(pooled_w + 1, dtype=boxes.dtype, device=boxes.device) / pooled_w
    frac_y = torch.arange(pooled_h + 1, dtype=boxes.dtype, device=boxes.device) / pooled_h
    grad_x1 = (d_left * frac_x[:-1] + d_right * frac_x[1:]).sum((1, 2))
    grad_y1 = (d_top * frac_y[:-1, None] + d_bottom * frac_y[1:, None]).sum((1, 2))
    grad_x0 = (d_left + d_right).sum((1, 2)) - grad_x1
    grad_y0 = (d_top + d_bottom).sum((1, 2)) - grad_y1
    return torch.stack([grad_x0, grad_y0, grad_x1, grad_y1], dim=1) * scale


def _inverse_area(area: Tensor) -> Tensor:
    """1 / area where area > 0, else 0 (a zero-area bin outputs 0 with zero gradient)."""
    positive = area > 0
    return torch.where(positive, 1 / torch.where(positive, area, torch.ones_like(area)), 0)


def _run_chunks(
    compute: Callable[[Tensor, _Chunk], Tensor],
    features: Tensor,
    boxes: Tensor,
    pooled: tuple[int, int],
    scale: float,
) -> Tensor:
    """Apply `compute(map (H, W, C), chunk)` to every chunk; results in the order of `boxes`."""
    parts, order = [], []
    for image, feature in enumerate(features.unbind(0)):
        feature = feature.permute(1, 2, 0).contiguous()
        for chunk in _plan_chunks(boxes, image, feature.shape, pooled, scale):
            parts.append(compute(feature, chunk))
            order.append(chunk.rows)
    return torch.cat(parts)[torch.argsort(torch.cat(order))]


def _plan_chunks(
    boxes: Tensor, image: int, map_shape: torch.Size, pooled: tuple[int, int], scale: float
) -> list[_Chunk]:
    """Split one image's boxes, smallest window first, into chunks within CHUNK_ELEMENTS."""
    height, width, channels = map_shape
    rows = torch.nonzero(boxes[:, 0].detach() == image).flatten()
    if rows.numel() == 0:
        return []
    x0, y0, x1, y1 = (boxes[rows, 1:].detach() * scale).unbind(1)
    _, length_x = _window_bounds(x0, x1, width)
    _, length_y = _window_bounds(y0, y1, height)
    side = torch.maximum(length_x, length_y)
    ranked = torch.argsort(side, stable=True)
    rows, length_x, length_y, side = rows[ranked], length_x[ranked], length_y[ranked], side[ranked]
    # Per-box elements of the largest intermediates (the window, and a window row per bin row).
    cost = (channels * (side * side + (sum(pooled) + 2) * side)).tolist()
    lengths_x, lengths_y = length_x.tolist(), length_y.tolist()
    chunks, first = [], 0
    while first < len(cost):
        # Costs ascend, so (count * cost of the last box) bounds the chunk and grows with count.
        last = first + bisect.bisect_right(
            range(first, len(cost)), CHUNK_ELEMENTS, key=lambda i: (i - first + 1) * cost[i]
        )
        last = max(last, first + 1)
        window = (max(lengths_y[first:last]), max(lengths_x[first:last]))
        chunks.append(_Chunk(image, rows[first:last], window))
        first = last
    return chunks
