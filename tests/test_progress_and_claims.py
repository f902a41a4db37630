"""Progress lines in a log, gradient clipping, the claims of make demo and make reproduce's
table over seeds."""

from __future__ import annotations

import io
import math

import pytest
import torch

from iounet.progress import Progress, format_seconds
from iounet.reproduce import summarize
from iounet.runtime.claims import MET, MISSED, format_claims, paper_claims
from iounet.runtime.evaluation import DetectionReport


def test_a_log_gets_a_line_per_tenth_and_a_last_one():
    stream = io.StringIO()
    with Progress(20, "train x", stream=stream, every=1e9) as bar:
        for step in range(20):
            bar.update(loss=f"{step:.1f}")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10  # every 2 of 20 steps
    assert lines[0].startswith("train x: 2/20 steps (10%), loss 1.0")
    assert lines[-1].startswith("train x: 20/20 steps (100%), loss 19.0")
    assert all("steps/s" in line for line in lines)


def test_a_slow_log_gets_a_line_every_interval_and_nothing_when_disabled():
    stream = io.StringIO()
    bar = Progress(1000, "cache", unit="image", stream=stream, every=0.0)
    bar.update(3)
    assert stream.getvalue().count("\n") == 1 and "3/1000 images" in stream.getvalue()
    assert "ETA" in stream.getvalue()
    quiet = io.StringIO()
    with Progress(10, "x", stream=quiet, enabled=False) as off:
        off.update(10)
    assert quiet.getvalue() == ""


def test_seconds_read_as_a_person_writes_them():
    assert [format_seconds(s) for s in (0, 42.4, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]


def test_clipping_bounds_the_gradient_of_a_step():
    from dataclasses import replace

    from iounet.training.config import OptimConfig

    with pytest.raises(ValueError, match="clip_grad_norm"):
        OptimConfig(clip_grad_norm=-1)
    weight = torch.nn.Parameter(torch.zeros(3))
    (1e6 * weight.sum()).backward()
    norm = torch.nn.utils.clip_grad_norm_(
        [weight], replace(OptimConfig(), clip_grad_norm=10).clip_grad_norm
    )
    assert float(norm) > 1e6 and math.isclose(float(weight.grad.norm()), 10.0, rel_tol=1e-5)


def _report(nms, iou_nms, refine, predicted, classification, curve=(0.2, 0.21)):
    def ap(value, ap90):
        return {"AP": value, "AP50": value + 0.2, "AP60": value, "AP70": value, "AP80": value,
                "AP90": ap90}  # fmt: skip

    return DetectionReport(
        ap={
            "nms": ap(*nms),
            "soft_nms": ap(*nms),
            "iou_nms": ap(*iou_nms),
            "iou_nms_refine": ap(*refine),
        },
        recall={name: {"0.90": 0.1} for name in ("no_nms", "nms", "iou_nms")},
        refine_iterations=[{"iteration": i, "AP": v} for i, v in enumerate(curve)],
        pearson={"predicted_iou": predicted, "classification": classification, "boxes": 50},
    )


def test_claims_are_met_only_when_both_figures_rise():
    met = paper_claims(_report((0.10, 0.01), (0.12, 0.02), (0.13, 0.03), 0.65, 0.3))
    assert [c.met for c in met] == [True, True, True]
    assert MISSED not in format_claims(met) and format_claims(met).count(MET) == 3
    missed = paper_claims(_report((0.10, 0.02), (0.12, 0.02), (0.11, 0.03), 0.55, 0.6, (0.2, 0.1)))
    assert [c.met for c in missed] == [False, False, False]
    assert all(c.cause for c in missed)
    assert "first step already lowers AP" in missed[1].cause
    assert "0.550" in missed[2].cause
    assert format_claims(missed).count("missed:") == 3
    nan = paper_claims(_report((0.1, 0.0), (0.1, 0.0), (0.1, 0.0), math.nan, 0.2))
    assert not nan[2].met


def test_the_table_over_seeds_gives_mean_and_sample_deviation_of_rows_and_paired_gains():
    def seed(offset):
        rows = {key: {k: 0.1 + offset for k in ("AP", "AP50", "AP70", "AP90")} for key in (
            "fpn", "joint_nms", "joint_iou_nms", "joint_iou_nms_refine", "branch_iou_nms",
            "branch_iou_nms_refine")}  # fmt: skip
        rows["joint_iou_nms"] = {
            k: v + 0.01 * (1 + offset * 10) for k, v in rows["joint_nms"].items()
        }
        return {"rows": rows, "pearson": {"branch": 0.5 + offset}}

    summary = summarize({0: seed(0.0), 1: seed(0.1), 2: seed(0.2)})
    fpn = summary["rows"]["fpn"]["AP"]
    assert math.isclose(fpn["mean"], 0.2) and math.isclose(fpn["sd"], 0.1)
    gain = summary["gains"]["joint: IoU-NMS - NMS (paired)"]["AP"]
    assert math.isclose(gain["mean"], 0.02) and math.isclose(gain["sd"], 0.01)
    assert math.isclose(summary["pearson"]["branch"]["mean"], 0.6)
