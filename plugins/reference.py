"""PrRoIPool in plain PyTorch: the reference kernels of the registered ops (any device).

Contract (docs/design.md): `input` (N, C, H, W); `rois` (K, 5) rows `[batch_index, x0, y0, x1, y1]`
in input-image coordinates, multiplied by `spatial_scale`; output (K, C, PH, PW). Feature
w[i, j] sits at the continuous point (x = j, y = i), the surface is 0 outside the map, and each
bin's integral is divided by the bin's full area. A box's width and height are clamped at 0 and a
bin of zero area outputs 0 with zero gradient. Arguments are checked by the ops
(`iounet.plugins.ops`) before they get here.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from iounet.plugins.bilinear_integral import bin_edges, edge_weights, integral_weights

# Largest intermediate (in elements) one chunk of boxes may allocate: 2**24 is 64 MiB in float32.
CHUNK_ELEMENTS = 1 << 24


class _Chunk(NamedTuple):
    """Boxes of one image pooled together, and the window of the map that covers all of them."""

    image: int
    rows: Tensor
    window: tuple[int, int]


def pool(input: Tensor, rois: Tensor, pooled: tuple[int, int], scale: float) -> Tensor:
    """PrRoIPool of rois (K, 5) on `input`: (K, C, PH, PW) in the dtype of `input`.

    Differentiable by autograd w.r.t. `input` and `rois` (the independent check of the written-out
    gradients). Half-precision arguments are computed in float32. A row whose batch index is not
    an image of `input` (after rounding) or that holds NaN/Inf pools to zeros.
    """
    num_channels = input.shape[1]
    output = input.new_zeros((rois.shape[0], num_channels, *pooled))
    valid = valid_rows(rois, input.shape[0])
    if not bool(valid.any()):
        return output
    needs_graph = torch.is_grad_enabled() and (input.requires_grad or rois.requires_grad)
    features, boxes = _working_precision(input, rois[valid])

    def compute(feature: Tensor, chunk: _Chunk) -> Tensor:
        args = (feature, boxes[chunk.rows, 1:], _Bins(pooled, scale, chunk.window))
        if needs_graph:
            return checkpoint(_pool_boxes, *args, use_reentrant=False)
        return _pool_boxes(*args)

    values = _run_chunks(compute, features, boxes, pooled, scale).to(input.dtype).contiguous()
    if bool(valid.all()):
        return values
    return output.index_put((valid.nonzero().flatten(),), values)


def coord_grad(
    input: Tensor, rois: Tensor, grad_output: Tensor, pooled: tuple[int, int], scale: float
) -> Tensor:
    """Gradient of `(pool(input, rois) * grad_output).sum()` w.r.t. rois: (K, 5), column 0 zero.

    Closed form (line integrals of the surface along each bin edge, chained to the box corners),
    without autograd; in the dtype of `rois`.
    """
    result = rois.new_zeros((rois.shape[0], 5))
    valid = valid_rows(rois, input.shape[0])
    if not bool(valid.any()):
        return result
    with torch.no_grad():
        features, boxes = _working_precision(input.detach(), rois.detach()[valid])
        grad = grad_output.detach()[valid].to(features.dtype)

        def compute(feature: Tensor, chunk: _Chunk) -> Tensor:
            bins = _Bins(pooled, scale, chunk.window)
            return _coord_grad_boxes(feature, boxes[chunk.rows, 1:], grad[chunk.rows], bins)

        corners = _run_chunks(compute, features, boxes, pooled, scale)
        result[valid.nonzero().flatten(), 1:] = corners.to(rois.dtype)
    return result


def feature_grad(
    input: Tensor, rois: Tensor, grad_output: Tensor, pooled: tuple[int, int], scale: float
) -> Tensor:
    """Gradient of `(pool(input, rois) * grad_output).sum()` w.r.t. `input`, in its dtype.

    Closed form: each bin scatters its gradient with the same integral weights it pools with.
    """
    valid = valid_rows(rois, input.shape[0])
    features, boxes = _working_precision(input.detach(), rois.detach()[valid])
    grad = grad_output.detach()[valid].to(features.dtype).permute(0, 2, 3, 1)  # (k, PH, PW, C)
    result = torch.zeros_like(features).permute(0, 2, 3, 1)  # (N, H, W, C) view
    for image in range(features.shape[0]):
        feature = result[image]
        for chunk in _plan_chunks(boxes, image, feature.shape, pooled, scale):
            bins = _Bins(pooled, scale, chunk.window)
            index_y, index_x, values = _scatter_boxes(
                boxes[chunk.rows, 1:], grad[chunk.rows], bins, feature.shape
            )
            feature.index_put_((index_y, index_x), values, accumulate=True)
    return result.permute(0, 3, 1, 2).to(input.dtype).contiguous()


def valid_rows(rois: Tensor, num_images: int) -> Tensor:
    """(K,) whether a row is finite and its batch index rounds to an image in [0, num_images).

    The rule of the native kernels (prroi_pool_math.h): the index is floor(v + 0.5) for
    -1 < v < 2**30; other rows pool to zeros with zero gradient.
    """
    values = rois.detach()
    index = values[:, 0]
    finite = torch.isfinite(values).all(1)
    inside = (index > -1) & (index < 2**30)
    batch = torch.floor(torch.where(finite & inside, index, 0) + 0.5)
    return finite & inside & (batch >= 0) & (batch < num_images)


def _working_precision(input: Tensor, table: Tensor) -> tuple[Tensor, Tensor]:
    """Both in the promoted type of the two and float32 (half precision is computed in float32)."""
    dtype = torch.promote_types(torch.promote_types(input.dtype, table.dtype), torch.float32)
    return input.to(dtype), table.to(dtype)


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


class _Bins(NamedTuple):
    """The bins of a chunk of boxes: PH x PW of them on box coordinates times `scale`, within
    a map window of (Lh, Lw) grid points."""

    pooled: tuple[int, int]
    scale: float
    window: tuple[int, int]

    def axes(self, boxes: Tensor, map_shape: torch.Size) -> tuple[_Axis, _Axis]:
        """The x and y axes of boxes (k, 4) on an (H, W, C) map."""
        height, width, _ = map_shape
        x0, y0, x1, y1 = (boxes * self.scale).unbind(1)
        axis_x = _Axis.of(x0, x1, self.pooled[1], width, self.window[1])
        axis_y = _Axis.of(y0, y1, self.pooled[0], height, self.window[0])
        return axis_x, axis_y


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


def _pool_boxes(feature: Tensor, boxes: Tensor, bins: _Bins) -> Tensor:
    """PrRoIPool of one (H, W, C) map over boxes (k, 4): (k, C, PH, PW)."""
    axis_x, axis_y = bins.axes(boxes, feature.shape)
    rows = _bin_rows(axis_y.integral(), _crops(feature, axis_y, axis_x))
    integral = torch.matmul(axis_x.integral().unsqueeze(1), rows)  # (k, PH, PW, C)
    inv_area = _inverse_area(axis_x.bin_width * axis_y.bin_width)
    return (integral * inv_area[:, None, None, None]).permute(0, 3, 1, 2)


def _coord_grad_boxes(feature: Tensor, boxes: Tensor, grad: Tensor, bins: _Bins) -> Tensor:
    """Gradient of (PrRoIPool * grad).sum() w.r.t. boxes (k, 4) on one (H, W, C) map: (k, 4)."""
    pooled_h, pooled_w = bins.pooled
    axis_x, axis_y = bins.axes(boxes, feature.shape)
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
    return torch.stack([grad_x0, grad_y0, grad_x1, grad_y1], dim=1) * bins.scale


def _scatter_boxes(
    boxes: Tensor, grad: Tensor, bins: _Bins, map_shape: torch.Size
) -> tuple[Tensor, Tensor, Tensor]:
    """Feature gradient of boxes (k, 4) with grad (k, PH, PW, C) on an (H, W, C) map: the window
    indices (k, Lh, 1), (k, 1, Lw) and the values (k, Lh, Lw, C) to add there."""
    axis_x, axis_y = bins.axes(boxes, map_shape)
    inv_area = _inverse_area(axis_x.bin_width * axis_y.bin_width)
    per_bin = grad * inv_area[:, None, None, None]
    columns = torch.einsum("kqj,kpqc->kpjc", axis_x.integral(), per_bin)  # (k, PH, Lw, C)
    values = torch.einsum("kpi,kpjc->kijc", axis_y.integral(), columns)  # (k, Lh, Lw, C)
    return axis_y.index[:, :, None], axis_x.index[:, None, :], values


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
    rows = torch.nonzero(torch.floor(boxes[:, 0].detach() + 0.5) == image).flatten()
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
