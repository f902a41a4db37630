"""`iounet infer` on a plain folder of images (the model's own detector), on the images of a
COCO file, and on bad input: skipped files, image modes, undecodable files, empty or missing
folders, existing outputs, a model without a detector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iounet.cli import main
from iounet.export.manifest import load_manifest
from iounet.files import Output
from iounet.runtime.image_folder import SHOWN_NAMES, list_images
from iounet.runtime.inference import write_results
from iounet.runtime.pipeline import Pipeline
from iounet.training.images import is_wide, load_image, open_image
from iounet.training.synthetic import generate_synthetic_dataset

pytest.importorskip("onnxruntime_extensions")


@pytest.fixture(scope="module")
def joint_pipeline(exported_joint_model) -> Pipeline:
    """The pipeline a user opens on the joint model, to compare `iounet infer` with."""
    return Pipeline.from_model(exported_joint_model[1])


def _noise(seed: int, height: int, width: int, channels: int = 3) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Images of mixed sizes and modes beside files that are not images."""
    folder = tmp_path_factory.mktemp("images")
    color = _noise(1, 96, 128)
    Image.fromarray(color).save(folder / "color.png")
    alpha = np.concatenate([color, _noise(2, 96, 128, 1)[..., None]], axis=2)
    Image.fromarray(alpha, "RGBA").save(folder / "alpha.png")  # color.png's colours, with alpha
    Image.fromarray(_noise(3, 150, 60, 1), "L").save(folder / "gray.PNG")  # tall; upper case
    Image.fromarray(_noise(4, 64, 200)).quantize(16).save(folder / "palette.gif")
    deep = np.random.default_rng(5).integers(0, 65536, (120, 90), dtype=np.uint16)
    Image.fromarray(deep).save(folder / "deep.png")  # 16-bit grayscale
    Image.fromarray(_noise(6, 300, 400)).save(folder / "large.jpg", quality=90)
    (folder / "notes.txt").write_text("not an image")
    (folder / "data.csv").write_text("1,2\n")
    (folder / ".hidden.png").write_bytes(b"hidden: never read")
    (folder / "sub").mkdir()
    (folder / "sub" / "inner.png").write_bytes(b"in a subfolder: never read")
    return folder


IMAGES = ["alpha.png", "color.png", "deep.png", "gray.PNG", "large.jpg", "palette.gif"]
SKIPPED = [".hidden.png", "data.csv", "notes.txt", "sub/"]


def _by_image(results: list[dict]) -> dict:
    grouped: dict = {}
    for result in results:
        grouped.setdefault(result["image_id"], []).append(result)
    return grouped


def _expected(
    pipeline: Pipeline, ids: list[int], image: torch.Tensor, *raw: torch.Tensor
) -> list[dict]:
    """What `iounet infer` should write for one image: the pipeline called directly (category
    ids `ids` of its manifest)."""
    found = pipeline(image, *raw)
    return [
        {"category_id": ids[label], "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s, "iou": iou}
        for (x0, y0, x1, y1), s, label, iou in zip(
            found.boxes.tolist(),
            found.scores.tolist(),
            found.labels.tolist(),
            found.ious.tolist(),
            strict=True,
        )
    ]


def _ids(exported: tuple[Path, Path]) -> list[int]:
    return load_manifest(exported[1]).category_ids


def _file_pixels(path: Path) -> torch.Tensor:
    """An image file's pixels as the API takes them: uint8 for 8-bit files (resized in 8 bits,
    as `iounet infer` does), float for 16-bit ones."""
    image = open_image(path)
    if is_wide(image):
        return load_image(path)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def _assert_same(written: list[dict], expected: list[dict]) -> None:
    assert len(written) == len(expected) > 0
    for got, want in zip(written, expected, strict=True):
        assert got["category_id"] == want["category_id"]
        assert got["bbox"] == pytest.approx(want["bbox"], abs=1e-4)
        assert got["score"] == pytest.approx(want["score"], abs=1e-6)
        assert got["iou"] == pytest.approx(want["iou"], abs=1e-5)


def test_a_folder_gives_the_pipeline_results_with_file_names_as_ids(
    exported_joint_model, joint_pipeline, image_folder, tmp_path, capsys
):
    out = tmp_path / "final.json"
    args = ["infer", "--model", str(exported_joint_model[1]), "--images", str(image_folder)]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"skipped 4 entries in {image_folder}: {', '.join(SKIPPED)}" in printed
    results = json.loads(out.read_text())
    assert f"6 images (the model's detector) -> {len(results)} after IoU-NMS" in printed
    grouped = _by_image(results)
    assert sorted(grouped) == IMAGES  # every image detected something; ids are file names
    for name in IMAGES:
        image = _file_pixels(image_folder / name)
        expected = _expected(joint_pipeline, _ids(exported_joint_model), image)
        _assert_same(grouped[name], expected)
        height, width = image.shape[1:]
        for result in grouped[name]:  # original pixels, not the model's 192 px input
            x, y, w, h = result["bbox"]
            assert 0 <= x <= x + w <= width + 1e-3 and 0 <= y <= y + h <= height + 1e-3
    large = np.array([r["bbox"][0] + r["bbox"][2] for r in grouped["large.jpg"]])
    assert large.max() > 192  # large.jpg (400 px wide) was resized down and scaled back


def test_image_modes_are_read_as_rgb_and_alpha_is_dropped(
    exported_joint_model, image_folder, tmp_path
):
    color = load_image(image_folder / "color.png")
    torch.testing.assert_close(load_image(image_folder / "alpha.png"), color, rtol=0, atol=0)
    gray = np.asarray(Image.open(image_folder / "gray.PNG"), dtype=np.float32) / 255
    torch.testing.assert_close(
        load_image(image_folder / "gray.PNG"), torch.tensor(gray).expand(3, -1, -1)
    )
    with Image.open(image_folder / "palette.gif") as palette:
        rgb = np.asarray(palette.convert("RGB"), dtype=np.float32) / 255
    torch.testing.assert_close(
        load_image(image_folder / "palette.gif"), torch.tensor(rgb).permute(2, 0, 1)
    )
    deep = np.asarray(Image.open(image_folder / "deep.png"), dtype=np.float64) / 65535
    loaded = load_image(image_folder / "deep.png")
    assert loaded.shape == (3, 120, 90) and len(torch.unique(loaded)) > 256  # not cut to 8 bits
    torch.testing.assert_close(loaded[2], torch.tensor(deep, dtype=torch.float32))
    # Alpha dropped, not composited: the RGBA image's results are its colour channels' results.
    out = tmp_path / "final.json"
    args = ["infer", "--model", str(exported_joint_model[1]), "--images", str(image_folder)]
    assert main([*args, "--out", str(out)]) == 0
    grouped = _by_image(json.loads(out.read_text()))
    strip = [{k: v for k, v in r.items() if k != "image_id"} for r in grouped["alpha.png"]]
    assert strip == [{k: v for k, v in r.items() if k != "image_id"} for r in grouped["color.png"]]


@pytest.fixture(scope="module")
def val_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    generate_synthetic_dataset(out, train=1, val=3, size=96, seed=4)
    return out / "val"


def test_annotations_give_the_listed_images_with_coco_ids(
    exported_joint_model, joint_pipeline, val_set, tmp_path, capsys
):
    (val_set / "images" / "stray.txt").write_text("not listed, not an image")
    out = tmp_path / "final.json"
    args = [
        "infer", "--model", str(exported_joint_model[1]), "--images", str(val_set / "images"),
        "--annotations", str(val_set / "annotations.json"), "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    assert "skipped" not in capsys.readouterr().out
    coco = json.loads((val_set / "annotations.json").read_text())
    grouped = _by_image(json.loads(out.read_text()))
    assert sorted(grouped) == sorted(image["id"] for image in coco["images"])
    assert all(isinstance(image_id, int) for image_id in grouped)
    for image in coco["images"]:
        pixels = _file_pixels(val_set / "images" / image["file_name"])
        _assert_same(
            grouped[image["id"]], _expected(joint_pipeline, _ids(exported_joint_model), pixels)
        )
    coco["images"][1]["width"] += 1  # the file no longer matches its entry
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(coco))
    assert main([*args[:-4], "--annotations", str(wrong), "--out", str(tmp_path / "o.json")]) == 2
    error = capsys.readouterr().err
    assert coco["images"][1]["file_name"] in error and "annotation says" in error
    assert not (tmp_path / "o.json").exists()


def test_detections_are_run_as_given(exported_model, val_set, tmp_path):
    """The IoU-head-only model on another detector's raw detections (COCO ids), as before."""
    folder = exported_model[1]
    coco = json.loads((val_set / "annotations.json").read_text())
    raw = [
        {**{k: a[k] for k in ("image_id", "category_id", "bbox")}, "score": 0.9}
        for a in coco["annotations"]
    ]
    (tmp_path / "raw.json").write_text(json.dumps(raw))
    out = tmp_path / "final.json"
    args = [
        "infer", "--model", str(folder), "--images", str(val_set / "images"), "--annotations",
        str(val_set / "annotations.json"), "--detections", str(tmp_path / "raw.json"),
        "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    grouped = _by_image(json.loads(out.read_text()))
    pipeline = Pipeline.from_model(folder)
    ids = _ids(exported_model)
    assert sorted(grouped) == sorted({d["image_id"] for d in raw})
    for image in coco["images"]:
        items = [d for d in raw if d["image_id"] == image["id"]]
        if not items:
            assert image["id"] not in grouped
            continue
        boxes = torch.tensor([d["bbox"] for d in items])
        boxes[:, 2:] += boxes[:, :2]
        labels = torch.tensor([ids.index(d["category_id"]) for d in items])
        pixels = _file_pixels(val_set / "images" / image["file_name"])
        expected = _expected(pipeline, ids, pixels, boxes, torch.full((len(items),), 0.9), labels)
        _assert_same(grouped[image["id"]], expected)


def test_detections_without_annotations_and_a_model_without_detector_are_refused(
    exported_model, image_folder, tmp_path, capsys
):
    out = tmp_path / "final.json"
    (tmp_path / "raw.json").write_text("[]")
    base = ["infer", "--model", str(exported_model[1]), "--out", str(out)]
    assert (
        main([*base, "--images", str(image_folder), "--detections", str(tmp_path / "raw.json")])
        == 2
    )
    assert "--detections needs --annotations" in capsys.readouterr().err
    assert main([*base, "--images", str(image_folder)]) == 2
    error = capsys.readouterr().err
    assert "the model has no detector" in error and "pass --detections, or export a joint" in error
    assert not out.exists()


def test_missing_empty_and_imageless_folders_are_refused_before_the_model(tmp_path, capsys):
    model = tmp_path / "no-model"  # never reached: the folder is checked first
    empty, texts, a_file = tmp_path / "empty", tmp_path / "texts", tmp_path / "file.png"
    empty.mkdir()
    texts.mkdir()
    for index in range(SHOWN_NAMES + 2):
        (texts / f"note{index}.txt").write_text("text")
    a_file.write_bytes(b"x")
    for images, message in (
        (tmp_path / "absent", f"images folder not found: {tmp_path / 'absent'}"),
        (a_file, f"--images {a_file} is not a folder"),
        (empty, f"images folder {empty} is empty"),
        (texts, "holds no images (files ending in .jpg"),
    ):
        args = ["infer", "--model", str(model), "--images", str(images)]
        assert main([*args, "--out", str(tmp_path / "out.json")]) == 2
        error = capsys.readouterr().err
        assert message in error and "model" not in error.split(message)[0]
    assert (
        "7 other entries: note0.txt, note1.txt, note2.txt, note3.txt, note4.txt and 2 more" in error
    )
    assert not (tmp_path / "out.json").exists()


def test_an_undecodable_image_midway_names_the_file_and_writes_nothing(
    exported_joint_model, tmp_path, capsys
):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(_noise(7, 64, 64)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.fromarray(_noise(8, 64, 64)).save(folder / "c.png")
    out = tmp_path / "out" / "final.json"
    args = ["infer", "--model", str(exported_joint_model[1]), "--images", str(folder)]
    assert main([*args, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("iounet infer: cannot decode image") and str(folder / "b.png") in error
    assert not out.exists() and not list(out.parent.glob("*"))  # no output, no temporary file
    # An earlier output stays as it was: without --force refused, with it left whole on error.
    (folder / "b.png").unlink()
    assert main([*args, "--out", str(out)]) == 0
    before = out.read_text()
    assert {r["image_id"] for r in json.loads(before)} == {"a.png", "c.png"}
    assert main([*args, "--out", str(out)]) == 2
    assert "exists: pass --force" in capsys.readouterr().err
    (folder / "b.png").write_bytes(b"not a png at all")
    assert main([*args, "--out", str(out), "--force"]) == 2
    assert "b.png" in capsys.readouterr().err
    assert out.read_text() == before and sorted(p.name for p in out.parent.iterdir()) == [
        "final.json"
    ]


def test_list_images_rule(tmp_path):
    for name in ("b.JPEG", "a.png", "c.tiff", "README", ".a.jpg", "x.png.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    listing = list_images(tmp_path)
    assert [p.name for p in listing.images] == ["a.png", "b.JPEG", "c.tiff"]
    assert listing.skipped == [".a.jpg", "README", "folder.png/", "x.png.txt"]
    assert listing.skipped_note().startswith(
        f"skipped 4 entries in {tmp_path}: .a.jpg, README, folder.png/, x.png.txt (images are"
    )
    (tmp_path / "README").unlink()
    for name in (".a.jpg", "x.png.txt"):
        (tmp_path / name).unlink()
    (tmp_path / "folder.png").rmdir()
    assert list_images(tmp_path).skipped_note() is None


def test_write_results_streams_and_leaves_nothing_on_error(tmp_path):
    path = tmp_path / "results.json"
    first = [{"image_id": "a.png", "bbox": [1.0, 2.0, 3.0, 4.0], "score": float("nan")}]

    def failing():
        yield first
        raise ValueError("cannot decode image b.png")

    with pytest.raises(ValueError, match=r"b\.png"):
        write_results(Output(path), failing())
    assert list(tmp_path.iterdir()) == []
    assert write_results(Output(path), iter([first, [], first])) == 2
    assert json.loads(path.read_text()) == [{**first[0], "score": None}] * 2
    assert path.read_text() == json.dumps([{**first[0], "score": None}] * 2)
