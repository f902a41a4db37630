"""Box cases and inputs shared by the PrRoIPool tests of every backend."""

from __future__ import annotations

import torch

# Boxes on a (2, 3, 6, 7) map, rows [batch_index, x0, y0, x1, y1].
BOX_CASES = {
    "inside": [[0, 1.3, 0.7, 4.6, 3.9], [1, 0.2, 2.1, 2.9, 5.3]],
    "partly_outside": [[0, -1.7, -0.6, 3.2, 2.5], [1, 4.5, 3.1, 8.9, 7.4]],
    "wholly_outside": [[0, 9.5, 1.0, 12.0, 3.0], [1, -5.0, -4.0, -1.5, -1.2]],
    "covers_map": [[1, -2.3, -1.9, 8.4, 7.7]],
    "inside_one_cell": [[0, 2.2, 3.3, 2.45, 3.35]],
    "on_grid_lines": [[0, 1.0, 1.0, 5.0, 4.0]],
}
DEGENERATE_CASES = {
    "zero_width": [[0, 2.0, 1.0, 2.0, 4.0]],
    "zero_height": [[1, 1.5, 2.5, 4.5, 2.5]],
    "inverted": [[0, 4.0, 1.0, 2.0, 3.0], [1, 1.0, 5.0, 3.0, 2.0]],
}
OUTPUT_SIZES = [(2, 2), (3, 2), (1, 4)]
TOLERANCE = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-10},
    torch.float32: {"rtol": 1e-4, "atol": 2e-5},
    # float16 outputs are rounded to half: relative error up to 2^-11 of values around 1.
    torch.float16: {"rtol": 2e-3, "atol": 2e-5},
}


def make_features(
    dtype: torch.dtype, device: str, shape=(2, 3, 6, 7), seed: int = 0
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype).to(device)


def make_rois(rows, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).to(dtype).to(device)
