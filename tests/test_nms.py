"""NMS, IoU-guided NMS and Soft-NMS against literal float64 loops and torchvision; the op
torch.ops.iounet.iou_nms under opcheck. Every test runs on the ops' device kernels and on their
reference kernels (the conftest fixture `kernel`)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from conftest import DEVICES
from hypothesis import given, settings
from hypothesis import strategies as st
from nms_oracle import as_lists, literal_iou, literal_iou_nms

from iounet.plugins import nms_reference, reference_kernels
from iounet.runtime import iou_nms, nms, soft_nms

THRESHOLDS = [0.0, 0.3, 0.5, 0.7, 1.0]
SEEDS = range(4)


# ---- literal references: float64, one box at a time --------------------------------------------


def literal_nms(boxes, scores, labels, threshold):
    """Greedy NMS: take the highest score (lower index on ties), drop its overlaps, repeat."""
    box, score, label = as_lists(boxes, scores, labels)
    remaining = list(range(len(box)))
    keep = []
    while remaining:
        best = max(remaining, key=lambda i: (score[i], -i))
        keep.append(best)
        remaining = [
            i
            for i in remaining
            if i != best
            and not (label[i] == label[best] and literal_iou(box[best], box[i]) > threshold)
        ]
    return keep


@pytest.fixture(autouse=True)
def every_kernel(kernel):
    """Every test runs on the device kernels and on the reference kernels."""
    return kernel


def literal_soft_nms(boxes, scores, labels, sigma, threshold, method, score_threshold):
    """Soft-NMS (Bodla et al. 2017), one selection at a time."""
    box, score, label = as_lists(boxes, scores, labels)
    current = {i: s for i, s in enumerate(score) if s >= score_threshold}
    keep, new_scores = [], []
    while current:
        best = max(current, key=lambda i: (current[i], -i))
        keep.append(best)
        new_scores.append(current.pop(best))
        for i in list(current):
            if label[i] != label[best]:
                continue
            overlap = literal_iou(box[best], box[i])
            if method == "gaussian":
                current[i] *= math.exp(-overlap * overlap / sigma)
            elif overlap > threshold:
                current[i] *= 1 - overlap
            if current[i] < score_threshold:
                del current[i]
    return keep, new_scores


# ---- inputs -----------------------------------------------------------------------------------


def grid_case(seed, n, classes, dtype=torch.float64, device="cpu"):
    """Boxes on a small integer grid (duplicates, exact IoU ties, zero areas), tied scores."""
    g = torch.Generator().manual_seed(seed)
    corner = torch.randint(0, 10, (n, 2), generator=g)
    size = torch.randint(0, 7, (n, 2), generator=g)
    boxes = torch.cat([corner, corner + size], 1).to(dtype)
    scores = torch.randint(0, 5, (n,), generator=g).to(dtype) / 4
    ious = torch.randint(0, 5, (n,), generator=g).to(dtype) / 4
    labels = torch.randint(0, classes, (n,), generator=g)
    return boxes.to(device), scores.to(device), ious.to(device), labels.to(device)


def detection_case(seed, n, classes, dtype=torch.float32, device="cpu"):
    """Clusters of jittered boxes around a few objects plus scattered boxes, distinct scores."""
    g = torch.Generator().manual_seed(seed)
    objects = 6
    centre = torch.rand((objects, 2), generator=g) * 400
    extent = 20 + torch.rand((objects, 2), generator=g) * 120
    owner = torch.randint(0, objects, (n,), generator=g)
    c = centre[owner] + 0.15 * extent[owner] * torch.randn((n, 2), generator=g)
    half = 0.5 * extent[owner] * torch.exp(0.2 * torch.randn((n, 2), generator=g))
    scattered = torch.rand(n, generator=g) < 0.2
    c[scattered] = torch.rand((int(scattered.sum()), 2), generator=g) * 400
    boxes = torch.cat([c - half, c + half], 1).clamp_min(0).to(dtype)
    scores = torch.rand(n, generator=g, dtype=torch.float64).to(dtype)
    ious = torch.rand(n, generator=g, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, classes, (n,), generator=g)
    return boxes.to(device), scores.to(device), ious.to(device), labels.to(device)


# ---- IoU-guided NMS ---------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("labelled", [True, False], ids=["per-class", "agnostic"])
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_iou_nms_matches_algorithm_1_with_ties(threshold, labelled, device):
    for seed in SEEDS:
        boxes, scores, ious, labels = grid_case(seed, 60, classes=3, device=device)
        labels = labels if labelled else None
        keep, kept_scores = iou_nms(boxes, scores, ious, labels, threshold)
        expected_keep, expected_scores = literal_iou_nms(boxes, scores, ious, labels, threshold)
        assert keep.tolist() == expected_keep
        assert kept_scores.tolist() == expected_scores


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("labelled", [True, False], ids=["per-class", "agnostic"])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_iou_nms_matches_algorithm_1_on_detections(threshold, labelled, dtype, device):
    for seed in SEEDS:
        boxes, scores, ious, labels = detection_case(seed, 150, 5, dtype, device)
        labels = labels if labelled else None
        keep, kept_scores = iou_nms(boxes, scores, ious, labels, threshold)
        expected_keep, expected_scores = literal_iou_nms(boxes, scores, ious, labels, threshold)
        assert keep.dtype == torch.int64 and keep.device == boxes.device
        assert kept_scores.dtype == dtype and kept_scores.device == boxes.device
        assert keep.tolist() == expected_keep
        assert kept_scores.double().tolist() == expected_scores


@pytest.mark.parametrize("labelled", [True, False], ids=["per-class", "agnostic"])
@pytest.mark.parametrize(("group_size", "pair_chunk"), [(1, 1), (7, 50), (64, 1000), (256, 2**18)])
def test_iou_nms_same_result_in_any_grouping(group_size, pair_chunk, labelled, monkeypatch):
    # The reference's greedy passes over groups of labels, score propagation over chunks of pairs.
    monkeypatch.setattr(nms_reference, "CPU_GROUP_SIZE", group_size)
    monkeypatch.setattr(nms_reference, "PAIR_CHUNK", pair_chunk)
    boxes, scores, ious, labels = detection_case(7, 400, 12)
    labels = labels if labelled else None
    with reference_kernels():
        keep, kept_scores = iou_nms(boxes, scores, ious, labels, 0.5)
    expected_keep, expected_scores = literal_iou_nms(boxes, scores, ious, labels, 0.5)
    assert keep.tolist() == expected_keep
    assert kept_scores.double().tolist() == expected_scores


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 6),
            st.integers(0, 6),
            st.integers(0, 4),
            st.integers(0, 4),
            st.sampled_from([0.0, 0.5, 1.0]),
            st.sampled_from([0.0, 0.5, 1.0]),
            st.integers(-1, 1),
        ),
        max_size=25,
    ),
    threshold=st.sampled_from(THRESHOLDS),
)
def test_iou_nms_property(rows, threshold):
    table = torch.tensor([row[:6] for row in rows], dtype=torch.float64).reshape(-1, 6)
    boxes = torch.cat([table[:, :2], table[:, :2] + table[:, 2:4]], 1)
    labels = torch.tensor([row[6] for row in rows], dtype=torch.int64)
    keep, kept_scores = iou_nms(boxes, table[:, 4], table[:, 5], labels, threshold)
    expected_keep, expected_scores = literal_iou_nms(
        boxes, table[:, 4], table[:, 5], labels, threshold
    )
    assert keep.tolist() == expected_keep
    assert kept_scores.tolist() == expected_scores


def test_iou_nms_worked_example():
    # a is kept first and eliminates b and d (IoU 0.6 and 0.67). c overlaps d by 0.67 too, but
    # d is gone by then: a takes the max of a, b, d and c keeps its own score.
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # a
            [0.0, 0.0, 10.0, 6.0],  # b: IoU(a, b) = 0.6
            [0.0, 4.0, 10.0, 14.0],  # c: IoU(a, c) = 0.43, IoU(b, c) = 0.14
            [0.0, 2.0, 10.0, 12.0],  # d: IoU(a, d) = 0.67, IoU(c, d) = 0.67
        ]
    )
    scores = torch.tensor([0.2, 0.9, 0.1, 0.6])
    ious = torch.tensor([0.9, 0.5, 0.8, 0.7])
    keep, kept_scores = iou_nms(boxes, scores, ious, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert kept_scores.tolist() == pytest.approx([0.9, 0.1])
    # With d on a label of its own, d stays and a takes the max of a and b only.
    keep, kept_scores = iou_nms(boxes, scores, ious, torch.tensor([0, 0, 0, 1]), 0.5)
    assert keep.tolist() == [0, 2, 3]
    assert kept_scores.tolist() == pytest.approx([0.9, 0.1, 0.6])


def test_iou_nms_ties_go_to_the_lower_index():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 3 + [[10.0, 10.0, 12.0, 12.0]])
    scores = torch.tensor([0.1, 0.7, 0.3, 0.2])
    ious = torch.tensor([0.5, 0.8, 0.8, 0.8])
    keep, kept_scores = iou_nms(boxes, scores, ious)
    assert keep.tolist() == [1, 3]
    assert kept_scores.tolist() == pytest.approx([0.7, 0.2])


def _iou_nms_op_cases() -> dict[str, tuple]:
    """Arguments of torch.ops.iounet.iou_nms: dtypes, label dtypes, thresholds, sizes, ties."""
    grid = grid_case(0, 40, classes=3)
    detections = detection_case(1, 150, 5)
    one = detection_case(2, 1, 1)
    return {
        "grid_labels": (*grid, 0.5),
        "grid_one_label": (*grid[:3], None, 0.3),
        "grid_threshold_0": (*grid, 0.0),
        "grid_threshold_1": (*grid[:3], None, 1.0),
        "detections_float32": (*detections, 0.7),
        "detections_int32_labels": (*detections[:3], detections[3].int(), 0.5),
        "detections_float64_uint8_labels": (
            *(t.double() for t in detections[:3]),
            detections[3].to(torch.uint8),
            0.5,
        ),
        "one_box": (*one, 0.5),
        "no_boxes": (*(t[:0] for t in detections), 0.5),
        "no_boxes_no_labels": (*(t[:0] for t in detections[:3]), None, 0.5),
    }


IOU_NMS_OP_CASES = _iou_nms_op_cases()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", sorted(IOU_NMS_OP_CASES))
def test_iou_nms_op(case, device):
    boxes, scores, ious, labels, threshold = IOU_NMS_OP_CASES[case]
    moved = [None if t is None else t.to(device) for t in (boxes, scores, ious, labels)]
    torch.library.opcheck(torch.ops.iounet.iou_nms.default, (*moved, threshold))
    keep, kept_scores = torch.ops.iounet.iou_nms(*moved, threshold)
    expected_keep, expected_scores = literal_iou_nms(boxes, scores, ious, labels, threshold)
    assert keep.dtype == torch.int64 and kept_scores.dtype == scores.dtype
    assert keep.device == kept_scores.device == moved[0].device
    assert keep.tolist() == expected_keep
    assert kept_scores.double().tolist() == expected_scores


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda b, s, i, la: (b[:, :3], s, i, la), ValueError, "boxes"),
        (lambda b, s, i, la: (b.half(), s.half(), i.half(), la), TypeError, "boxes"),
        (lambda b, s, i, la: (b, s[:1], i, la), ValueError, "scores"),
        (lambda b, s, i, la: (b, s, i.float(), la), TypeError, "ious"),
        (lambda b, s, i, la: (b, s, i, la.float()), TypeError, "labels"),
        (lambda b, s, i, la: (b, s, i, la.to("meta")), ValueError, "labels"),
    ],
)
def test_iou_nms_op_refuses_arguments_that_break_its_contract(change, error, match):
    boxes, scores, ious, labels = change(*grid_case(0, 5, classes=2))
    with pytest.raises(error, match=match):
        torch.ops.iounet.iou_nms(boxes, scores, ious, labels, 0.5)


def test_iou_nms_op_refuses_a_nan_threshold():
    with pytest.raises(ValueError, match="iou_threshold"):
        torch.ops.iounet.iou_nms(*grid_case(0, 5, classes=2), math.nan)


# ---- NMS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("labelled", [True, False], ids=["per-class", "agnostic"])
@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("n", [150, 1500])  # torchvision's coordinate trick and per-label loop
def test_nms_equals_torchvision(n, threshold, labelled, dtype, device):
    for seed in SEEDS:
        boxes, scores, _, labels = detection_case(seed, n, 20, dtype, device)
        if labelled:
            expected = torchvision.ops.batched_nms(boxes, scores, labels, threshold)
            assert torch.equal(nms(boxes, scores, labels, threshold), expected)
        else:
            expected = torchvision.ops.nms(boxes, scores, threshold)
            assert torch.equal(nms(boxes, scores, iou_threshold=threshold), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("labelled", [True, False], ids=["per-class", "agnostic"])
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_nms_matches_literal_loop(threshold, labelled, device):
    for seed in SEEDS:
        boxes, scores, _, labels = detection_case(seed, 150, 5, torch.float64, device)
        labels = labels if labelled else None
        expected = literal_nms(boxes, scores, labels, threshold)
        assert nms(boxes, scores, labels, threshold).tolist() == expected


def test_nms_negative_coordinates_keep_labels_apart():
    # torchvision's coordinate trick moves label 1 by max + 1 = 1: it would meet label 0.
    boxes = torch.tensor([[-50.0, -50.0, -10.0, -10.0], [-49.0, -49.0, -9.0, -9.0]])
    scores = torch.tensor([0.9, 0.8])
    labels = torch.tensor([0, 1])
    assert nms(boxes, scores, labels).tolist() == [0, 1]
    assert nms(boxes, scores).tolist() == [0]
    assert literal_nms(boxes, scores, labels, 0.5) == [0, 1]


# ---- Soft-NMS -----------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("labelled", [True, False], ids=["per-class", "agnostic"])
@pytest.mark.parametrize(
    ("method", "sigma", "threshold"),
    [("gaussian", 0.5, 0.3), ("gaussian", 0.1, 0.3), ("linear", 0.5, 0.3), ("linear", 0.5, 0.6)],
)
@pytest.mark.parametrize("score_threshold", [0.001, 0.2])
def test_soft_nms_matches_literal_loop(score_threshold, method, sigma, threshold, labelled, device):
    for seed in SEEDS:
        boxes, scores, _, labels = detection_case(seed, 120, 4, torch.float64, device)
        labels = labels if labelled else None
        keep, new_scores = soft_nms(
            boxes, scores, labels, sigma, threshold, method, score_threshold
        )
        expected_keep, expected_scores = literal_soft_nms(
            boxes, scores, labels, sigma, threshold, method, score_threshold
        )
        assert keep.tolist() == expected_keep
        assert new_scores.tolist() == pytest.approx(expected_scores, rel=1e-12, abs=0)


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_ties_and_float32(method):
    for seed in SEEDS:
        boxes, scores, _, labels = grid_case(seed, 40, 2, torch.float32)
        keep, new_scores = soft_nms(boxes, scores, labels, 0.5, 0.3, method, 0.1)
        expected_keep, expected_scores = literal_soft_nms(
            boxes, scores, labels, 0.5, 0.3, method, 0.1
        )
        assert keep.tolist() == expected_keep
        assert new_scores.dtype == torch.float32
        assert new_scores.tolist() == pytest.approx(expected_scores, rel=1e-6)


def test_soft_nms_worked_example():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [20.0, 0.0, 30.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.3], dtype=torch.float64)
    boxes = boxes.double()
    keep, new_scores = soft_nms(boxes, scores, sigma=0.5)  # IoU(0, 1) = 0.5
    assert keep.tolist() == [0, 1, 2]
    assert new_scores.tolist() == pytest.approx([0.9, 0.8 * math.exp(-0.25 / 0.5), 0.3])
    keep, new_scores = soft_nms(boxes, scores, method="linear", iou_threshold=0.3)
    assert keep.tolist() == [0, 1, 2]
    assert new_scores.tolist() == pytest.approx([0.9, 0.4, 0.3])
    keep, new_scores = soft_nms(boxes, scores, method="linear", iou_threshold=0.5)
    assert new_scores.tolist() == pytest.approx([0.9, 0.8, 0.3])  # 0.5 is not above 0.5
    keep, new_scores = soft_nms(boxes, scores, method="linear", score_threshold=0.35)
    assert keep.tolist() == [0, 1]  # box 2 starts below the score threshold
    assert new_scores.tolist() == pytest.approx([0.9, 0.4])


# ---- every function -----------------------------------------------------------------------------


def _run(name, boxes, scores, labels=None, **kwargs):
    if name == "nms":
        return nms(boxes, scores, labels, **kwargs), None
    if name == "iou_nms":
        return iou_nms(boxes, scores, kwargs.pop("ious", scores), labels, **kwargs)
    return soft_nms(boxes, scores, labels, **kwargs)


FUNCTIONS = ["nms", "iou_nms", "soft_nms"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("labelled", [True, False], ids=["per-class", "agnostic"])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_empty_input(name, labelled, dtype, device):
    boxes = torch.zeros((0, 4), dtype=dtype, device=device)
    scores = torch.zeros(0, dtype=dtype, device=device)
    labels = torch.zeros(0, dtype=torch.int64, device=device) if labelled else None
    keep, new_scores = _run(name, boxes, scores, labels)
    assert keep.shape == (0,) and keep.dtype == torch.int64 and keep.device == boxes.device
    if new_scores is not None:
        assert new_scores.shape == (0,) and new_scores.dtype == dtype
        assert new_scores.device == boxes.device


@pytest.mark.parametrize("name", FUNCTIONS)
def test_zero_area_boxes_overlap_nothing(name):
    boxes = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [2.0, 2.0, 2.0, 8.0], [2.0, 2.0, 2.0, 8.0], [5.0, 5.0, 5.0, 5.0]]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    keep, new_scores = _run(name, boxes, scores, iou_threshold=0.0)
    assert keep.tolist() == [0, 1, 2, 3]
    if new_scores is not None:
        assert new_scores.tolist() == pytest.approx(scores.tolist())


@pytest.mark.parametrize("name", FUNCTIONS)
def test_labels_keep_identical_boxes_apart(name):
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([3, -1, 3, 70], dtype=torch.int32)
    keep, _ = _run(name, boxes, scores, labels)
    assert keep.tolist()[:3] == [0, 1, 3]
    assert sorted(keep.tolist()) == ([0, 1, 2, 3] if name == "soft_nms" else [0, 1, 3])


@pytest.mark.parametrize("name", FUNCTIONS)
def test_huge_finite_values_are_valid(name):
    # The sum of these float32 values overflows: the values are still finite.
    boxes = torch.tensor([[0.0, 0.0, 3e38, 3e38], [1e38, 1e38, 3e38, 3e38]])
    keep, _ = _run(name, boxes, torch.tensor([3e38, 3e38]))
    assert keep.numel() >= 1


def _valid():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
    return boxes, torch.tensor([0.5, 0.6]), torch.tensor([0, 1])


BAD_ARGUMENTS = [
    ("boxes", lambda b, s, la: ([[0.0, 0.0, 1.0, 1.0]], s, la), TypeError),
    ("boxes", lambda b, s, la: (b[0], s, la), ValueError),
    ("boxes", lambda b, s, la: (torch.zeros(2, 5), s, la), ValueError),
    ("boxes", lambda b, s, la: (b.long(), s, la), TypeError),
    ("boxes", lambda b, s, la: (b.half(), s.half(), la), TypeError),
    ("boxes", lambda b, s, la: (b.index_fill(0, torch.tensor([1]), math.nan), s, la), ValueError),
    ("boxes", lambda b, s, la: (b.index_fill(0, torch.tensor([0]), math.inf), s, la), ValueError),
    ("boxes", lambda b, s, la: (b.flip(1), s, la), ValueError),
    ("scores", lambda b, s, la: (b, s[:1], la), ValueError),
    ("scores", lambda b, s, la: (b, s[:, None], la), ValueError),
    ("scores", lambda b, s, la: (b, s.double(), la), TypeError),
    ("scores", lambda b, s, la: (b, torch.tensor([0.5, math.nan]), la), ValueError),
    ("scores", lambda b, s, la: (b, [0.5, 0.6], la), TypeError),
    ("labels", lambda b, s, la: (b, s, la.float()), TypeError),
    ("labels", lambda b, s, la: (b, s, la[:1]), ValueError),
    ("labels", lambda b, s, la: (b, s, [0, 1]), TypeError),
]


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize(("argument", "change", "error"), BAD_ARGUMENTS)
def test_bad_arguments_raise_naming_them(name, argument, change, error):
    boxes, scores, labels = change(*_valid())
    with pytest.raises(error, match=argument):
        _run(name, boxes, scores, labels)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("threshold", [-0.1, 1.5, math.nan, math.inf, "0.5", True])
def test_bad_iou_threshold(name, threshold):
    boxes, scores, labels = _valid()
    with pytest.raises((TypeError, ValueError), match="iou_threshold"):
        _run(name, boxes, scores, labels, iou_threshold=threshold)


@pytest.mark.parametrize(
    ("ious", "error"),
    [
        (torch.tensor([0.5]), ValueError),
        (torch.tensor([0.5, math.inf]), ValueError),
        (None, TypeError),
    ],
)
def test_bad_ious(ious, error):
    boxes, scores, labels = _valid()
    with pytest.raises(error, match="ious"):
        iou_nms(boxes, scores, ious, labels)


@pytest.mark.parametrize(
    ("argument", "value", "error"),
    [
        ("sigma", 0.0, ValueError),
        ("sigma", -1.0, ValueError),
        ("sigma", math.nan, ValueError),
        ("sigma", None, TypeError),
        ("method", "hard", ValueError),
        ("score_threshold", math.nan, ValueError),
        ("score_threshold", "0", TypeError),
    ],
)
def test_bad_soft_nms_arguments(argument, value, error):
    boxes, scores, labels = _valid()
    with pytest.raises(error, match=argument):
        soft_nms(boxes, scores, labels, **{argument: value})
