"""The paper's claims about one detector's post-processing, checked on measured figures.

IoU-NMS raises AP and AP90 over the detector's NMS (Table 1); refinement raises both again
(Table 2); the predicted IoU correlates with the true IoU of the detector's boxes (Pearson at
least 0.6; the paper's Fig. 2 reports 0.617) and better than the classification score does.
Each claim carries the figures it was judged on; a missed one says what the figures show about
why (``cause``), so that no miss is hidden.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from iounet.runtime.evaluation import DetectionReport

#: The Pearson correlation the claim asks of the predicted IoU on the detector's boxes.
PEARSON_TARGET = 0.6
MET, MISSED = "\N{CHECK MARK}", "\N{BALLOT X}"


@dataclass(frozen=True)
class Claim:
    """One claim, whether the figures meet it, the figures, and (when missed) their reading."""

    claim: str
    met: bool
    figures: dict[str, float]
    cause: str = ""

    def as_json(self) -> dict:
        return asdict(self)


def paper_claims(report: DetectionReport) -> list[Claim]:
    """The three claims on `report` (one detector's raw detections post-processed four ways)."""
    ap = report.ap
    return [
        _gain_claim(
            "IoU-NMS raises AP and AP90 over NMS", ap["nms"], ap["iou_nms"], "nms", "iou_nms",
            _nms_cause(report),
        ),
        _gain_claim(
            "refinement raises AP and AP90 over IoU-NMS", ap["iou_nms"], ap["iou_nms_refine"],
            "iou_nms", "iou_nms_refine", _refine_cause(report),
        ),
        _pearson_claim(report),
    ]  # fmt: skip


def format_claims(claims: list[Claim]) -> str:
    """One line per claim, marked met or missed, with its figures (and the cause of a miss)."""
    lines = []
    for claim in claims:
        figures = ", ".join(f"{name} {_figure(name, v)}" for name, v in claim.figures.items())
        lines.append(f"  {MET if claim.met else MISSED} {claim.claim}: {figures}")
        if not claim.met:
            lines.append(f"      missed: {claim.cause}")
    return "\n".join(lines)


def _gain_claim(
    text: str,
    before: dict[str, float],
    after: dict[str, float],
    before_name: str,
    after_name: str,
    cause: str,
) -> Claim:
    figures = {
        f"{before_name} AP": 100 * before["AP"],
        f"{after_name} AP": 100 * after["AP"],
        f"{before_name} AP90": 100 * before["AP90"],
        f"{after_name} AP90": 100 * after["AP90"],
    }
    met = after["AP"] > before["AP"] and after["AP90"] > before["AP90"]
    return Claim(text, met, figures, "" if met else cause)


def _nms_cause(report: DetectionReport) -> str:
    nms, iou_nms = report.ap["nms"], report.ap["iou_nms"]
    low = 100 * (iou_nms["AP50"] - nms["AP50"])
    high = 100 * (iou_nms["AP90"] - nms["AP90"])
    recall = 100 * (report.recall["iou_nms"]["0.90"] - report.recall["nms"]["0.90"])
    return (
        f"IoU-NMS changes AP50 by {low:+.1f} and AP90 by {high:+.1f} and recall at IoU 0.9 by "
        f"{recall:+.1f} points: the box it keeps per cluster (the best predicted IoU, "
        f"Pearson {report.pearson['predicted_iou']:.3f}) is not better localized often "
        "enough to outweigh the scores it reorders"
    )


def _refine_cause(report: DetectionReport) -> str:
    curve = [100 * entry["AP"] for entry in report.refine_iterations]
    best = max(range(len(curve)), key=curve.__getitem__) if curve else 0
    steps = ", ".join(f"{value:.1f}" for value in curve)
    reading = (
        "the first step already lowers AP: the predicted IoU's gradient does not point towards "
        "the objects"
        if best == 0
        else f"AP peaks after {best} iteration(s): the step size or iteration count does not "
        "fit this predictor"
    )
    return (
        f"AP per refinement iteration {steps}; {reading} (Pearson on the detector's boxes "
        f"{report.pearson['predicted_iou']:.3f})"
    )


def _pearson_claim(report: DetectionReport) -> Claim:
    predicted = report.pearson["predicted_iou"]
    classification = report.pearson["classification"]
    figures = {
        "Pearson predicted IoU": predicted,
        "Pearson classification": classification,
        "boxes": float(report.pearson["boxes"]),
    }
    text = f"predicted IoU: Pearson >= {PEARSON_TARGET} and above the classification score's"
    met = (
        math.isfinite(predicted)
        and predicted >= PEARSON_TARGET
        and (not math.isfinite(classification) or predicted > classification)
    )
    cause = ""
    if not met:
        cause = (
            f"the IoU branch ranks the detector's boxes with Pearson {predicted:.3f} "
            f"(classification {classification:.3f}) on {report.pearson['boxes']} boxes: it has "
            "not learned enough at this training budget, or these boxes differ from the "
            "jittered ground truth it was trained on"
        )
    return Claim(text, met, figures, cause)


def _figure(name: str, value: float) -> str:
    """AP figures (percent) with one decimal, counts whole, correlations with three."""
    if "AP" in name:
        return f"{value:.1f}"
    return f"{int(value)}" if float(value).is_integer() else f"{value:.3f}"
