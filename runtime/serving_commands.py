"""`iounet serve` (the pipeline on a Triton Inference Server), `iounet client` (a folder of
images sent to it, written as `iounet infer` writes them) and `iounet triton-repo` (a Triton
model repository of TensorRT engines and the pipeline for a GPU host)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from iounet.runtime.commands import add_backend_arguments, add_max_pixels_argument, backend_options
from iounet.training.commands import add_output_arguments

if TYPE_CHECKING:
    from iounet.export.manifest import Manifest

#: What a missing serving package asks for.
SERVE_EXTRA = "pip install 'iounet[serve]'"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the serving subcommands to the `iounet` parser."""
    serve = subparsers.add_parser(
        "serve",
        help="serve a model's pipeline on a Triton Inference Server (PyTriton)",
        description=(
            "Serve the pipeline of --model (the one `iounet infer` runs) as the Triton model "
            "'iounet' until SIGTERM or Ctrl-C. Readiness and health: Triton's endpoints "
            "(/v2/health/ready, /v2/models/iounet/ready). Needs " + SERVE_EXTRA + "."
        ),
    )
    serve.add_argument("--model", type=Path, required=True, help="exported model folder")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument(
        "--max-detections",
        type=int,
        help="rows of the fixed-size outputs (default: the detector's detections_per_image, "
        "100 for a model without a detector)",
    )
    serve.add_argument(
        "--instances", type=int, default=1, help="model instances sharing the pipeline"
    )
    serve.add_argument("--threads", type=int, help="CPU threads of ONNX Runtime")
    add_max_pixels_argument(serve)
    add_backend_arguments(serve, "ort")
    serve.set_defaults(run=_serve)

    client = subparsers.add_parser(
        "client",
        help="send a folder of images to `iounet serve` and write COCO results",
        description=(
            "Send every image of --images (the rule of `iounet infer`: image ids are the file "
            "names) to the model 'iounet' at --url and write the COCO results `iounet infer` "
            "writes. Needs " + SERVE_EXTRA + "."
        ),
    )
    client.add_argument("--url", required=True, help="HOST:PORT of the server")
    client.add_argument("--protocol", default="http", choices=("http", "grpc"))
    client.add_argument("--images", type=Path, required=True, help="folder of the images")
    add_output_arguments(client, "COCO results JSON to write")
    client.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for readiness")
    client.set_defaults(run=_client)

    repo = subparsers.add_parser(
        "triton-repo",
        help="write a Triton model repository: TensorRT engines + the pipeline (Python backend)",
        description=(
            "Write a Triton model repository for a GPU host: one tensorrt_plan model per "
            "engine of --engines (iounet build-engine) and the Python-backend model 'iounet' "
            "(the inputs and outputs of `iounet serve`), which runs the pipeline through BLS "
            "calls to them. Needs tritonclient (" + SERVE_EXTRA + ") to validate the configs."
        ),
    )
    repo.add_argument("--model", type=Path, required=True, help="exported model folder")
    repo.add_argument("--engines", type=Path, required=True, help="folder of the engines")
    add_output_arguments(repo, "repository folder to write")
    repo.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    repo.add_argument(
        "--max-detections", type=int, help="rows of the fixed-size outputs (as for serve)"
    )
    repo.set_defaults(run=_triton_repo)


def _serve(args: argparse.Namespace) -> int:
    """`iounet serve`: ports and options are checked before the model opens."""
    from iounet.runtime.serving import ServerAddress, check_ports_free

    options = backend_options(args.backend, args)
    if args.instances < 1:
        raise ValueError(f"--instances must be positive, got {args.instances}")
    address = ServerAddress(args.host, args.http_port, args.grpc_port)
    check_ports_free(address)
    _require("pytriton", "nvidia-pytriton")

    from iounet.export.manifest import load_manifest
    from iounet.runtime.pipeline import Pipeline, open_backend
    from iounet.runtime.serving import MODEL_NAME, ModelServer, serve

    manifest = load_manifest(args.model)
    detections = _max_detections(args.max_detections, manifest)
    pipeline = Pipeline.for_manifest(manifest, open_backend(manifest, args.backend, **options))
    server = ModelServer(pipeline, manifest, detections, args.max_image_pixels)

    def ready() -> None:
        print(
            f"serving {args.model} ({args.backend}) as model '{MODEL_NAME}': "
            f"http {address.http_url}, grpc {address.grpc_url}",
            flush=True,
        )

    serve(server, address, args.instances, ready)
    print("stopped", flush=True)
    return 0


def _client(args: argparse.Namespace) -> int:
    """`iounet client`: the output is written once every image has been answered."""
    from iounet.files import check_output, is_coco_results
    from iounet.runtime.image_folder import list_images

    output = check_output(args.out, args.force, is_coco_results, "COCO results file")
    listing = list_images(args.images)
    _require("tritonclient", "tritonclient[http,grpc]")
    from iounet.runtime.inference import write_results
    from iounet.runtime.serving_client import ServingClient

    note = listing.skipped_note()
    if note:
        print(note)
    with ServingClient(args.url, args.protocol) as client:
        client.wait_ready(args.timeout)
        count = write_results(output, client.coco_results(listing.images))
    print(f"{len(listing.images)} images -> {count} detections ({args.url}) -> {args.out}")
    return 0


def _triton_repo(args: argparse.Namespace) -> int:
    """`iounet triton-repo`: the repository appears whole or not at all."""
    from iounet.export.manifest import load_manifest
    from iounet.files import check_output

    output = check_output(
        args.out,
        args.force,
        lambda path: (path / "iounet" / "1" / "model.py").is_file(),
        "Triton model repository",
        folder=True,
    )
    _require("tritonclient", "tritonclient[http,grpc]")
    from iounet.runtime.triton_repo import engine_files, write_repository

    manifest = load_manifest(args.model)
    engines = engine_files(manifest, args.engines, args.precision)
    rows = _max_detections(args.max_detections, manifest)
    with output.staged() as repository:
        write_repository(manifest, engines, repository, rows, args.precision)
    print(f"{len(engines)} engines + model 'iounet' (Python backend) -> {args.out}")
    return 0


def _max_detections(given: int | None, manifest: Manifest) -> int:
    """--max-detections, or the detector's detections_per_image (100 without a detector)."""
    if given is not None:
        if given < 1:
            raise ValueError(f"--max-detections must be positive, got {given}")
        return given
    return manifest.detector.detections_per_image if manifest.detector else 100


def _require(module: str, package: str) -> None:
    """ImportError naming the extra when `module` is not installed."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{package} is not installed: {SERVE_EXTRA}")
