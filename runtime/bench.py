"""Per-stage latency of the pipeline on several backends with the same image (and the same raw
detections, or the model's own detector: image in, boxes out)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from iounet.runtime.pipeline import Pipeline

#: Stages in the order of the table; refine_step_0 is the IoU and gradient at the start. The
#: detector's stages (rpn, box_head) run without given detections; nms is the FPN baseline's.
STAGES = ("backbone", "rpn", "box_head", "nms", "iou_head", "iou_nms", "refine", "total")
PERCENTILES = (50, 90, 99)
THROUGHPUT = "images_per_s"


@dataclass(frozen=True)
class BenchInputs:
    """One image (3, H, W) and raw detections on it (None: the model's detector finds them)."""

    image: Tensor
    boxes: Tensor | None = None
    scores: Tensor | None = None
    labels: Tensor | None = None


def image_inputs(image: Tensor, height: int, width: int) -> BenchInputs:
    """`image` (3, h, w), float in [0, 1] or uint8, resized (bilinear) to exactly `height` x
    `width`, for the detector to find its own detections on."""
    if height < 32 or width < 32:
        raise ValueError(f"the image must be at least 32x32, got {height}x{width}")
    pixels = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    resized = torch.nn.functional.interpolate(
        pixels[None], size=(height, width), mode="bilinear", align_corners=False
    )
    return BenchInputs(resized[0].clamp(0, 1))


def synthetic_inputs(
    height: int, width: int, detections: int, num_classes: int, seed: int = 0
) -> BenchInputs:
    """A random image and detector-like raw detections: clusters of boxes around 20 objects.

    Deterministic for a seed, so every backend (and every run) sees the same input.
    """
    if height < 32 or width < 32:
        raise ValueError(f"the image must be at least 32x32, got {height}x{width}")
    if detections <= 0:
        raise ValueError(f"detections must be positive, got {detections}")
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand((3, height, width), generator=generator)
    objects = 20
    size = torch.tensor([width, height], dtype=torch.float32)
    extent = (0.1 + 0.5 * torch.rand((objects, 2), generator=generator)) * size
    corner = torch.rand((objects, 2), generator=generator) * (size - extent)
    owner = torch.randint(objects, (detections,), generator=generator)
    jitter = 0.15 * torch.randn((detections, 4), generator=generator)
    wh = extent[owner].repeat(1, 2)
    boxes = torch.cat([corner[owner], corner[owner] + extent[owner]], dim=1) + jitter * wh
    boxes = torch.minimum(boxes.clamp_min(0), size.repeat(2))
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    labels = torch.randint(num_classes, (objects,), generator=generator)[owner]
    scores = torch.rand(detections, generator=generator)
    return BenchInputs(image, boxes, scores, labels)


def measure(pipeline: Pipeline, inputs: BenchInputs, warmup: int, runs: int) -> dict:
    """Stage -> {p50_ms, p90_ms, p99_ms} over `runs` runs after `warmup`; the total stage also
    holds the throughput (images_per_s, from the mean total time)."""
    if warmup < 0 or runs <= 0:
        raise ValueError(f"need warmup >= 0 and runs > 0, got {warmup} and {runs}")
    samples: dict[str, list[float]] = defaultdict(list)

    def record(stage: str, seconds: float) -> None:
        samples[stage].append(seconds * 1e3)

    raw = (inputs.boxes, inputs.scores, inputs.labels)
    for _ in range(warmup):
        pipeline.run_scaled(inputs.image, 1.0, None, *raw)
    for _ in range(runs):
        pipeline.run_scaled(inputs.image, 1.0, None, *raw, timer=record)
    result = {stage: _percentiles(values) for stage, values in samples.items()}
    result["total"][THROUGHPUT] = 1e3 / float(np.mean(samples["total"]))
    return result


def _percentiles(values: list[float]) -> dict[str, float]:
    return {f"p{p}_ms": float(np.percentile(values, p)) for p in PERCENTILES}


def stage_order(results: dict[str, dict]) -> list[str]:
    """The stages found in `results`, pipeline order (refinement steps before the total)."""
    found = {stage for table in results.values() for stage in table}
    steps = sorted((s for s in found if s.startswith("refine_step_")), key=lambda s: int(s[12:]))
    before = STAGES.index("refine")
    ordered = [s for s in STAGES[:before] if s in found] + steps
    return ordered + [s for s in STAGES[before:] if s in found]


def format_latency_table(results: dict[str, dict], baseline: str | None = None) -> str:
    """Backends side by side: p50 / p90 / p99 ms per stage, throughput, refinement ratios."""
    backends = list(results)
    lines = [f"{'stage (ms, p50/p90/p99)':<24}" + "".join(f"{name:>24}" for name in backends)]
    for stage in stage_order(results):
        cells = []
        for name in backends:
            entry = results[name].get(stage)
            cells.append(
                "-" if entry is None else "/".join(f"{entry[f'p{p}_ms']:.2f}" for p in PERCENTILES)
            )
        lines.append(f"{stage:<24}" + "".join(f"{cell:>24}" for cell in cells))
    lines.append(
        f"{'throughput (images/s)':<24}"
        + "".join(f"{results[name]['total'][THROUGHPUT]:>24.1f}" for name in backends)
    )
    if baseline in results and "refine" in results[baseline]:
        reference = results[baseline]["refine"]["p50_ms"]
        for name in backends:
            if name != baseline and "refine" in results[name]:
                mine = results[name]["refine"]["p50_ms"]
                lines.append(
                    f"refinement {name} vs {baseline} (p50): {mine:.2f} ms vs {reference:.2f} ms "
                    f"= {_speed(mine, reference)}"
                )
    return "\n".join(lines)


def overhead_line(results: dict[str, dict], fpn: str, iounet: str) -> str:
    """Table 4's comparison: total p50 of IoU-Net vs the FPN baseline on the same backbone."""
    base, full = results[fpn]["total"]["p50_ms"], results[iounet]["total"]["p50_ms"]
    ratio = f"{full / base:.2f}x" if base > 0 else "-"
    return (
        f"{iounet} vs {fpn} (total p50): {full:.1f} ms vs {base:.1f} ms "
        f"({full - base:+.1f} ms, {ratio})"
    )


def _speed(mine: float, reference: float) -> str:
    """How much faster (or slower) a time of `mine` ms is than `reference` ms."""
    if mine <= 0 or reference <= 0:
        return "-"
    if mine <= reference:
        return f"{reference / mine:.2f}x faster"
    return f"{mine / reference:.2f}x slower"
