"""GPU latency of the torch-cuda path against its latency targets, printed (never asserted).

    python benchmarks/gpu_bench.py [--runs 50]

One 800x1216 image through a paper-sized IoU-Net (ResNet-50 FPN, 256 channels, 1024-d head,
random weights): backbone, IoU head on 1,000 boxes, IoU-NMS of 1,000 boxes, each of 5 refinement
steps of 100 boxes and the total, p50/p90/p99 from CUDA-synchronized wall clocks; then the
refinement as one CUDA graph replay, IoU-NMS alone, and PrRoIPool forward of 1,000 boxes on a
256x200x304 map next to torchvision's roi_align (sampling_ratio=2) on the same inputs.
Targets: refinement <= 1 ms, IoU-NMS <= 0.2 ms, PrRoIPool within 2x of roi_align.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

from iounet.runtime import Pipeline, iou_nms
from iounet.runtime.bench import format_latency_table, measure, synthetic_inputs
from iounet.runtime.torch_cuda_backend import TorchCudaBackend
from iounet.training.model import IoUNet, ModelConfig

HEIGHT, WIDTH, DETECTIONS, CLASSES = 800, 1216, 1000, 80


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device is visible", file=sys.stderr)
        return 1
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = IoUNet(ModelConfig(backbone="resnet50"), CLASSES)
    backend = TorchCudaBackend(model, device)
    pipeline = Pipeline(backend, CLASSES)
    inputs = synthetic_inputs(HEIGHT, WIDTH, DETECTIONS, CLASSES)
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    print(f"\none {HEIGHT}x{WIDTH} image, {DETECTIONS} raw detections, top-100 refined, 5 steps:")
    table = measure(pipeline, inputs, warmup=5, runs=args.runs)
    print(format_latency_table({"torch-cuda": table}))

    maps = backend.features(inputs.image[None].to(device))
    boxes, labels = inputs.boxes[:100].to(device), inputs.labels[:100].to(device)
    size = (HEIGHT, WIDTH)
    graph_ms = _time(lambda: backend.refine(maps, boxes, labels, size), args.runs)
    print(f"\nrefinement of 100 boxes, 5 steps, one CUDA graph replay: {graph_ms:.3f} ms "
          f"(target <= 1 ms)")  # fmt: skip

    rois = torch.cat([torch.zeros(DETECTIONS, 1), inputs.boxes], 1).to(device)
    all_labels = inputs.labels.to(device)
    ious = backend.iou(maps, rois, all_labels)
    scores, all_boxes = inputs.scores.to(device), inputs.boxes.to(device)
    nms_ms = _time(lambda: iou_nms(all_boxes, scores, ious, all_labels, 0.5), args.runs)
    print(f"IoU-NMS of {DETECTIONS} boxes: {nms_ms:.3f} ms (target <= 0.2 ms)")

    _pool_against_roi_align(device, args.runs)
    return 0


def _pool_against_roi_align(device: torch.device, runs: int) -> None:
    from torchvision.ops import roi_align

    generator = torch.Generator().manual_seed(1)
    features = torch.randn((1, 256, 200, 304), generator=generator).to(device)
    side = torch.exp(torch.empty(1000, 2).uniform_(2.8, 6.3, generator=generator))
    centre = torch.rand((1000, 2), generator=generator) * torch.tensor([2432.0, 1600.0])
    rois = torch.cat([torch.zeros(1000, 1), centre - side / 2, centre + side / 2], 1).to(device)
    ours = _time(lambda: torch.ops.iounet.prroi_pool(features, rois, 7, 7, 0.125), runs)
    theirs = _time(
        lambda: roi_align(features, rois, (7, 7), 0.125, sampling_ratio=2, aligned=False), runs
    )
    print(f"PrRoIPool forward, 1000 boxes on 1x256x200x304: {ours:.3f} ms; "
          f"roi_align(sampling_ratio=2): {theirs:.3f} ms; ratio {ours / theirs:.2f}x "
          f"(target <= 2x)")  # fmt: skip


def _time(work: Callable[[], object], runs: int) -> float:
    """Median milliseconds of `work` on the current stream (CUDA events), after a warm-up."""
    for _ in range(5):
        work()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        work()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(torch.tensor(times).median())


if __name__ == "__main__":
    sys.exit(main())
