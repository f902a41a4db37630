"""Reading COCO results files of raw detections."""

from __future__ import annotations

import json

import pytest

from iounet.runtime.detections import check_known, read_detections

GOOD = {"image_id": 3, "category_id": 2, "bbox": [1.0, 2.0, 3.5, 4.0], "score": 0.7}


def _write(tmp_path, payload, raw=False):
    path = tmp_path / "detections.json"
    path.write_text(payload if raw else json.dumps(payload))
    return path


def test_good_file_round_trips(tmp_path):
    assert read_detections(_write(tmp_path, [GOOD, {**GOOD, "score": 1.5}])) == [
        GOOD,
        {**GOOD, "score": 1.5},
    ]
    assert read_detections(_write(tmp_path, [])) == []


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"a": 1}, "JSON list"),
        ([GOOD, 5], "detection 1 is not an object"),
        ([{k: v for k, v in GOOD.items() if k != "score"}], "lacks"),
        ([{**GOOD, "image_id": "3"}], "image_id"),
        ([{**GOOD, "category_id": True}], "category_id"),
        ([{**GOOD, "bbox": [1, 2, 3]}], "bbox"),
        ([{**GOOD, "bbox": [1, 2, float("nan"), 4]}], "bbox"),
        ([{**GOOD, "bbox": [1, 2, -3, 4]}], "negative"),
        ([{**GOOD, "score": None}], "score"),
    ],
)
def test_bad_entries_name_the_file_and_entry(tmp_path, payload, match):
    with pytest.raises(ValueError, match=match) as error:
        read_detections(_write(tmp_path, payload))
    assert "detections.json" in str(error.value)


def test_missing_and_non_json_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        read_detections(tmp_path / "absent.json")
    with pytest.raises(ValueError, match="not JSON"):
        read_detections(_write(tmp_path, "{not json", raw=True))


def test_unknown_images_and_categories():
    check_known([GOOD], {3}, {2})
    with pytest.raises(ValueError, match="image ids"):
        check_known([GOOD], {4}, {2})
    with pytest.raises(ValueError, match="category ids"):
        check_known([GOOD], {3}, {1})
