"""Latency and throughput of `iounet serve` on the loopback next to the same pipeline in process,
on the same images, at concurrency 1, 2 and 4; every answer is checked.

The server is started as a user starts it (``python -m iounet.cli serve``, 127.0.0.1, free
ports, ``--instances`` = the highest concurrency). Each level sends ``--requests`` requests
(encoded image files, cycling over the images) from that many client threads, each with its
own HTTP connection; the in-process rows call the server's own model function
(``ModelServer.detect``: decode, pipeline, fixed-size outputs) from as many threads sharing one
pipeline. Every served answer must equal the in-process answer of its image, array for array:
the table counts the requests lost (no answer) and answered wrongly, and the script fails when
either is not zero. Each level starts with 2 x concurrency untimed requests (connections, first
runs). Latency is per request (p50/p90/p99, ms); throughput is requests over the level's wall
time.

    python benchmarks/serving_bench.py --model DIR [--images DIR] [--requests 40]
        [--concurrency 1 2 4] [--threads 1] [--json PATH]

Without ``--images``, 8 noise images of 240x320 are written to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from iounet.runtime.serving import ServerAddress

#: Seconds the server may take to start.
START_TIMEOUT = 180.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def noise_images(folder: Path, count: int = 8) -> list[Path]:
    """`count` PNG noise images of 240x320 in `folder`."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"noise{index}.png"
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def run_level(
    call: Callable[[int], dict[str, np.ndarray]],
    requests: int,
    concurrency: int,
    expected: list[dict[str, np.ndarray]],
) -> dict[str, float]:
    """`requests` calls of `call(image index)` from `concurrency` threads: latency percentiles
    (ms), throughput (requests/s) and the requests lost or answered wrongly."""
    latencies: list[float] = []
    lost = wrong = 0
    lock = threading.Lock()

    def one(request: int) -> None:
        nonlocal lost, wrong
        index = request % len(expected)
        start = time.perf_counter()
        try:
            answer = call(index)
        except Exception:  # any failure counts as a lost request
            with lock:
                lost += 1
            return
        elapsed = time.perf_counter() - start
        same = answer.keys() == expected[index].keys() and all(
            np.array_equal(answer[name], expected[index][name]) for name in answer
        )
        with lock:
            latencies.append(elapsed)
            wrong += not same

    with ThreadPoolExecutor(concurrency) as pool:
        # Warm-up, not timed: each thread's connection, each model instance's first run.
        list(pool.map(lambda request: call(request % len(expected)), range(2 * concurrency)))
        start = time.perf_counter()
        list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "throughput": len(latencies) / wall,
        "lost": lost,
        "wrong": wrong,
    }


def _served_call(address: ServerAddress, images: list[bytes]) -> Callable[[int], dict]:
    """A call that sends image `index` over the calling thread's own connection."""
    from iounet.runtime.serving_client import ServingClient

    local = threading.local()
    clients: list[ServingClient] = []

    def call(index: int) -> dict[str, np.ndarray]:
        if not hasattr(local, "client"):
            local.client = ServingClient(address.http_url)
            clients.append(local.client)
        return local.client.infer({"image": np.array([[images[index]]], np.object_)})

    call.clients = clients  # type: ignore[attr-defined]
    return call


def main() -> int:
    """Run the benchmark; print the table (and write it to --json); 1 if a request was lost
    or answered wrongly."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="exported model folder")
    parser.add_argument("--images", type=Path, help="folder of images (default: noise images)")
    parser.add_argument("--requests", type=int, default=40, help="requests per level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    parser.add_argument("--json", type=Path, help="write the table here")
    args = parser.parse_args()
    if args.requests < 1 or min(args.concurrency) < 1:
        parser.error("--requests and --concurrency must be positive")

    from iounet.export.manifest import load_manifest
    from iounet.runtime.image_folder import list_images
    from iounet.runtime.pipeline import Pipeline, open_backend
    from iounet.runtime.serving import ModelServer
    from iounet.runtime.serving_client import ServingClient

    with tempfile.TemporaryDirectory() as scratch:
        paths = list_images(args.images).images if args.images else noise_images(Path(scratch))
        images = [path.read_bytes() for path in paths]
        manifest = load_manifest(args.model)
        backend = open_backend(manifest, "ort", threads=args.threads)
        detections = manifest.detector.detections_per_image if manifest.detector else 100
        model = ModelServer(Pipeline.for_manifest(manifest, backend), manifest, detections)

        def local(index: int) -> dict[str, np.ndarray]:
            found = model.detect({"image": np.array([images[index]], np.object_)})
            return {name: value[None] for name, value in found.items()}

        expected = [local(index) for index in range(len(images))]
        address = ServerAddress("127.0.0.1", _free_port(), _free_port())
        command = [
            sys.executable, "-m", "iounet.cli", "serve", "--model", str(args.model),
            "--http-port", str(address.http_port), "--grpc-port", str(address.grpc_port),
            "--instances", str(max(args.concurrency)), "--threads", str(args.threads),
        ]  # fmt: skip
        log = Path(scratch) / "server.log"
        with open(log, "w") as output:
            server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        rows: dict[str, dict[str, float]] = {}
        try:
            with ServingClient(address.http_url) as client:
                client.wait_ready(START_TIMEOUT)
            print(
                f"{len(images)} images, {args.requests} requests a level, ORT {args.threads} "
                f"thread(s), server instances {max(args.concurrency)}",
                flush=True,
            )
            for concurrency in args.concurrency:
                rows[f"in-process c={concurrency}"] = run_level(
                    local, args.requests, concurrency, expected
                )
                served = _served_call(address, images)
                rows[f"served c={concurrency}"] = run_level(
                    served, args.requests, concurrency, expected
                )
                for client in served.clients:
                    client.close()
                print(f"concurrency {concurrency} done", flush=True)
        finally:
            server.terminate()
            server.wait(120)
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 1 if any(row["lost"] or row["wrong"] for row in rows.values()) else 0


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| run | p50 ms | p90 ms | p99 ms | requests/s | lost | wrong |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['p50_ms']:.1f} | {row['p90_ms']:.1f} | {row['p99_ms']:.1f} | "
            f"{row['throughput']:.2f} | {row['lost']} | {row['wrong']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
