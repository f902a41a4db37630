"""Time of iou_nms, nms and soft_nms (iounet.runtime) next to torchvision's batched_nms on the
same boxes, in one run: the median of many calls, and the ratio to batched_nms. iou_nms runs on
its device kernel (the native or CUDA library where built) and on its PyTorch reference kernel.

Two scenes of N boxes with 80 labels on an 800x1333 image: "detections", like a detector's raw
output (20 objects, boxes jittered around them with mostly their label, 20 % scattered boxes,
predicted IoU = true IoU + noise: many overlaps), and "scattered" (boxes 16-316 px placed
uniformly at random: few overlaps).

Each case runs ``--rounds`` times (alternating the order of the cases) as ``--repeats`` calls
in a row after a warm-up call. The default is one CPU thread: the ops here are too small to gain
from threads, and on a small shared machine waking the thread pool can add milliseconds.

    python benchmarks/nms_bench.py [--boxes 1000 5000] [--scenes detections scattered]
        [--device cpu] [--repeats 30] [--rounds 3] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from iounet.plugins import reference_kernels
from iounet.runtime import iou_nms, nms, soft_nms

BASELINE = "torchvision batched_nms"
IMAGE_WIDTH, IMAGE_HEIGHT = 1333.0, 800.0
CLASSES = 80
IOU_THRESHOLD = 0.5


def detections(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Boxes (N, 4), scores, predicted IoUs and labels like a detector's raw output."""
    objects = 20
    size = torch.exp(torch.empty(objects).uniform_(3.5, 6.0, generator=generator))  # 33-400 px
    aspect = torch.exp(torch.empty(objects).uniform_(-0.7, 0.7, generator=generator))
    extent = torch.stack([size * aspect.sqrt(), size / aspect.sqrt()], 1)
    centre = torch.rand((objects, 2), generator=generator) * torch.tensor(
        [IMAGE_WIDTH, IMAGE_HEIGHT]
    )
    truth = torch.cat([centre - extent / 2, centre + extent / 2], 1)
    truth_label = torch.randint(CLASSES, (objects,), generator=generator)

    owner = torch.randint(objects, (n,), generator=generator)
    c = centre[owner] + 0.1 * extent[owner] * torch.randn((n, 2), generator=generator)
    half = extent[owner] * torch.exp(0.15 * torch.randn((n, 2), generator=generator)) / 2
    scattered = _scattered_boxes(n, generator)
    stray = torch.rand(n, generator=generator) < 0.2
    boxes = torch.where(stray[:, None], scattered, torch.cat([c - half, c + half], 1))
    boxes = _clip(boxes)
    wrong = stray | (torch.rand(n, generator=generator) < 0.3)
    labels = torch.where(
        wrong, torch.randint(CLASSES, (n,), generator=generator), truth_label[owner]
    )
    overlap = torchvision.ops.box_iou(boxes, truth).amax(1)
    ious = (overlap + 0.1 * torch.randn(n, generator=generator)).clamp(0, 1)
    scores = 0.5 * overlap + 0.5 * torch.rand(n, generator=generator)
    return boxes, scores, ious, labels


def scattered(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Boxes 16-316 px placed uniformly at random, random scores, IoUs and labels."""
    boxes = _scattered_boxes(n, generator)
    scores = torch.rand(n, generator=generator)
    ious = torch.rand(n, generator=generator)
    return boxes, scores, ious, torch.randint(CLASSES, (n,), generator=generator)


SCENES = {"detections": detections, "scattered": scattered}


def _scattered_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    size = 16 + torch.rand((n, 2), generator=generator) * 300
    room = torch.tensor([IMAGE_WIDTH, IMAGE_HEIGHT]) - size
    corner = torch.rand((n, 2), generator=generator) * room
    return torch.cat([corner, corner + size], 1)


def _clip(boxes: torch.Tensor) -> torch.Tensor:
    upper = torch.tensor([IMAGE_WIDTH, IMAGE_HEIGHT, IMAGE_WIDTH, IMAGE_HEIGHT])
    return boxes.clamp_min(0).minimum(upper)


def cases(boxes, scores, ious, labels) -> dict[str, Callable[[], torch.Tensor]]:
    """Each case's work as a callable returning the kept indices."""
    return {
        BASELINE: lambda: torchvision.ops.batched_nms(boxes, scores, labels, IOU_THRESHOLD),
        "nms": lambda: nms(boxes, scores, labels, IOU_THRESHOLD),
        "iou_nms": lambda: iou_nms(boxes, scores, ious, labels, IOU_THRESHOLD)[0],
        "iou_nms (reference kernel)": lambda: _on_reference(
            lambda: iou_nms(boxes, scores, ious, labels, IOU_THRESHOLD)[0]
        ),
        "soft_nms (gaussian)": lambda: soft_nms(boxes, scores, labels)[0],
    }


def _on_reference(work: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`work` on the ops' plain PyTorch kernels (iounet.plugins.reference_kernels)."""
    with reference_kernels():
        return work()


def measure(
    work: dict[str, Callable[[], torch.Tensor]], device: str, repeats: int, rounds: int
) -> dict[str, float]:
    """Median milliseconds per call of each case."""
    samples: dict[str, list[float]] = {name: [] for name in work}
    for round_index in range(rounds):
        names = list(work) if round_index % 2 == 0 else list(reversed(work))
        for name in names:
            work[name]()  # warm-up
            for _ in range(repeats):
                _synchronize(device)
                start = time.perf_counter()
                work[name]()
                _synchronize(device)
                samples[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(times) for name, times in samples.items()}


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--scenes", nargs="+", choices=list(SCENES), default=list(SCENES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(
        f"{CLASSES} labels, IoU threshold {IOU_THRESHOLD}, device {args.device}, "
        f"{args.threads} threads, median of {args.rounds} x {args.repeats} calls, "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    )
    results: dict[str, dict[str, dict[str, float]]] = {}
    for scene in args.scenes:
        for n in args.boxes:
            generator = torch.Generator().manual_seed(n)
            inputs = [t.to(args.device) for t in SCENES[scene](n, generator)]
            work = cases(*inputs)
            kept = {name: int(run().numel()) for name, run in work.items()}
            figures = measure(work, args.device, args.repeats, args.rounds)
            results[f"{scene} {n}"] = {
                name: {"median_ms": figures[name], "kept": kept[name]} for name in work
            }
            print(f"\n{scene}, N = {n}")
            print(f"{'case':<26} {'median ms':>10} {'kept':>6}  time vs baseline")
            for name, ms in figures.items():
                ratio = ms / figures[BASELINE]
                print(f"{name:<26} {ms:>10.3f} {kept[name]:>6}  {ratio:.2f}x {BASELINE}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
