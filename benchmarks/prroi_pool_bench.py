"""Time and peak memory of PrRoIPool (PyTorch op, native CPU kernels) next to torchvision's
roi_align(sampling_ratio=2, aligned=False) on the same inputs, in one run.

Each case runs in its own process so that its peak memory is its own: on the CPU the growth of
the peak resident set over the inputs, on CUDA torch.cuda.max_memory_allocated over the inputs.
The native cases need the CPU library (`make native`) and run on the CPU only.

    python benchmarks/prroi_pool_bench.py [--boxes 100 1000] [--device cpu] [--repeats 5]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from iounet.plugins import native, prroi_pool, prroi_pool_coord_grad

# Case -> the roi_align case its time is compared with.
CASES = {
    "roi_align forward": "roi_align forward",
    "roi_align forward+backward": "roi_align forward+backward",
    "prroi_pool forward": "roi_align forward",
    "prroi_pool forward+backward": "roi_align forward+backward",
    "prroi_pool_coord_grad": "roi_align forward",
    "native forward": "roi_align forward",
    "native coord_grad": "roi_align forward",
    "native feature_grad": "roi_align forward+backward",
}
FEATURE_SHAPE = (1, 256, 100, 168)
SPATIAL_SCALE = 1 / 8
OUTPUT_SIZE = 7


def make_inputs(boxes: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1x256x100x168 map (stride 8 of 800x1344) and boxes 16-316 px wide and high."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(FEATURE_SHAPE, generator=generator)
    image_w, image_h = FEATURE_SHAPE[3] / SPATIAL_SCALE, FEATURE_SHAPE[2] / SPATIAL_SCALE
    size = 16 + torch.rand((boxes, 2), generator=generator) * 300
    corner = torch.rand((boxes, 2), generator=generator) * (torch.tensor([image_w, image_h]) - size)
    rois = torch.cat([torch.zeros((boxes, 1)), corner, corner + size], dim=1)
    return features.to(device), rois.to(device)


def case_function(case: str, features: torch.Tensor, rois: torch.Tensor) -> Callable[[], None]:
    """The work of one case, as a callable."""
    grad_output = torch.ones(
        (rois.shape[0], FEATURE_SHAPE[1], OUTPUT_SIZE, OUTPUT_SIZE), device=features.device
    )

    def roi_align(f: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return torchvision.ops.roi_align(f, r, OUTPUT_SIZE, SPATIAL_SCALE, 2, False)

    def pool(f: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return prroi_pool(f, r, OUTPUT_SIZE, SPATIAL_SCALE)

    if case == "native forward":
        return lambda: native.prroi_pool(features, rois, OUTPUT_SIZE, SPATIAL_SCALE)
    if case == "native coord_grad":
        return lambda: native.prroi_pool_coord_grad(
            features, rois, grad_output, OUTPUT_SIZE, SPATIAL_SCALE
        )
    if case == "native feature_grad":
        return lambda: native.prroi_pool_feature_grad(
            features, rois, grad_output, OUTPUT_SIZE, SPATIAL_SCALE
        )
    op = roi_align if case.startswith("roi_align") else pool
    if case.endswith("forward+backward"):

        def run() -> None:
            f = features.detach().requires_grad_()
            r = rois.detach().requires_grad_()
            (op(f, r) * grad_output).sum().backward()

        return run
    if case == "prroi_pool_coord_grad":
        return lambda: prroi_pool_coord_grad(
            features, rois, grad_output, OUTPUT_SIZE, SPATIAL_SCALE
        )
    return lambda: op(features, rois)


def _resident_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(case: str, boxes: int, device: str, repeats: int) -> dict[str, float]:
    """Peak memory of the first call (MiB over the inputs) and median time of `repeats` calls."""
    features, rois = make_inputs(boxes, device)
    run = case_function(case, features, rois)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        peak_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM)
        before = _resident_kib("VmRSS")
        run()
        peak_mib = (_resident_kib("VmHWM") - before) / 1024
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        run()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return {"median_ms": 1000 * statistics.median(times), "peak_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args.child, args.boxes[0], args.device, args.repeats)))
        return

    print(
        f"features {FEATURE_SHAPE}, spatial_scale 1/{1 / SPATIAL_SCALE:g}, "
        f"{OUTPUT_SIZE}x{OUTPUT_SIZE}, boxes 16-316 px, device {args.device}, "
        f"{args.threads} threads, torch {torch.__version__}, torchvision {torchvision.__version__}"
    )
    results: dict[str, dict[str, dict[str, float]]] = {}
    for boxes in args.boxes:
        figures = {}
        cases = [c for c in CASES if args.device == "cpu" or not c.startswith("native")]
        for case in cases:
            command = [sys.executable, __file__, "--child", case, "--boxes", str(boxes)]
            command += ["--device", args.device, "--repeats", str(args.repeats)]
            command += ["--threads", str(args.threads)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            figures[case] = json.loads(output.strip().splitlines()[-1])
        results[str(boxes)] = figures
        print(f"\nK = {boxes}")
        print(f"{'case':<30} {'median ms':>10} {'peak MiB':>9}  time vs baseline")
        for case, figure in figures.items():
            baseline = CASES[case]
            ratio = figure["median_ms"] / figures[baseline]["median_ms"]
            print(
                f"{case:<30} {figure['median_ms']:>10.1f} {figure['peak_mib']:>9.1f}"
                f"  {ratio:.2f}x {baseline}"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
