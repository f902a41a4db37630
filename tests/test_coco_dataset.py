"""The COCO-format dataset: resizing, flips, crowds, empty images, clipping and bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import DataLoader

from iounet.training.coco_dataset import CocoDetection, collate

# Category ids out of order and with gaps: labels follow increasing ids.
CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 12, "name": "bird"}]
IMAGES = [
    {"id": 10, "file_name": "wide.png", "width": 200, "height": 100},
    {"id": 20, "file_name": "empty.png", "width": 50, "height": 80},
    {"id": 30, "file_name": "messy.png", "width": 60, "height": 40},
]
ANNOTATIONS = [
    {"id": 1, "image_id": 10, "category_id": 7, "bbox": [10.0, 20.0, 30.0, 40.0], "iscrowd": 0},
    {"id": 2, "image_id": 10, "category_id": 12, "bbox": [100.5, 0.0, 99.5, 100.0]},
    {"id": 3, "image_id": 30, "category_id": 3, "bbox": [5, 5, 10, 10], "iscrowd": 1},
    {"id": 4, "image_id": 30, "category_id": 3, "bbox": [50, -5, 20, 15], "iscrowd": 0},
    {"id": 5, "image_id": 30, "category_id": 7, "bbox": [70, 10, 5, 5], "iscrowd": 0},
    {"id": 6, "image_id": 30, "category_id": 12, "bbox": [20, 10, 0, 8], "iscrowd": 0},
    {"id": 7, "image_id": 30, "category_id": 12, "bbox": [1, 2, 3, 4], "iscrowd": 0},
]


def _coco() -> dict:
    return {
        "images": copy.deepcopy(IMAGES),
        "annotations": copy.deepcopy(ANNOTATIONS),
        "categories": copy.deepcopy(CATEGORIES),
    }


def _write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for info in IMAGES:
        pixels = rng.integers(0, 256, (info["height"], info["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / info["file_name"])


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    _write_images(images)
    annotations = tmp_path / "annotations.json"
    annotations.write_text(json.dumps(_coco()))
    return images, annotations


def _dataset(files, **kwargs) -> CocoDetection:
    options = {"min_size": 100, "max_size": 1000, **kwargs}
    return CocoDetection(files[0], files[1], **options)


def _item(dataset: CocoDetection, image_id: int) -> tuple[torch.Tensor, dict]:
    return dataset[dataset.image_ids.index(image_id)]


def test_category_ids_map_to_contiguous_labels_in_id_order(files):
    dataset = _dataset(files)
    assert dataset.class_names == ["cat", "dog", "bird"]
    assert dataset.category_to_label == {3: 0, 7: 1, 12: 2}
    assert dataset.label_to_category == {0: 3, 1: 7, 2: 12}
    assert isinstance(dataset.coco, COCO)
    assert dataset.image_ids == [10, 20, 30]
    _, target = _item(dataset, 10)
    assert target["labels"].tolist() == [1, 2]
    assert target["labels"].dtype == torch.int64


@pytest.mark.parametrize(
    ("min_size", "max_size", "scale", "size"),
    [
        (50, 1000, 0.5, (50, 100)),  # short side 100 -> 50
        (100, 1000, 1.0, (100, 200)),  # already there
        (300, 450, 2.25, (225, 450)),  # the long side would be 600: capped at 450
    ],
)
def test_resize_scales_image_and_boxes_by_one_factor(files, min_size, max_size, scale, size):
    dataset = _dataset(files, min_size=min_size, max_size=max_size)
    image, target = _item(dataset, 10)
    assert image.dtype == torch.float32 and image.shape == (3, *size)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert float(target["scale"]) == pytest.approx(scale)
    assert target["size"].tolist() == list(size)
    assert target["orig_size"].tolist() == [100, 200]
    expected = torch.tensor([[10.0, 20.0, 40.0, 60.0], [100.5, 0.0, 200.0, 100.0]]) * scale
    torch.testing.assert_close(target["boxes"], expected)
    assert target["boxes"].dtype == torch.float32
    assert int(target["image_id"]) == 10


@pytest.mark.parametrize(("min_size", "max_size"), [(100, 1000), (37, 1000), (300, 450)])
def test_images_are_the_pixels_the_api_and_infer_see(files, min_size, max_size):
    """One loader and one resize for training, evaluation, the API and `iounet infer`: an item's
    image is load_resized of its file (resized in 8 bits), bit for bit."""
    from iounet.training.images import load_image, load_resized, resize_image

    dataset = _dataset(files, min_size=min_size, max_size=max_size)
    for image_id, info in zip((10, 30), (IMAGES[0], IMAGES[2]), strict=True):
        image, _ = _item(dataset, image_id)
        expected, _, _ = load_resized(files[0] / info["file_name"], min_size, max_size)
        assert torch.equal(image, expected)
        in_float, _ = resize_image(load_image(files[0] / info["file_name"]), min_size, max_size)
        assert (image - in_float).abs().max() <= 1.5 / 255  # 8-bit fixed-point resizing


def test_resized_content_moves_with_the_boxes(tmp_path):
    """A sharp edge at x = 50 of a 61 x 20 image lands at 50 * 1.5 = 75 after resizing to 91 x 30
    (per-axis factors 91/61 and 30/20 would put it at 74.6)."""
    pixels = np.zeros((20, 61, 3), dtype=np.uint8)
    pixels[:, 50:] = 255
    (tmp_path / "images").mkdir()
    Image.fromarray(pixels).save(tmp_path / "images" / "edge.png")
    coco = {
        "images": [{"id": 1, "file_name": "edge.png", "width": 61, "height": 20}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [50, 0, 11, 20]}],
        "categories": [{"id": 1, "name": "edge"}],
    }
    (tmp_path / "a.json").write_text(json.dumps(coco))
    dataset = CocoDetection(tmp_path / "images", tmp_path / "a.json", min_size=30, max_size=500)
    image, target = dataset[0]
    assert float(target["scale"]) == 1.5
    assert image.shape == (3, 30, 91)
    edge = float((1.0 - image[0]).sum(dim=1).mean())  # dark pixels per row: the edge's x
    assert edge == pytest.approx(75.0, abs=0.1)
    torch.testing.assert_close(target["boxes"], torch.tensor([[75.0, 0.0, 91.0, 30.0]]))


def test_crowds_are_kept_apart_and_boxes_clipped_or_dropped(files):
    dataset = _dataset(files, min_size=40)  # image 30 is 60 x 40: scale 1
    _, target = _item(dataset, 30)
    torch.testing.assert_close(target["crowd_boxes"], torch.tensor([[5.0, 5.0, 15.0, 15.0]]))
    # Annotation 4 is clipped to the image, 5 lies outside it and 6 has no width: both dropped.
    expected = torch.tensor([[50.0, 0.0, 60.0, 10.0], [1.0, 2.0, 4.0, 6.0]])
    torch.testing.assert_close(target["boxes"], expected)
    assert target["labels"].tolist() == [0, 2]
    report = dataset.report()
    assert report["crowd_annotations"] == 1
    assert report["clipped_boxes"] == 2  # 4 and 5 (5 is also dropped)
    assert report["dropped_boxes"] == 2
    assert (report["images"], report["images_in_file"], report["annotations"]) == (3, 3, 7)


def test_empty_images_are_kept_unless_skipped(files):
    _, target = _item(_dataset(files), 20)
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["crowd_boxes"].shape == (0, 4)
    skipping = _dataset(files, skip_empty=True)
    assert skipping.image_ids == [10, 30]
    assert skipping.report()["skipped_empty_images"] == 1


def test_dataloader_batches_with_collate(files):
    loader = DataLoader(_dataset(files, min_size=32), batch_size=2, collate_fn=collate)
    batches = list(loader)
    assert [len(images) for images, _ in batches] == [2, 1]
    images, targets = batches[0]
    assert [tuple(image.shape) for image in images] == [(3, 32, 64), (3, 51, 32)]
    assert [int(t["image_id"]) for t in targets] == [10, 20]
    assert collate([]) == ([], [])


def test_missing_files_raise_naming_them(files, tmp_path):
    images, annotations = files
    with pytest.raises(FileNotFoundError, match=r"nowhere\.json"):
        CocoDetection(images, tmp_path / "nowhere.json")
    with pytest.raises(FileNotFoundError, match="no-images"):
        CocoDetection(tmp_path / "no-images", annotations)
    (images / "wide.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"wide\.png"):
        CocoDetection(images, annotations)
    dataset = CocoDetection(images, annotations, skip_unreadable=True)
    assert dataset.image_ids == [20, 30]
    assert dataset.report()["missing_images"] == 1
    assert dataset.missing_files == [images / "wide.png"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda path: path.write_bytes(b"not an image"), "cannot decode"),
        (lambda path: path.write_bytes(path.read_bytes()[:200]), "cannot decode"),
        (lambda path: Image.new("RGB", (10, 10)).save(path), "10x10 pixels"),
    ],
    ids=["garbage", "truncated", "wrong-size"],
)
def test_unreadable_images_raise_or_are_skipped(files, damage, message):
    images, _ = files
    damage(images / "wide.png")
    dataset = _dataset(files)
    with pytest.raises(ValueError, match=message) as error:
        dataset[0]
    assert "wide.png" in str(error.value)
    skipping = _dataset(files, skip_unreadable=True)
    _, target = skipping[0]
    assert int(target["image_id"]) == 20  # the next readable image stands in
    _, target = skipping[0]
    assert skipping.report()["unreadable_images"] == 1
    assert skipping.unreadable_files == [images / "wide.png"]


def _set(path: list, value):
    def change(coco: dict) -> dict:
        *parents, last = path
        entry = coco
        for key in parents:
            entry = entry[key]
        if value is KeyError:
            del entry[last]
        else:
            entry[last] = value
        return coco

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda coco: [coco], "top level must be an object"),
        (_set(["images"], KeyError), "'images' must be a list"),
        (_set(["annotations"], {"id": 1}), "'annotations' must be a list"),
        (_set(["categories", 0], "dog"), r"categories\[0\] must be an object"),
        (_set(["categories", 1, "name"], KeyError), r"categories\[1\] has no 'name'"),
        (_set(["categories", 1, "id"], "3"), r"categories\[1\]: 'id' must be an int"),
        (_set(["images", 0, "file_name"], KeyError), r"images\[0\] has no 'file_name'"),
        (_set(["images", 1, "width"], "50"), r"images\[1\]: 'width' must be a positive int"),
        (_set(["images", 1, "height"], 0), r"'height' must be a positive int"),
        (_set(["images", 2, "id"], 10), "id 10 appears twice in 'images'"),
        (_set(["annotations", 0, "bbox"], [1, 2, 3]), r"annotations\[0\]: 'bbox' must be a list"),
        (_set(["annotations", 0, "bbox"], [1, 2, "3", 4]), "'bbox' must be a list of 4"),
        (_set(["annotations", 0, "bbox"], [1, 2, True, 4]), "'bbox' must be a list of 4"),
        (_set(["annotations", 0, "bbox"], "1 2 3 4"), "'bbox' must be a list of 4"),
        (_set(["annotations", 1, "bbox"], [1, 2, float("nan"), 4]), "'bbox'"),
        (_set(["annotations", 2, "category_id"], KeyError), "has no 'category_id'"),
        (_set(["annotations", 2, "image_id"], 99), "image_id 99 is not in 'images'"),
        (_set(["annotations", 2, "category_id"], 5), "category_id 5 is not in 'categories'"),
        (_set(["annotations", 2, "iscrowd"], 2), "'iscrowd' must be 0 or 1"),
        (_set(["annotations", 3, "id"], 1), "id 1 appears twice in 'annotations'"),
    ],
)
def test_malformed_annotations_raise_naming_the_file_and_entry(files, change, message):
    images, annotations = files
    annotations.write_text(json.dumps(change(_coco())))
    with pytest.raises(ValueError, match=message) as error:
        CocoDetection(images, annotations)
    assert str(annotations) in str(error.value)


def test_non_json_annotation_file_raises(files):
    images, annotations = files
    annotations.write_text("{'images': []")
    with pytest.raises(ValueError, match="not a JSON file") as error:
        CocoDetection(images, annotations)
    assert str(annotations) in str(error.value)


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"min_size": 0}, "min_size"),
        ({"max_size": 10.5}, "max_size"),
    ],
)
def test_bad_arguments_raise_naming_them(files, arguments, name):
    with pytest.raises(ValueError, match=name):
        CocoDetection(*files, **arguments)
