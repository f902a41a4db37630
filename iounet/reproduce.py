"""`make reproduce`: Table 3 of the paper over seeds, at the CPU demo's budget.

For each seed: trains the FPN baseline (fpn-cpu-demo), the jointly trained IoU-Net
(joint-cpu-demo, the paper's joint schedule at the demo's budget) and the IoU branch on the
FPN baseline's frozen detector (iou-branch-cpu-demo, ``make demo``'s model); evaluates each in
PyTorch on the validation images; and writes every row of Table 3 per seed with its mean and
standard deviation over seeds, and the paired gains (IoU-NMS over NMS, refinement over IoU-NMS,
each on one detector). Runs in the work folder are reused (``make demo`` with the same work
folder and seed shares its two). Not part of ``make demo`` or CI: about 25 minutes a seed on two
cores.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from iounet.demo import DETECTOR_RECIPE, IOU_BRANCH_RECIPE, prepare_data, train_run

JOINT_RECIPE = "joint-cpu-demo"
#: Table 3's rows (title, key) and the figures of each.
ROWS = (
    ("FPN (its own NMS)", "fpn"),
    ("IoU-Net, joint: NMS", "joint_nms"),
    ("  + IoU-NMS", "joint_iou_nms"),
    ("  + IoU-NMS + refinement", "joint_iou_nms_refine"),
    ("FPN + IoU branch (frozen): IoU-NMS", "branch_iou_nms"),
    ("  + refinement", "branch_iou_nms_refine"),
)
#: Gains (title, minuend, subtrahend); the first four are paired (one detector).
GAINS = (
    ("joint: IoU-NMS - NMS (paired)", "joint_iou_nms", "joint_nms"),
    ("joint: refinement - IoU-NMS (paired)", "joint_iou_nms_refine", "joint_iou_nms"),
    ("FPN: IoU-NMS - NMS (paired)", "branch_iou_nms", "fpn"),
    ("FPN: refinement - IoU-NMS (paired)", "branch_iou_nms_refine", "branch_iou_nms"),
    ("joint NMS - FPN (unpaired)", "joint_nms", "fpn"),
    ("joint full - FPN (unpaired)", "joint_iou_nms_refine", "fpn"),
)
KEYS = ("AP", "AP50", "AP70", "AP90")


def main(argv: Sequence[str] | None = None) -> int:
    """Train, evaluate and tabulate; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m iounet.reproduce", description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("demo-work"), help="data and models")
    parser.add_argument("--out", type=Path, default=Path("reproduce-output"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < 2:
        parser.error("give at least two different seeds (a standard deviation needs them)")
    started = time.perf_counter()
    data = prepare_data(args.work, started)
    per_seed: dict[int, dict] = {}
    minutes: dict[int, float] = {}
    for seed in args.seeds:
        begun = time.perf_counter()
        runs = args.work / f"seed-{seed}"
        train_run(data, runs / "fpn", DETECTOR_RECIPE, seed, started, "the FPN baseline")
        train_run(data, runs / "joint", JOINT_RECIPE, seed, started, "the joint IoU-Net")
        frozen = ("--from", runs / "fpn" / "last.pt")
        train_run(
            data, runs / "iou-branch", IOU_BRANCH_RECIPE, seed, started, "its IoU branch", *frozen
        )
        print(f"[seed {seed}] evaluate the three models in PyTorch", flush=True)
        per_seed[seed] = evaluate_seed(runs, data)
        minutes[seed] = (time.perf_counter() - begun) / 60
        print(format_table({seed: per_seed[seed]}), flush=True)
    table = summarize(per_seed)
    report = {"seeds": per_seed, "summary": table, "minutes_per_seed": minutes}
    from iounet.files import write_json

    write_json(args.out / "reproduce.json", report, indent=2)
    print("\nTable 3 over seeds (COCO AP %, mean +- standard deviation):")
    print(format_table(per_seed))
    print(f"\nreport: {args.out / 'reproduce.json'}")
    print(f"reproduction finished in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


def evaluate_seed(runs: Path, data: Path) -> dict:
    """Table 3's rows and the Pearson figures of one seed's three models, in PyTorch."""
    from iounet.demo import torch_detector
    from iounet.runtime.evaluation import detect_dataset, evaluate_detections_table, nms_ap
    from iounet.training.checkpoint import load_model
    from iounet.training.coco_dataset import dataset_for_checkpoint
    from iounet.training.images import SIZE_DIVISOR

    val = data / "val"
    rows: dict[str, dict[str, float]] = {}
    pearson: dict[str, float] = {}
    fpn, state = load_model(runs / "fpn" / "last.pt")
    dataset = dataset_for_checkpoint(
        val / "images", val / "annotations.json", state, runs / "fpn" / "last.pt"
    )
    raw = detect_dataset(torch_detector(fpn, SIZE_DIVISOR), dataset)
    rows["fpn"] = nms_ap(dataset, raw, fpn.detector.nms_threshold)
    branch, _ = load_model(runs / "iou-branch" / "last.pt")
    report = evaluate_detections_table(branch, dataset, raw)  # the frozen detector's boxes
    rows["branch_iou_nms"], rows["branch_iou_nms_refine"] = (
        report.ap["iou_nms"],
        report.ap["iou_nms_refine"],
    )
    pearson["branch"] = report.pearson["predicted_iou"]
    pearson["branch_classification"] = report.pearson["classification"]
    joint, _ = load_model(runs / "joint" / "last.pt")
    report = evaluate_detections_table(
        joint, dataset, detect_dataset(torch_detector(joint, SIZE_DIVISOR), dataset)
    )
    rows["joint_nms"] = report.ap["nms"]
    rows["joint_iou_nms"] = report.ap["iou_nms"]
    rows["joint_iou_nms_refine"] = report.ap["iou_nms_refine"]
    pearson["joint"] = report.pearson["predicted_iou"]
    pearson["joint_classification"] = report.pearson["classification"]
    return {"rows": rows, "pearson": pearson}


def summarize(per_seed: dict[int, dict]) -> dict:
    """Mean and standard deviation over seeds of every row's and every gain's figures."""
    values = [entry["rows"] for entry in per_seed.values()]
    summary: dict[str, dict] = {"rows": {}, "gains": {}, "pearson": {}}
    for _, key in ROWS:
        summary["rows"][key] = {k: _stats([v[key][k] for v in values]) for k in KEYS}
    for title, plus, minus in GAINS:
        summary["gains"][title] = {
            k: _stats([v[plus][k] - v[minus][k] for v in values]) for k in KEYS
        }
    for name in next(iter(per_seed.values()))["pearson"]:
        summary["pearson"][name] = _stats([e["pearson"][name] for e in per_seed.values()])
    return summary


def format_table(per_seed: dict[int, dict]) -> str:
    """Per-seed AP and AP90, and mean +- sd of AP, AP50, AP70, AP90, for rows and gains."""
    seeds = list(per_seed)
    summary = summarize(per_seed) if len(seeds) > 1 else None
    head = f"{'':<38}" + "".join(f"{'seed ' + str(s):>14}" for s in seeds)
    if summary is not None:
        head += "".join(f"{key + ' mean+-sd':>16}" for key in KEYS)
    lines = [head, f"{'':<38}" + "".join(f"{'AP / AP90':>14}" for _ in seeds)]

    def line(title: str, figures: list[tuple[float, float]], stats: dict | None) -> str:
        text = f"{title:<38}" + "".join(f"{100 * a:7.1f}/{100 * b:<6.1f}" for a, b in figures)
        if stats is not None:
            text += "".join(
                f"{100 * stats[k]['mean']:9.1f}+-{100 * stats[k]['sd']:<5.1f}" for k in KEYS
            )
        return text

    for title, key in ROWS:
        figures = [
            (per_seed[s]["rows"][key]["AP"], per_seed[s]["rows"][key]["AP90"]) for s in seeds
        ]
        lines.append(line(title, figures, summary["rows"][key] if summary else None))
    lines.append("gains (points)")
    for title, plus, minus in GAINS:
        figures = [_difference(per_seed[s]["rows"], plus, minus) for s in seeds]
        lines.append(line("  " + title, figures, summary["gains"][title] if summary else None))
    lines.append("Pearson of the predicted IoU (detector boxes, IoU > 0.5)")
    for name in next(iter(per_seed.values()))["pearson"]:
        values = [per_seed[s]["pearson"][name] for s in seeds]
        text = f"  {name:<36}" + "".join(f"{v:14.3f}" for v in values)
        if summary is not None:
            stats = summary["pearson"][name]
            text += f"{stats['mean']:12.3f}+-{stats['sd']:.3f}"
        lines.append(text)
    return "\n".join(lines)


def _difference(rows: dict, plus: str, minus: str) -> tuple[float, float]:
    return (rows[plus]["AP"] - rows[minus]["AP"], rows[plus]["AP90"] - rows[minus]["AP90"])


def _stats(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (NaN in, NaN out: a seed whose Pearson is undefined)."""
    mean = math.fsum(values) / len(values)
    spread = (
        math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    )
    return {"mean": mean, "sd": math.sqrt(spread)}


if __name__ == "__main__":
    sys.exit(main())
