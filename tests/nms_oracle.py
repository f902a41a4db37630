"""Literal float64 references: IoU and IoU-Net's Algorithm 1 (IoU-guided NMS), box by box."""

from __future__ import annotations


def literal_iou(a: list[float], b: list[float]) -> float:
    """IoU of boxes a and b; 0 when the union is empty (two boxes of zero area)."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def as_lists(boxes, scores, labels):
    """Boxes, scores and labels as float64 lists (labels all 0 when None)."""
    box_list = boxes.double().tolist()
    label_list = labels.tolist() if labels is not None else [0] * len(box_list)
    return box_list, scores.double().tolist(), label_list


def literal_iou_nms(boxes, scores, ious, labels, threshold):
    """IoU-Net Algorithm 1, as written: rank by predicted IoU, keep, eliminate, take the max."""
    box, score, label = as_lists(boxes, scores, labels)
    predicted = ious.double().tolist()
    remaining = list(range(len(box)))
    keep, kept_scores = [], []
    while remaining:
        best = max(remaining, key=lambda i: (predicted[i], -i))
        remaining.remove(best)
        best_score = score[best]
        survivors = []
        for i in remaining:
            if label[i] == label[best] and literal_iou(box[best], box[i]) > threshold:
                best_score = max(best_score, score[i])
            else:
                survivors.append(i)
        remaining = survivors
        keep.append(best)
        kept_scores.append(best_score)
    return keep, kept_scores
