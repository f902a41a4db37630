"""Per-frame IoU-Net box refinement of pytracking's trackers (ATOM, DiMP): ONNX Runtime (exported
graphs, written-out gradient) next to PyTorch with autograd (pytracking's ``optimize_boxes`` loop),
on the CPU, in one run.

For each size (ATOM: ResNet-18, layer2 36x36x128 and layer3 18x18x256 of a 288x288 crop; DiMP:
ResNet-50, 512 and 1024 channels) a network with random weights is saved as a pytracking
checkpoint and exported with ``export_tracking_model``. Per backend it times the IoU features of the
test frame (``get_iou_feat``), the refinement on them (5 iterations of 10 proposals, "atom"
parametrization, step length 1) and both (a frame): median (p50) and p90 over ``--repeats``
calls after a warm-up, ``--rounds`` times, the backends' order alternating.

* ``torch autograd``: the PyTorch module, PrRoIPool ops on the plain PyTorch kernels, the box
  gradient by autograd (pytracking's loop, written out here);
* ``torch-native autograd``: the same with the native CPU PrRoIPool kernels;
* ``torch-native``: ``TrackerRefiner`` on the PyTorch module (native kernels, written-out
  gradient, no autograd);
* ``ort``: ``TrackerRefiner`` on the exported graphs in ONNX Runtime.

    python benchmarks/tracking_bench.py [--sizes atom dimp] [--repeats 20] [--rounds 3]
        [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from iounet.export.tracking_export import export_tracking_model
from iounet.plugins import reference_kernels
from iounet.runtime import TrackerRefiner
from iounet.training.tracking_model import TrackingConfig, TrackingNet

SIZES = {"atom": "resnet18", "dimp": "resnet50"}
CROP, PROPOSALS, ITERATIONS = 288, 10, 5
BOX = torch.tensor([110.0, 100.0, 70.0, 90.0])


def random_net(backbone: str, seed: int = 0) -> TrackingNet:
    """pytracking's sizes with random weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = TrackingNet(TrackingConfig(backbone))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def autograd_refine(net: nn.Module, modulation, feat, proposals: torch.Tensor):
    """pytracking's optimize_boxes with autograd (the box gradient by backward)."""
    boxes, step = proposals.view(1, -1, 4), 1.0
    for _ in range(ITERATIONS):
        start = boxes.clone().detach().requires_grad_()
        outputs = net.predict_iou(modulation, feat, start)
        outputs.backward(gradient=torch.ones_like(outputs))
        boxes = (start + step * start.grad * start[:, :, 2:].repeat(1, 1, 2)).detach()
    return boxes.view(-1, 4), outputs.detach().view(-1)


#: stage name -> what it runs: (features, refine) -> a call of that stage.
STAGES: dict[str, Callable[[Callable, Callable, object], Callable[[], object]]] = {
    "iou_feat": lambda features, refine, feat: features,
    "refine": lambda features, refine, feat: lambda: refine(feat),
    "frame": lambda features, refine, feat: lambda: refine(features()),
}


def rounds_of_calls(
    backends: dict[str, tuple[Callable[[], object], Callable[[object], object]]],
    repeats: int,
    rounds: int,
) -> dict[str, dict[str, list[float]]]:
    """backend -> stage -> milliseconds: each backend and stage runs `rounds` times, as `repeats`
    calls in a row after a warm-up call, the order of the backends alternating between rounds
    (so that load from elsewhere on the machine falls on all of them alike)."""
    calls = {}
    for backend, (features, refine) in backends.items():
        feat = features()
        calls[backend] = {stage: make(features, refine, feat) for stage, make in STAGES.items()}
    times: dict[str, dict[str, list[float]]] = {b: {s: [] for s in STAGES} for b in backends}
    order = list(backends)
    for _ in range(rounds):
        for backend in order:
            for stage, call in calls[backend].items():
                call()
                for _ in range(repeats):
                    start = time.perf_counter()
                    call()
                    times[backend][stage].append((time.perf_counter() - start) * 1000)
        order.reverse()
    return times


def bench_size(name: str, repeats: int, rounds: int, folder: Path) -> list[tuple[str, str, dict]]:
    """(size, backend, stage -> times) of one network size."""
    model = random_net(SIZES[name])
    checkpoint = folder / f"{name}.pth.tar"
    torch.save({"net": model.state_dict()}, checkpoint)
    export_tracking_model(checkpoint, folder / name)
    generator = torch.Generator().manual_seed(1)
    crops = torch.rand((2, 1, 3, CROP, CROP), generator=generator)
    with torch.no_grad():
        reference, test = (model.feature_extractor(c) for c in crops)
        modulation = model.bb_regressor.get_modulation(reference, BOX[None])
    proposals = BOX + torch.randn((PROPOSALS, 4), generator=generator) * 5

    net = model.bb_regressor
    backends = {}
    for label, kernels in (("torch autograd", reference_kernels), ("torch-native autograd", None)):
        context = kernels or contextlib.nullcontext

        def features(context=context) -> object:
            with context(), torch.no_grad():
                return net.get_iou_feat(test)

        def refine(feat: object, context=context) -> object:
            with context():
                return autograd_refine(net, modulation, feat, proposals)

        backends[label] = (features, refine)
    for backend in ("torch-native", "ort"):
        refiner = TrackerRefiner.from_model(folder / name, backend, checkpoint=checkpoint)
        refiner.initialize(reference, BOX)
        backends[backend] = (
            lambda r=refiner: r.iou_features(test),
            lambda feat, r=refiner: r.refine(feat, proposals, iterations=ITERATIONS),
        )
    rows = [(name, b, stages) for b, stages in rounds_of_calls(backends, repeats, rounds).items()]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["atom", "dimp"])
    parser.add_argument("--repeats", type=int, default=20, help="calls in a row per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.sizes:
            rows += bench_size(name, args.repeats, args.rounds, Path(folder))
    print(
        f"per-frame IoU-Net work on the CPU ({args.threads} torch threads), {CROP}x{CROP} crop: "
        f"iou_feat = get_iou_feat, refine = {ITERATIONS} iterations x {PROPOSALS} proposals, "
        "frame = both; ms p50/p90; ratio = torch autograd p50 / p50"
    )
    print(
        f"{'size':5} {'backend':22} {'iou_feat':>15} {'refine':>15} {'frame':>15} "
        f"{'refine ratio':>12} {'frame ratio':>11}"
    )
    baseline: dict[str, dict[str, float]] = {}
    for name, backend, stages in rows:
        p50 = {stage: statistics.median(times) for stage, times in stages.items()}
        p90 = {stage: statistics.quantiles(times, n=10)[-1] for stage, times in stages.items()}
        base = baseline.setdefault(name, p50)
        cells = " ".join(
            f"{f'{p50[s]:.1f}/{p90[s]:.1f}':>15}" for s in ("iou_feat", "refine", "frame")
        )
        print(
            f"{name:5} {backend:22} {cells} {base['refine'] / p50['refine']:11.2f}x "
            f"{base['frame'] / p50['frame']:10.2f}x"
        )


if __name__ == "__main__":
    main()
