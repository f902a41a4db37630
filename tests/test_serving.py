"""`iounet serve` on a real Triton Inference Server (PyTriton) on 127.0.0.1, free ports:
`iounet client` writes what `iounet infer` writes, raw detections and thresholds per request,
bad requests answered with the problem while the server keeps serving, a port in use, SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iounet.cli import main
from iounet.runtime.serving import ServerAddress
from iounet.runtime.serving_client import ServingClient, ServingError

SERVE_EXTRA = "pip install iounet[serve]"
pytest.importorskip("pytriton", reason=f"nvidia-pytriton is not installed ({SERVE_EXTRA})")
pytest.importorskip("tritonclient.http", reason=f"tritonclient is not installed ({SERVE_EXTRA})")
pytest.importorskip("onnxruntime_extensions")

#: Seconds the server may take to start (Triton, the model process, the ONNX sessions).
START_TIMEOUT = 180
#: The pixel limit the server is started with (the "too large" request is above it).
MAX_PIXELS = 100_000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Three small noise images (PNG, JPEG, tall) and a file that is not an image."""
    folder = tmp_path_factory.mktemp("serve_images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)).save(
        folder / "b.jpg", quality=90
    )
    Image.fromarray(rng.integers(0, 256, (150, 60, 3), dtype=np.uint8)).save(folder / "c.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def server(exported_joint_model, tmp_path_factory):
    """`iounet serve` on the tiny joint model, started as a user starts it (no environment
    variables set): (process, address, log file)."""
    address = ServerAddress("127.0.0.1", _free_port(), _free_port())
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    command = [
        sys.executable, "-m", "iounet.cli", "serve", "--model", str(exported_joint_model[1]),
        "--http-port", str(address.http_port), "--grpc-port", str(address.grpc_port),
        "--max-image-pixels", str(MAX_PIXELS), "--threads", "1",
    ]  # fmt: skip
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        with ServingClient(address.http_url) as client:
            deadline = time.monotonic() + START_TIMEOUT
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    client.wait_ready(1.0)
                    break
                except ConnectionError:
                    continue
            else:
                pytest.fail(f"iounet serve did not start:\n{log.read_text()[-4000:]}")
        yield process, address, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def test_client_writes_what_infer_writes(server, exported_joint_model, image_folder, tmp_path):
    _, address, _ = server
    model = str(exported_joint_model[1])
    assert main(["infer", "--model", model, "--images", str(image_folder),
                 "--out", str(tmp_path / "infer.json")]) == 0  # fmt: skip
    assert main(["client", "--url", address.http_url, "--images", str(image_folder),
                 "--out", str(tmp_path / "client.json")]) == 0  # fmt: skip
    expected = json.loads((tmp_path / "infer.json").read_text())
    assert {result["image_id"] for result in expected} == {"a.png", "b.jpg", "c.png"}
    assert (tmp_path / "client.json").read_bytes() == (tmp_path / "infer.json").read_bytes()


def test_raw_detections_and_thresholds_per_request(server, exported_joint_model):
    from iounet.export.manifest import load_manifest
    from iounet.runtime.pipeline import Pipeline, PipelineConfig

    _, address, _ = server
    manifest = load_manifest(exported_joint_model[1])
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    corners = rng.uniform(0, 60, (12, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + rng.uniform(10, 40, (12, 2))], axis=1)
    boxes = boxes.astype(np.float32)
    scores = rng.uniform(0.1, 1.0, 12).astype(np.float32)
    labels = rng.integers(0, manifest.num_classes, 12).astype(np.int32)
    config = PipelineConfig(refine=manifest.refinement, nms_threshold=0.3, refine_top=5)
    pipeline = Pipeline.from_model(exported_joint_model[1], config=config)
    want = pipeline(
        torch.from_numpy(pixels).permute(2, 0, 1),
        torch.from_numpy(boxes),
        torch.from_numpy(scores),
        torch.from_numpy(labels).long(),
    )
    with ServingClient(address.grpc_url, "grpc") as client:
        got = client.detect(pixels, (boxes, scores, labels), nms_threshold=0.3, refine_top=5)
    count = got["num_detections"]
    assert count == len(want.boxes) > 0
    np.testing.assert_allclose(got["detection_boxes"][:count], want.boxes.numpy(), atol=1e-4)
    np.testing.assert_array_equal(got["detection_scores"][:count], want.scores.numpy())
    np.testing.assert_array_equal(got["detection_classes"][:count], want.labels.numpy())
    np.testing.assert_allclose(got["detection_ious"][:count], want.ious.numpy(), atol=1e-6)
    assert not got["detection_boxes"][count:].any() and not got["detection_scores"][count:].any()
    ids = np.asarray(manifest.category_ids)[want.labels.numpy()]
    np.testing.assert_array_equal(got["detection_category_ids"][:count], ids)


def _pixels(height: int, width: int) -> np.ndarray:
    return np.zeros((1, height, width, 3), np.uint8)


#: (what is wrong, the inputs sent, a phrase the error response must hold)
BAD_REQUESTS = [
    ("not an image", {"image": np.array([[b"plain text"]], np.object_)}, "cannot decode image"),
    ("empty bytes", {"image": np.array([[b""]], np.object_)}, "empty"),
    ("float pixels", {"pixels": np.zeros((1, 8, 8, 3), np.float32)}, "UINT8"),
    ("pixels without channels", {"pixels": np.zeros((1, 8, 8), np.uint8)}, "shape"),
    ("four channels", {"pixels": np.zeros((1, 8, 8, 4), np.uint8)}, "shape"),
    # PyTriton's transport refuses zero-size tensors before the model sees them.
    ("empty pixels", {"pixels": _pixels(0, 16)}, "zeros in shape"),
    ("too large", {"pixels": _pixels(400, 400)}, "above the limit"),
    ("no image", {"refine_top": np.array([[3]], np.int32)}, "no image"),
    (
        "bytes and pixels",
        {"image": np.array([[b"x"]], np.object_), "pixels": _pixels(8, 8)},
        "not both",
    ),
    (
        "boxes alone",
        {"pixels": _pixels(8, 8), "boxes": np.zeros((1, 2, 4), np.float32)},
        "together",
    ),
    (
        "threshold out of range",
        {"pixels": _pixels(8, 8), "nms_threshold": np.array([[2.0]], np.float32)},
        "nms_threshold must lie in [0, 1]",
    ),
    ("unknown input", {"pixels": _pixels(8, 8), "colour": np.zeros((1, 1), np.int32)}, "colour"),
]


def test_bad_requests_get_the_problem_and_the_server_keeps_serving(server, image_folder):
    process, address, _ = server
    image = (image_folder / "a.png").read_bytes()
    with ServingClient(address.http_url) as client:
        good = client.detect(image)
        assert good["num_detections"] > 0
        for what, inputs, phrase in BAD_REQUESTS:
            with pytest.raises(ServingError) as caught:
                client.infer(inputs)
            assert phrase in str(caught.value), (what, str(caught.value))
            again = client.detect(image)
            for name, value in good.items():
                np.testing.assert_array_equal(again[name], value, err_msg=f"after {what}")
    assert process.poll() is None


def test_a_port_in_use_is_refused_at_start(exported_joint_model, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", "--model", str(exported_joint_model[1]), "--http-port", str(port),
                "--grpc-port", str(_free_port())]  # fmt: skip
        assert main(args) == 2
    error = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port} (--http-port)" in error


def test_sigterm_stops_the_server_cleanly(server):
    process, address, log = server
    process.send_signal(signal.SIGTERM)
    assert process.wait(90) == 0, log.read_text()[-4000:]
    assert "stopped" in log.read_text()
    for port in (address.http_port, address.grpc_port):  # the ports are free again
        with socket.socket() as probe:
            probe.bind((address.host, port))
