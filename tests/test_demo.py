"""What `make demo` reuses from an earlier run."""

from __future__ import annotations

import shutil

from tiny_model import write_tiny_checkpoint, write_tiny_joint_checkpoint

from iounet.demo import _exported_from, _trained
from iounet.training.config import RECIPES


def test_a_finished_training_is_reused_and_an_unfinished_one_is_not(tmp_path):
    steps = RECIPES["fpn-cpu-demo"].optim.steps
    assert not _trained(tmp_path / "none", "fpn-cpu-demo")
    write_tiny_joint_checkpoint(
        tmp_path / "part" / "last.pt", step=steps - 1, recipe="fpn-cpu-demo"
    )
    assert not _trained(tmp_path / "part", "fpn-cpu-demo")
    write_tiny_joint_checkpoint(tmp_path / "done" / "last.pt", step=steps, recipe="fpn-cpu-demo")
    assert _trained(tmp_path / "done", "fpn-cpu-demo")
    assert not _trained(tmp_path / "done", "fpn-cpu-demo", seed=1)  # another seed's run
    assert not _trained(tmp_path / "done", "joint-cpu-demo")  # another recipe's run


def test_an_export_is_reused_only_for_its_own_checkpoint(exported_model, tmp_path):
    checkpoint, folder = exported_model
    assert _exported_from(folder, checkpoint)
    other = write_tiny_checkpoint(tmp_path / "other.pt", seed=5)
    assert not _exported_from(folder, other)
    assert not _exported_from(tmp_path / "missing", checkpoint)
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "head.onnx").write_bytes(b"changed")
    assert not _exported_from(broken, checkpoint)


def test_the_demo_runs_from_trained_models_to_the_report(tmp_path, capsys):
    """`make demo` after its trainings (tiny stand-ins): export of the IoU-Net with its detector,
    infer on the images alone, the one-detector table with its claims, parity, Table 4."""
    import json

    from iounet.demo import main
    from iounet.training.synthetic import generate_synthetic_dataset

    work, out = tmp_path / "work", tmp_path / "out"
    data = work / "synthetic"
    generate_synthetic_dataset(data, train=1, val=2, size=64, seed=3)
    runs = work / "seed-2"
    steps = RECIPES["fpn-cpu-demo"].optim.steps
    config = {"recipe": "fpn-cpu-demo", "iou_branch": False}
    write_tiny_joint_checkpoint(runs / "fpn" / "last.pt", seed=1, step=steps, **config)
    steps = RECIPES["iou-branch-cpu-demo"].optim.steps
    write_tiny_joint_checkpoint(
        runs / "iou-branch" / "last.pt", step=steps, recipe="iou-branch-cpu-demo"
    )
    _set_seed(runs / "fpn" / "last.pt", 2)
    _set_seed(runs / "iou-branch" / "last.pt", 2)
    assert main(["--work", str(work), "--out", str(out), "--runs", "2", "--seed", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["latency_ms"]) == {"torch", "torch-native", "ort"}
    assert report["pipeline"]["AP"] == report["iou_nms_refine"]["AP"]
    assert report["seed"] == 2 and report["minutes"] > 0
    claims = report["claims"]
    predicted, classification = (report["pearson"][k] for k in ("predicted_iou", "classification"))
    assert [c["met"] for c in claims] == [
        report["iou_nms"]["AP"] > report["nms"]["AP"]
        and report["iou_nms"]["AP90"] > report["nms"]["AP90"],
        report["iou_nms_refine"]["AP"] > report["iou_nms"]["AP"]
        and report["iou_nms_refine"]["AP90"] > report["iou_nms"]["AP90"],
        predicted is not None
        and predicted >= 0.6
        and (classification is None or predicted > classification),
    ]
    assert all(c["cause"] for c in claims if not c["met"])
    parity = report["detector_parity"]
    assert parity["counts_equal"] and parity["labels_equal"] and parity["detections"] > 0
    assert parity["boxes_max_abs"] < 1e-2 and parity["scores_max_abs"] < 1e-4
    for size in ("192x192", "800x1216"):
        table = report["table4_ms"][size]
        assert set(table) == {"ort FPN", "ort IoU-Net", "torch-native FPN", "torch-native IoU-Net"}
        assert "iou_head" in table["ort IoU-Net"] and "iou_head" not in table["ort FPN"]
        assert table["ort FPN"]["rpn"]["p50_ms"] > 0
    found = json.loads((out / "detections.json").read_text())
    assert found and all(isinstance(entry["image_id"], int) for entry in found)
    printed = capsys.readouterr().out
    for line in ("claims on this detector", "recall at IoU 0.9", "Table 4", "IoU-Net vs ort FPN"):
        assert line in printed


def _set_seed(checkpoint, seed: int) -> None:
    """Mark a tiny checkpoint as a run of `seed` (what the demo checks before reusing it)."""
    from iounet.training.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(checkpoint)
    save_checkpoint(checkpoint, {**state, "config": {**state["config"], "seed": seed}})


def test_parity_matches_rows_whose_scores_tie_whatever_their_order():
    import torch

    from iounet.demo import _match_rows

    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 40]])
    scores = torch.tensor([0.9, 0.5, 0.5 - 1e-7])
    labels = torch.tensor([1, 0, 3])
    swapped = [1, 0, 2], [0, 2, 1]
    reference = (boxes, scores, labels)
    exported = (boxes[swapped[1]] + 1e-5, scores[swapped[1]], labels[swapped[1]])
    box, score, found, reordered = _match_rows(exported, reference)
    assert found and reordered == 2 and box < 2e-5 and score <= 1e-7
    other = (boxes[swapped[1]], scores[swapped[1]], torch.tensor([1, 0, 0]))  # a label changed
    assert not _match_rows(other, reference)[2]
    apart = (boxes, torch.tensor([0.9, 0.5, 0.4]), labels)  # a score beyond a tie
    assert not _match_rows(apart, reference)[2]


def test_reproduce_tabulates_every_seed_of_trained_models(tmp_path, capsys):
    """`make reproduce` after its trainings (tiny stand-ins for two seeds): per-seed rows, mean
    and sd, paired gains; the IoU branch is evaluated on the FPN baseline's own detections."""
    import json

    from iounet.reproduce import main
    from iounet.training.synthetic import generate_synthetic_dataset

    work, out = tmp_path / "work", tmp_path / "out"
    generate_synthetic_dataset(work / "synthetic", train=1, val=2, size=64, seed=3)
    for seed in (0, 1):
        runs = work / f"seed-{seed}"
        for folder, recipe, branch in (
            ("fpn", "fpn-cpu-demo", False),
            ("joint", "joint-cpu-demo", True),
            ("iou-branch", "iou-branch-cpu-demo", True),
        ):
            path = runs / folder / "last.pt"
            steps = RECIPES[recipe].optim.steps
            write_tiny_joint_checkpoint(
                path, seed=seed, step=steps, iou_branch=branch, recipe=recipe
            )
            _set_seed(path, seed)
    assert main(["--work", str(work), "--out", str(out), "--seeds", "0", "1"]) == 0
    report = json.loads((out / "reproduce.json").read_text())
    assert set(report["seeds"]) == {"0", "1"}
    rows = report["seeds"]["0"]["rows"]
    assert set(rows) == {"fpn", "joint_nms", "joint_iou_nms", "joint_iou_nms_refine",
                         "branch_iou_nms", "branch_iou_nms_refine"}  # fmt: skip
    fpn_ap = [report["seeds"][s]["rows"]["fpn"]["AP"] for s in ("0", "1")]
    summary = report["summary"]["rows"]["fpn"]["AP"]
    assert abs(summary["mean"] - sum(fpn_ap) / 2) < 1e-12
    assert "Table 3 over seeds" in capsys.readouterr().out
