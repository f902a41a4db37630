"""The synthetic shapes benchmark: files, determinism, exact boxes, variety, safe writing."""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from iounet.training import synthetic
from iounet.training.coco_dataset import CocoDetection
from iounet.training.synthetic import CLASS_NAMES, generate_synthetic_dataset

SIZE = 96
SEED = 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic") / "shapes"
    return out, generate_synthetic_dataset(out, train=6, val=3, size=SIZE, seed=SEED)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _load(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _scenes(count: int, size: int, seed: int = 11) -> list[synthetic.Scene]:
    return [
        synthetic.sample_scene(synthetic.scene_rng(seed, "train", i), size) for i in range(count)
    ]


def test_writes_coco_splits_that_pycocotools_loads(dataset):
    out, summary = dataset
    assert summary["classes"] == list(CLASS_NAMES)
    for split, count in (("train", 6), ("val", 3)):
        coco = _load(out / split / "annotations.json")
        assert sorted(coco.getImgIds()) == list(range(1, count + 1))
        assert [coco.cats[i]["name"] for i in sorted(coco.getCatIds())] == list(CLASS_NAMES)
        assert summary[split]["images"] == count
        assert summary[split]["objects"] == len(coco.getAnnIds())
        assert summary[split]["empty_images"] == sum(not coco.imgToAnns[i] for i in coco.imgs)
        for info in coco.imgs.values():
            with Image.open(out / split / "images" / info["file_name"]) as image:
                assert (image.format, image.mode, image.size) == ("PNG", "RGB", (SIZE, SIZE))
            assert (info["width"], info["height"]) == (SIZE, SIZE)
    assert sorted(p.name for p in out.parent.iterdir()) == ["shapes"]


def test_annotations_are_valid_boxes(dataset):
    out, _ = dataset
    for split in ("train", "val"):
        annotations = json.loads((out / split / "annotations.json").read_text())["annotations"]
        assert annotations
        for ann in annotations:
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= SIZE + 1e-3 and y + h <= SIZE + 1e-3
            assert w > 0 and h > 0
            assert ann["area"] == pytest.approx(w * h, rel=1e-3)
            assert ann["iscrowd"] == 0
            assert 1 <= ann["category_id"] <= len(CLASS_NAMES)
            assert ann["visible_fraction"] >= synthetic.MIN_VISIBLE_FRACTION - 1e-3


def test_same_seed_gives_identical_bytes_and_other_seeds_differ(dataset, tmp_path):
    out, _ = dataset
    generate_synthetic_dataset(tmp_path / "again", train=6, val=3, size=SIZE, seed=SEED)
    generate_synthetic_dataset(tmp_path / "other", train=6, val=3, size=SIZE, seed=SEED + 1)
    expected = _files(out)
    assert _files(tmp_path / "again") == expected
    other = _files(tmp_path / "other")
    assert other.keys() == expected.keys()
    assert all(other[name] != expected[name] for name in expected if name.endswith(".png"))


def test_files_are_the_rendered_scenes(dataset):
    out, _ = dataset
    for split, count in (("train", 6), ("val", 3)):
        coco = _load(out / split / "annotations.json")
        for index in range(count):
            scene = synthetic.sample_scene(synthetic.scene_rng(SEED, split, index), SIZE)
            info = coco.imgs[index + 1]
            with Image.open(out / split / "images" / info["file_name"]) as image:
                np.testing.assert_array_equal(np.asarray(image), synthetic.render(scene))
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[index + 1]))
            assert [a["category_id"] - 1 for a in anns] == [o.shape.label for o in scene.objects]
            for ann, obj in zip(anns, scene.objects, strict=True):
                x0, y0, x1, y1 = obj.shape.box()
                np.testing.assert_allclose(ann["bbox"], [x0, y0, x1 - x0, y1 - y0], atol=2e-4)


def test_boxes_are_tight_to_the_drawn_outlines():
    """Each box (from the geometry) is within 1.5 px of the pixels the outline covers."""
    checked = 0
    for scene in _scenes(30, 128):
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.shape.box()
            wy, wx = obj.window[0], obj.window[2]
            rows, cols = np.nonzero(obj.coverage > 0)
            extent = (cols.min() + wx, rows.min() + wy, cols.max() + 1 + wx, rows.max() + 1 + wy)
            np.testing.assert_allclose(extent, (x0, y0, x1, y1), atol=1.5)
            rows, cols = np.nonzero(obj.alpha >= 0.5)  # the drawn, edge-blurred opacity
            assert cols.min() + wx >= x0 - 1 and cols.max() + 1 + wx <= x1 + 1
            assert rows.min() + wy >= y0 - 1 and rows.max() + 1 + wy <= y1 + 1
            checked += 1
    assert checked > 50


def test_single_object_changes_the_image_only_around_its_box():
    singles = [scene for scene in _scenes(80, 96) if len(scene.objects) == 1]
    assert len(singles) >= 3
    reach = math.ceil(3 * synthetic.MAX_EDGE_SIGMA) + 1  # how far a blurred edge spreads
    for scene in singles:
        (obj,) = scene.objects
        image = synthetic.render(scene).astype(int)
        background = synthetic.render(replace(scene, objects=())).astype(int)
        changed = np.any(image != background, axis=-1)
        rows, cols = np.nonzero(changed)
        x0, y0, x1, y1 = obj.shape.box()
        assert cols.min() >= x0 - reach and cols.max() + 1 <= x1 + reach
        assert rows.min() >= y0 - reach and rows.max() + 1 <= y1 + reach
        wy0, wy1, wx0, wx1 = obj.window
        inside = np.zeros_like(changed)
        inside[wy0:wy1, wx0:wx1] = obj.coverage == 1.0
        assert changed[inside].mean() > 0.9


def test_classes_scales_aspects_occlusion_and_empty_images_vary():
    size = 64
    scenes = _scenes(200, size)
    objects = [o for scene in scenes for o in scene.objects]
    assert {o.shape.label for o in objects} == set(range(len(CLASS_NAMES)))
    boxes = np.array([o.shape.box() for o in objects])
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    scales, aspects = np.sqrt(widths * heights), widths / heights
    assert scales.min() >= synthetic.MIN_OBJECT_SIZE - 1e-6
    assert scales.min() < 10 and scales.max() > 0.5 * size
    assert aspects.min() < 0.5 and aspects.max() > 2.0
    max_aspect = synthetic.MAX_ASPECT
    assert 1 / max_aspect - 1e-6 <= aspects.min() and aspects.max() <= max_aspect + 1e-6
    visible = np.array([o.visible_fraction for o in objects])
    assert visible.min() >= synthetic.MIN_VISIBLE_FRACTION and (visible < 0.9).any()
    counts = [len(scene.objects) for scene in scenes]
    assert min(counts) == 0 and max(counts) == synthetic.MAX_OBJECTS
    assert sum(c == 0 for c in counts) < 0.15 * len(scenes)


def test_the_dataset_class_reads_a_generated_split(dataset):
    out, summary = dataset
    data = CocoDetection(out / "val" / "images", out / "val" / "annotations.json", 96, 96)
    assert data.class_names == list(CLASS_NAMES)
    assert sum(len(data[i][1]["boxes"]) for i in range(len(data))) == summary["val"]["objects"]


def test_refuses_to_overwrite_unless_forced_and_replaces_only_its_own_data(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="force"):
        generate_synthetic_dataset(out, train=1, val=1, size=32)
    with pytest.raises(FileExistsError, match="not a synthetic data set written by iounet"):
        generate_synthetic_dataset(out, train=1, val=1, size=32, force=True)
    assert _files(out) == {"keep.txt": b"mine"}
    ours = tmp_path / "ours"
    generate_synthetic_dataset(ours, train=1, val=1, size=32)
    generate_synthetic_dataset(ours, train=2, val=1, size=32, force=True)
    assert len(list((ours / "train" / "images").iterdir())) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "ours"]
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match="not a folder"):
        generate_synthetic_dataset(tmp_path / "file", train=1, val=1, size=32, force=True)


def test_empty_existing_directory_is_used(tmp_path):
    (tmp_path / "data").mkdir()
    summary = generate_synthetic_dataset(tmp_path / "data", train=2, val=0, size=32)
    assert (summary["train"]["images"], summary["val"]["images"]) == (2, 0)
    assert len(list((tmp_path / "data" / "train" / "images").iterdir())) == 2


@pytest.mark.parametrize("existing", [False, True])
def test_failure_midway_leaves_no_partial_output(tmp_path, monkeypatch, existing):
    out = tmp_path / "data"
    if existing:
        generate_synthetic_dataset(out, train=1, val=0, size=32)
        before = _files(out)
    written = []

    def failing_write(path, image):
        if len(written) == 3:
            raise RuntimeError("disk full")
        written.append(path)
        Image.fromarray(image).save(path, format="PNG")

    monkeypatch.setattr(synthetic, "_write_png", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_synthetic_dataset(out, train=4, val=2, size=32, force=True)
    assert len(written) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == (["data"] if existing else [])
    if existing:
        assert _files(out) == before


@pytest.mark.parametrize(
    ("arguments", "error", "name"),
    [
        ({"train": -1}, ValueError, "train"),
        ({"val": -2}, ValueError, "val"),
        ({"size": 31}, ValueError, "size"),
        ({"size": -5}, ValueError, "size"),
        ({"seed": -1}, ValueError, "seed"),
        ({"train": 1.5}, TypeError, "train"),
        ({"val": True}, TypeError, "val"),
        ({"size": "64"}, TypeError, "size"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(tmp_path, arguments, error, name):
    kwargs = {"train": 1, "val": 1, "size": 32, "seed": 0, **arguments}
    with pytest.raises(error, match=name):
        generate_synthetic_dataset(tmp_path / "data", **kwargs)
    assert list(tmp_path.iterdir()) == []
