"""What `make demo` reuses from an earlier run."""

from __future__ import annotations

import shutil

from tiny_model import write_tiny_checkpoint

from iounet.demo import _exported_from, _trained
from iounet.training.config import RECIPES


def test_a_finished_training_is_reused_and_an_unfinished_one_is_not(tmp_path):
    steps = RECIPES["cpu-demo"].optim.steps
    assert not _trained(tmp_path / "none", "cpu-demo")
    write_tiny_checkpoint(tmp_path / "part" / "last.pt", step=steps - 1)
    assert not _trained(tmp_path / "part", "cpu-demo")
    write_tiny_checkpoint(tmp_path / "done" / "last.pt", step=steps)
    assert _trained(tmp_path / "done", "cpu-demo")


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
    """`make demo` after its trainings (tiny stand-ins): export, infer, evaluation, benchmark."""
    import json

    from iounet.demo import main
    from iounet.training.synthetic import generate_synthetic_dataset

    work, out = tmp_path / "work", tmp_path / "out"
    data = work / "synthetic"
    generate_synthetic_dataset(data, train=1, val=2, size=64, seed=3)
    for name, recipe in (("detector", "detector-cpu-demo"), ("iounet", "cpu-demo")):
        write_tiny_checkpoint(work / name / "last.pt", step=RECIPES[recipe].optim.steps)
    annotations = json.loads((data / "val" / "annotations.json").read_text())
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
         "bbox": [v + 1.0 for v in a["bbox"][:2]] + a["bbox"][2:]}
        for a in annotations["annotations"]
    ]  # fmt: skip
    (work / "val_detections.json").write_text(json.dumps(detections))
    assert main(["--work", str(work), "--out", str(out), "--runs", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["latency_ms"]) == {"torch", "torch-native", "ort"}
    assert report["pipeline"]["AP"] == report["iou_nms_refine"]["AP"]
    printed = capsys.readouterr().out
    assert "COCO AP (%)" in printed and "refinement ort vs torch (p50)" in printed
