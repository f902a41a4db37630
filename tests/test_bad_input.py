"""No input size or file state crashes the runtime, exhausts memory or destroys a user's file.

What could abort the process runs in a subprocess; memory-heavy cases are scaled down (a small
memory budget, a small op limit) so that they show the mechanism without the memory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_model import write_tiny_checkpoint

from iounet.cli import main
from iounet.export.manifest import ManifestError, load_manifest, sha256_file
from iounet.files import write_json
from iounet.plugins import native
from iounet.runtime.bench import synthetic_inputs
from iounet.runtime.budget import boxes_per_call
from iounet.runtime.detections import read_detections
from iounet.runtime.pipeline import Pipeline, PipelineConfig
from iounet.training.checkpoint import (
    CHECKSUM_KEY,
    CheckpointWarning,
    load_checkpoint,
    load_model,
)
from iounet.training.images import load_image, resize_image

TESTS = Path(__file__).parent


def _python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (tests/ on the path); its exit status and output."""
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=TESTS,
    )


@pytest.fixture(scope="module")
def ort_pipeline(exported_model):
    return Pipeline.from_model(exported_model[1])


# --- inputs that would abort the process inside an ONNX Runtime op --------------------------------


def test_impossible_op_outputs_are_refused_without_allocating_or_aborting():
    result = _python(
        """
        import numpy as np, torch
        from ort_graphs import one_node_model
        from prroi_cases import make_features
        from iounet.plugins import native, onnxruntime_session
        import iounet.plugins.onnxruntime as ops

        features = make_features(torch.float32, "cpu").numpy()
        rois = np.array([[0, 1, 1, 4, 4]], np.float32)
        huge = onnxruntime_session(one_node_model("PrRoIPool", (2**20, 2**20), 0.5))
        print("pooled 2**20:", huge.run(None, {"features": features, "rois": rois})[0].shape)

        def no_memory(*args, **kwargs):
            raise MemoryError("simulated")

        native.prroi_pool = no_memory  # the kernel's output cannot be allocated ...
        np.full = no_memory  # ... nor the NaN fallback of the same size
        pool = onnxruntime_session(one_node_model("PrRoIPool", (2, 3), 0.5))
        print("no memory:", pool.run(None, {"features": features, "rois": rois})[0].shape)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "pooled 2**20: (0,)" in result.stdout and "no memory: (0,)" in result.stdout
    assert "over the limit" in result.stderr and "simulated" in result.stderr


def test_too_many_rois_for_one_session_call_fail_cleanly(exported_model):
    """K rois whose pooled output exceeds the ops' limit (scaled down: the limit is set small)
    give a Python error, fed to the session directly or through the backend; the pipeline
    splits the same boxes by its memory budget and finishes."""
    result = _python(
        f"""
        import torch
        import iounet.plugins.onnxruntime as ops
        from iounet.runtime.bench import synthetic_inputs
        from iounet.runtime.pipeline import Pipeline, PipelineConfig
        from iounet.export.manifest import load_manifest

        manifest = load_manifest({str(exported_model[1])!r})
        pipeline = Pipeline.from_model(manifest.folder)
        backend = pipeline.backend
        box = manifest.fpn_channels * manifest.pool_size**2 * 4
        ops.MAX_OUTPUT_BYTES = 40 * box  # one PrRoIPool node may pool 40 boxes
        inputs = synthetic_inputs(64, 64, 100, 5)
        maps = backend.features(inputs.image[None])
        rois = torch.cat([torch.zeros(100, 1), inputs.boxes], dim=1)
        feeds = {{name: maps[name] for name in manifest.map_names}}
        feeds.update(rois=rois.numpy(), labels=inputs.labels.numpy())
        try:
            backend.sessions["head"].run(None, feeds)
        except Exception as error:
            print("session:", type(error).__name__)
        for call in (backend.iou, backend.iou_and_grad):
            try:
                call(maps, rois, inputs.labels)
            except ValueError as error:
                print("backend:", error)
        budget = PipelineConfig(refine=manifest.refinement, memory_budget=30 * pipeline.box_bytes)
        small = Pipeline.for_manifest(manifest, backend, budget)
        found = small(inputs.image, inputs.boxes, inputs.scores, inputs.labels)
        print("pipeline:", small.boxes_per_call, "boxes per call,", len(found.boxes), "kept")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "session: " in result.stdout
    assert result.stdout.count("backend: 100 boxes in one call") == 2
    assert "pipeline: 30 boxes per call," in result.stdout


# --- bounded work per call ------------------------------------------------------------------------


class _Recorder:
    """Wraps a backend and records the box count of each IoU and refinement call."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []
        self.device, self.name = backend.device, backend.name

    def features(self, image):
        self.calls.append(("features", tuple(image.shape)))
        return self.backend.features(image)

    def iou(self, features, rois, labels):
        self.calls.append(("iou", len(rois)))
        return self.backend.iou(features, rois, labels)

    def refine(self, features, boxes, labels, *args, **kwargs):
        self.calls.append(("refine", len(boxes)))
        return self.backend.refine(features, boxes, labels, *args, **kwargs)

    def synchronize(self):
        pass


def test_chunked_and_unchunked_pipelines_give_the_same_detections(exported_model, ort_pipeline):
    manifest = load_manifest(exported_model[1])
    inputs = synthetic_inputs(96, 128, 300, 5, seed=7)
    whole = Pipeline.for_manifest(
        manifest, ort_pipeline.backend, PipelineConfig(refine=manifest.refinement, refine_top=40)
    )
    recorder = _Recorder(ort_pipeline.backend)
    small = PipelineConfig(
        refine=manifest.refinement, refine_top=40, memory_budget=7 * whole.box_bytes
    )
    chunked = Pipeline.for_manifest(manifest, recorder, small)
    assert (whole.boxes_per_call, chunked.boxes_per_call) == (whole.boxes_per_call, 7)
    assert whole.boxes_per_call >= 300  # the default budget takes these boxes in one call
    expected = whole(inputs.image, inputs.boxes, inputs.scores, inputs.labels)
    got = chunked(inputs.image, inputs.boxes, inputs.scores, inputs.labels)
    for name in ("boxes", "scores", "labels", "ious"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name
    sizes = {kind: [n for k, n in recorder.calls if k == kind] for kind in ("iou", "refine")}
    top = min(40, len(expected.boxes))
    assert top > 7  # the refinement is split too
    assert sizes["iou"] == [7] * 42 + [6]
    assert sizes["refine"] == [min(7, top - start) for start in range(0, top, 7)]
    print(f"\n300 boxes: {len(sizes['iou'])} IoU calls and {len(sizes['refine'])} refinements")


def test_memory_budget_sets_boxes_per_call(ort_pipeline):
    assert boxes_per_call(1000, 300) == 3 and boxes_per_call(10, 300) == 1
    engine_like = _Recorder(ort_pipeline.backend)
    engine_like.max_boxes = 64  # a TensorRT engine built for at most 64 boxes
    assert Pipeline(engine_like, 5).boxes_per_call == 64
    with pytest.raises(ValueError, match="memory_budget"):
        boxes_per_call(0, 300)


# --- one preprocessing path -----------------------------------------------------------------------


def test_api_resizes_as_the_command_line_and_answers_in_the_given_pixels(
    exported_model, ort_pipeline
):
    manifest = load_manifest(exported_model[1])
    recorder = _Recorder(ort_pipeline.backend)
    pipeline = Pipeline.for_manifest(manifest, recorder)
    inputs = synthetic_inputs(600, 800, 200, 5, seed=8)
    found = pipeline(inputs.image, inputs.boxes, inputs.scores, inputs.labels)
    assert recorder.calls[0] == ("features", (1, 3, 160, 192))  # 144x192, padded to 32
    resized, scale = resize_image(inputs.image, manifest.input.min_size, manifest.input.max_size)
    assert tuple(resized.shape) == (3, 144, 192) and scale == pytest.approx(0.24)
    raw = (inputs.boxes * scale, inputs.scores, inputs.labels)
    same = ort_pipeline.run_scaled(resized, 1.0, None, *raw)
    torch.testing.assert_close(found.boxes, same.boxes / scale)
    assert float(found.boxes[:, 2].max()) <= 800 and float(found.boxes[:, 3].max()) <= 600


def test_float_resize_agrees_with_the_datasets_8_bit_resize(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    resized, scale = resize_image(image, 60, 100)
    region = (0.0, 0.0, 120.0, 90.0)
    eight_bit = Image.fromarray(pixels).resize((80, 60), Image.Resampling.BILINEAR, box=region)
    expected = torch.from_numpy(np.array(eight_bit)).permute(2, 0, 1).float() / 255
    assert scale == pytest.approx(2 / 3) and resized.shape == expected.shape
    assert float((resized - expected).abs().max()) <= 1 / 255 + 1e-6


def test_16_bit_images_are_read_without_clipping(tmp_path):
    from iounet.training.coco_dataset import CocoDetection

    values = np.full((40, 50), 1000, dtype=np.uint16)
    values[10:20, 10:20] = 60000
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = load_image(tmp_path / "deep.png")
    assert image.shape == (3, 40, 50)
    assert float(image[0, 0, 0]) == pytest.approx(1000 / 65535)  # 8-bit conversion: 1.0
    assert float(image.max()) == pytest.approx(60000 / 65535)
    coco = {
        "images": [{"id": 1, "file_name": "deep.png", "width": 50, "height": 40}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400,
             "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }  # fmt: skip
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    item, _ = CocoDetection(tmp_path, tmp_path / "coco.json", min_size=40, max_size=50)[0]
    torch.testing.assert_close(item, image)
    resized, _ = CocoDetection(tmp_path, tmp_path / "coco.json", min_size=20, max_size=25)[0]
    assert resized.shape == (3, 20, 25) and float(resized.min()) == pytest.approx(1000 / 65535)


@pytest.mark.parametrize(
    ("image", "labels", "error", "message"),
    [
        (torch.rand(3, 64, 64) * 255, [0], ValueError, r"\[0, 1\]"),
        (torch.full((3, 64, 64), float("nan")), [0], ValueError, "NaN"),
        (torch.rand(3, 64, 64), [2.5], TypeError, "integer tensor"),
    ],
)
def test_out_of_range_images_nan_pixels_and_float_labels_are_named(
    ort_pipeline, image, labels, error, message
):
    boxes = torch.tensor([[4.0, 4, 30, 30]])
    with pytest.raises(error, match=message):
        ort_pipeline(image, boxes, torch.ones(1), torch.tensor(labels))


# --- outputs: one overwrite rule ------------------------------------------------------------------


def _infer_args(folder: Path, tmp_path: Path, out: Path) -> list[str]:
    detections = tmp_path / "raw.json"
    detections.write_text("[]")
    return [
        "infer", "--model", str(folder), "--images", str(tmp_path), "--annotations",
        str(tmp_path / "absent.json"), "--detections", str(detections), "--out", str(out),
    ]  # fmt: skip


def test_force_never_replaces_what_iounet_did_not_write(exported_model, tmp_path, capsys):
    folder = exported_model[1]
    user_file = tmp_path / "notes.json"
    user_file.write_text('{"mine": 1}')
    link = tmp_path / "link.json"
    link.symlink_to(user_file)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for out, message in (
        (user_file, "not a COCO results file written by iounet"),
        (link, "not a regular file"),
        (fifo, "not a regular file"),
        (tmp_path, "not a regular file"),
    ):
        assert main([*_infer_args(folder, tmp_path, out), "--force"]) == 2
        assert message in capsys.readouterr().err
    assert user_file.read_text() == '{"mine": 1}' and link.is_symlink() and fifo.is_fifo()
    checkpoint = exported_model[0]
    assert main(["export", str(checkpoint), "--out", str(tmp_path), "--force"]) == 2
    assert "not a model folder written by iounet" in capsys.readouterr().err
    assert user_file.exists()


def test_outputs_are_checked_before_the_slow_work(exported_model, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    absent_model = tmp_path / "no-model"
    args = _infer_args(absent_model, tmp_path, blocker / "out.json")
    assert main(args) == 2
    assert "is not a folder" in capsys.readouterr().err  # not "model folder not found"
    existing = tmp_path / "bench.json"
    existing.write_text("{}")
    bench = ["bench", "--model", str(absent_model), "--backends", "ort", "--json", str(existing)]
    assert main(bench) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*bench, "--force"]) == 2
    assert "not a bench table written by iounet" in capsys.readouterr().err
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "notes.txt").write_text("mine")
    evaluate = [
        "eval", "--images", str(tmp_path), "--annotations", str(tmp_path / "a.json"),
        "--checkpoint", str(exported_model[0]), "--plots", str(plots), "--force",
    ]  # fmt: skip
    assert main(evaluate) == 2
    assert "not a plots folder written by iounet" in capsys.readouterr().err
    detections = tmp_path / "nested.json"
    detections.write_text("[" * 100_000 + "]" * 100_000)
    start = time.perf_counter()
    assert main([*evaluate[:-3], "--detections", str(detections)]) == 2
    assert "nests its JSON too deeply" in capsys.readouterr().err
    print(f"\nbad detections refused after {time.perf_counter() - start:.2f} s")


def test_json_outputs_are_strict_json(tmp_path):
    write_json(tmp_path / "report.json", {"pearson": float("nan"), "ap": [1.5, float("inf")]})

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    text = (tmp_path / "report.json").read_text()
    assert json.loads(text, parse_constant=refuse) == {"pearson": None, "ap": [1.5, None]}


# --- checkpoint integrity -------------------------------------------------------------------------


def test_corrupted_checkpoint_is_refused_and_old_ones_load_with_a_warning(tmp_path, capsys):
    path = write_tiny_checkpoint(tmp_path / "last.pt")
    state = load_checkpoint(path)
    assert len(state[CHECKSUM_KEY]) == 64
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name].view(-1)[0] += 1.0  # a changed tensor under the stored checksum
    torch.save(state, tmp_path / "corrupt.pt")
    with pytest.raises(ValueError, match="corrupt"):
        load_model(tmp_path / "corrupt.pt")
    assert main(["export", str(tmp_path / "corrupt.pt"), "--out", str(tmp_path / "m")]) == 2
    assert "corrupt" in capsys.readouterr().err and not (tmp_path / "m").exists()
    del state[CHECKSUM_KEY]
    torch.save(state, tmp_path / "old.pt")
    with pytest.warns(CheckpointWarning, match="no tensor checksum"):
        load_model(tmp_path / "old.pt")


def test_the_checksum_covers_the_tensor_bytes_in_the_file(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "last.pt")
    data = bytearray(path.read_bytes())
    state = load_checkpoint(path)
    tensor = max(state["model"].values(), key=lambda t: t.numel())
    raw = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    at = bytes(data).find(raw[:64])
    assert at > 0
    data[at + 10] ^= 0xFF  # flip one byte inside the tensor's stored bytes
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(tmp_path / "flipped.pt")


# --- messages: version, help, missing packages, broken model folders ------------------------------


def test_version_and_help_load_no_torch():
    result = _python(
        """
        import sys, time
        start = time.perf_counter()
        from iounet.cli import build_parser
        parser = build_parser()
        for command in ("infer", "bench", "eval", "export", "build-engine", "train", "detect"):
            try:
                parser.parse_args([command, "--help"])
            except SystemExit:
                pass
        print("torch loaded:", "torch" in sys.modules)
        print(f"parser and every --help: {time.perf_counter() - start:.3f} s", file=sys.stderr)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "torch loaded: False" in result.stdout
    print("\n" + result.stderr.strip().splitlines()[-1])


def test_trt_without_tensorrt_and_fp16_on_ort_are_one_line(exported_model, tmp_path, capsys):
    folder = exported_model[1]
    args = _infer_args(folder, tmp_path, tmp_path / "out.json")
    assert main([*args, "--precision", "fp16"]) == 2
    assert "--precision fp16 is for the trt backend only" in capsys.readouterr().err
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert main([*args, "--backend", "trt"]) == 2
        error = capsys.readouterr().err
        assert error.startswith("iounet infer: ") and "Traceback" not in error


def _copy_model(folder: Path, tmp_path: Path) -> tuple[Path, dict]:
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    return copy, json.loads((copy / "manifest.json").read_text())


def test_manifest_problems_are_named(exported_model, tmp_path):
    copy, data = _copy_model(exported_model[1], tmp_path)
    del data["input"]["min_size"]
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="min_size"):
        load_manifest(copy)
    copy2, data = _copy_model(exported_model[1], tmp_path / "2")
    graphs = data["graphs"]["fp32"]
    graphs["head"], graphs["iou_grad"] = graphs["iou_grad"], graphs["head"]  # consistently
    (copy2 / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="graphs swapped"):
        load_manifest(copy2)


def test_swapped_graph_files_are_named(exported_model, tmp_path):
    from iounet.runtime.ort_backend import OnnxRuntimeBackend

    copy, data = _copy_model(exported_model[1], tmp_path)
    head, grad = copy / "head.onnx", copy / "iou_grad.onnx"
    head.rename(tmp_path / "h")
    grad.rename(head)
    (tmp_path / "h").rename(grad)
    for role in ("head", "iou_grad"):
        data["graphs"]["fp32"][role]["sha256"] = sha256_file(copy / f"{role}.onnx")
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="graphs swapped"):
        OnnxRuntimeBackend(copy)


def test_deeply_nested_detections_are_a_value_error(tmp_path):
    path = tmp_path / "nested.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nests its JSON too deeply"):
        read_detections(path)


def test_native_pool_refuses_tensors_that_need_a_gradient_and_empty_maps():
    features = torch.rand(1, 3, 8, 8, requires_grad=True)
    rois = torch.tensor([[0.0, 1, 1, 5, 5]])
    with pytest.raises(ValueError, match="no autograd"):
        native.prroi_pool(features, rois, 2)
    with torch.no_grad():
        assert native.prroi_pool(features, rois, 2).shape == (1, 3, 2, 2)
    from iounet.plugins import prroi_pool

    with pytest.raises(ValueError, match="at least one image, channel"):
        prroi_pool(torch.rand(1, 0, 8, 8), rois, 2)
