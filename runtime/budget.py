"""How many boxes one backend call takes: a memory budget over the bytes one box needs.

The IoU head pools every box on all FPN levels (``levels * channels * pool_size**2`` floats
a box) and the gradient graphs hold about as much again twice (pooled values, their gradient,
the layers' activations), so a call's memory grows with its box count. The pipeline splits the
boxes of an image into calls of at most :func:`boxes_per_call` boxes; each box's result does
not depend on the others in its call, so the results are the same for any budget.
"""

from __future__ import annotations

from collections.abc import Iterator

#: Default memory budget of one backend call (bytes): PipelineConfig.memory_budget.
DEFAULT_MEMORY_BUDGET = 256 * 2**20
#: Bytes a pooled float takes in a call, counting its gradient and the layers after it.
BYTES_PER_POOLED_VALUE = 3 * 4
#: Per-box sizes assumed without a manifest: the paper's model (256 channels, 7x7, 4 levels).
PAPER_BOX = (256, 7, 4)


def bytes_per_box(channels: int, pool_size: int, levels: int) -> int:
    """Bytes of intermediates one box takes in an IoU-and-gradient call."""
    return BYTES_PER_POOLED_VALUE * levels * channels * pool_size**2


def boxes_per_call(memory_budget: int, box_bytes: int) -> int:
    """Boxes per backend call under `memory_budget` bytes (at least one)."""
    if memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    return max(1, memory_budget // max(1, box_bytes))


def chunks(count: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most `size` covering range(count)."""
    for start in range(0, count, size):
        yield slice(start, min(count, start + size))
