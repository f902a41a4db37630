"""Image files as people have them: EXIF orientation as viewers apply it, decompression bombs
refused with one line, and large images decoded and resized within a memory bound."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iounet.cli import main
from iounet.training.images import (
    decode_image,
    load_image,
    load_resized,
    open_image,
    resize_decoded,
)

TESTS = Path(__file__).parent
ORIENTATION = 0x0112


def _bomb(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A 1 KB PNG whose header claims `width` x `height` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * 1024)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )
    return path


def _pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((height, width, 3)) * 255).astype(np.uint8)


def _tagged(path: Path, pixels: np.ndarray, orientation: int) -> Path:
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[ORIENTATION] = orientation
    image.save(path, exif=exif.tobytes())
    return path


def test_a_decompression_bomb_is_refused_before_its_pixels_are_read(tmp_path):
    bomb = _bomb(tmp_path / "bomb.png")
    with pytest.raises(ValueError, match=r"30000x30000 = 900,000,000 pixels, above the limit"):
        load_image(bomb)
    with pytest.raises(ValueError, match="above the limit of 1,000"):
        load_resized(_bomb(tmp_path / "small.png", 40, 40), 32, 64, max_pixels=1000)
    with pytest.raises(ValueError, match="must be positive"):
        load_image(bomb, max_pixels=0)


@pytest.mark.parametrize("command", ["infer", "bench"])
def test_a_bomb_gets_one_line_from_the_command_line(
    command, exported_joint_model, tmp_path, capsys
):
    folder = tmp_path / "images"
    folder.mkdir()
    _bomb(folder / "bomb.png")
    model = str(exported_joint_model[1])
    if command == "infer":
        args = ["infer", "--model", model, "--images", str(folder), "--out", str(tmp_path / "o")]
    else:
        args = ["bench", "--model", model, "--backends", "ort", "--image", str(folder / "bomb.png")]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "bomb.png is 30000x30000" in error
    assert "Traceback" not in error
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_as_viewers_show_the_image(tmp_path, orientation):
    stored = _pixels(24, 40)
    turn = {3: 2, 6: -1, 8: 1}[orientation]  # counter-clockwise quarter turns
    shown = np.rot90(stored, turn).copy()
    path = _tagged(tmp_path / "photo.png", stored, orientation)
    expected = torch.from_numpy(shown).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(load_image(path), expected, rtol=0, atol=0)
    assert decode_image(path)[1] == shown.shape[:2]
    # an annotation made on the stored pixels keeps them (COCO files annotated unrotated)
    if orientation != 3:
        assert open_image(path, expected_size=stored.shape[:2]).size == (40, 24)


def test_infer_gives_boxes_in_the_pixels_viewers_show(exported_joint_model, tmp_path):
    stored = _scene()
    tagged, upright = tmp_path / "tagged", tmp_path / "upright"
    tagged.mkdir()
    upright.mkdir()
    _tagged(tagged / "a.png", stored, 6)
    Image.fromarray(np.rot90(stored, -1).copy()).save(upright / "a.png")
    results = []
    for folder in (tagged, upright):
        out = folder.with_suffix(".json")
        args = ["infer", "--model", str(exported_joint_model[1]), "--images", str(folder)]
        assert main([*args, "--out", str(out)]) == 0
        results.append(json.loads(out.read_text()))
    assert results[0] == results[1] and results[0]
    height, width = np.rot90(stored, -1).shape[:2]
    for result in results[0]:
        x, y, w, h = result["bbox"]
        assert 0 <= x <= x + w <= width + 1e-3 and 0 <= y <= y + h <= height + 1e-3


def _scene() -> np.ndarray:
    """A synthetic scene (shapes on a background) as the tiny model was trained on."""
    from iounet.training.synthetic import render, sample_scene, scene_rng

    return render(sample_scene(scene_rng(0, "val", 3), 160))[:, :120].copy()


def test_a_jpeg_much_larger_than_the_model_is_reduced_at_decode(tmp_path):
    pixels = _pixels(1600, 2400)
    path = tmp_path / "big.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    image, size = decode_image(path, model_size=(96, 160))
    assert size == (1600, 2400) and image.size[0] < 2400 and image.size[0] >= 2 * 144
    reduced, scale, shown = load_resized(path, 96, 160)
    full, full_scale = resize_decoded(open_image(path), (1600, 2400), 96, 160)
    assert shown == (1600, 2400) and scale == full_scale and reduced.shape == full.shape
    assert (reduced - full).abs().mean() < 0.02  # the same scene region, another filter


def test_a_large_image_is_decoded_and_resized_within_a_memory_bound(tmp_path):
    """A 6000 x 6000 PNG (108 MB of 8-bit pixels) at 800 px: the peak is the decoded image
    plus little, not the image in float (432 MB) and its copies."""
    side = 6000
    row = (np.arange(side) % 251).astype(np.uint8)
    Image.fromarray(np.broadcast_to(row[None, :, None], (side, side, 3)).copy()).save(
        tmp_path / "large.png"
    )
    code = f"""
        import resource
        from iounet.training.images import load_resized
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        image, scale, size = load_resized({str(tmp_path / "large.png")!r}, 800, 1333)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert tuple(image.shape) == (3, 800, 800) and size == ({side}, {side})
        print((after - before) // 1024)
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    grown_mb = int(done.stdout.split()[-1])
    decoded_mb = side * side * 4 / 2**20  # PIL holds RGB as 4 bytes a pixel
    print(f"peak growth {grown_mb} MB for a {side}x{side} PNG (decoded {decoded_mb:.0f} MB)")
    assert grown_mb < 1.5 * decoded_mb


def test_an_undecodable_image_late_in_the_folder_stops_infer_before_the_model_loads(
    exported_joint_model, tmp_path, monkeypatch, capsys
):
    from iounet.runtime import pipeline

    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        Image.fromarray(_pixels(40, 50, index)).save(folder / f"{index:03d}.png")
    (folder / "zzz.png").write_bytes(b"\x89PNG not really")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was opened before every image was checked")

    monkeypatch.setattr(pipeline, "open_backend", no_model)
    out = tmp_path / "out.json"
    args = ["infer", "--model", str(exported_joint_model[1]), "--images", str(folder)]
    assert main([*args, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "cannot decode image" in error and "zzz.png" in error
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["images"]
