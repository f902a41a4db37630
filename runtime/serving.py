"""`iounet serve`: an exported model's ``Pipeline`` as the model ``iounet`` of a Triton Inference
Server (PyTriton, ``pip install iounet[serve]``).

One request holds a batch of images, each either encoded file bytes (input ``image``, decoded
as ``iounet infer`` reads files: ``load_resized``) or uint8 pixels H x W x 3 (input ``pixels``,
as ``Pipeline.__call__`` takes them), and optionally another detector's raw detections
(``boxes`` (N, 4) in the image's pixels, ``scores`` (N,), ``labels`` (N,) class indices) and
the pipeline's thresholds (``nms_threshold``, ``refine_top``). The answer has the layout of
TensorRT's EfficientNMS: ``num_detections`` (1,), ``detection_boxes`` (K, 4) x0, y0, x1, y1,
``detection_scores`` (K,), ``detection_classes`` (K,) class indices, zero after the first
``num_detections`` rows, plus ``detection_ious`` (K,), the predicted IoU, and
``detection_category_ids`` (K,), the model's category ids of the classes; K is the most
detections an image returns (``--max-detections``; the most confident are kept).

A bad request (not an image, an empty or too large one, inconsistent detections, a setting out
of range) gets an error response naming the problem, and the server keeps serving. PyTriton and
the pipeline are imported inside the functions, so the command line loads neither.
"""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import socket
import sysconfig
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from iounet.export.manifest import Manifest
    from iounet.runtime.pipeline import Detections, Pipeline

#: The model's name on the server.
MODEL_NAME = "iounet"
#: The most images one request may hold.
MAX_BATCH_SIZE = 8
#: The outputs, in the order of EfficientNMS, then the predicted IoU and the category ids.
OUTPUTS = (
    "num_detections",
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "detection_ious",
    "detection_category_ids",
)
#: The optional inputs that change the pipeline's settings for one request.
SETTINGS = ("nms_threshold", "refine_top")


class RequestError(ValueError):
    """A request the model cannot answer: the message names the problem."""


@dataclass(frozen=True)
class ServerAddress:
    """Where the server listens: one host, the HTTP and the gRPC port."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001

    @property
    def http_url(self) -> str:
        """HOST:PORT of the HTTP endpoint (what ``iounet client --url`` takes)."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """HOST:PORT of the gRPC endpoint."""
        return f"{self.host}:{self.grpc_port}"


class ModelServer:
    """The answers of the model ``iounet``: each image of a request through the one pipeline.

    `max_detections` is K, the rows of the fixed-size outputs; `max_pixels` the most pixels an
    image may have (``iounet.training.images.MAX_IMAGE_PIXELS`` when None).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        manifest: Manifest,
        max_detections: int,
        max_pixels: int | None = None,
    ) -> None:
        if max_detections < 1:
            raise ValueError(f"--max-detections must be positive, got {max_detections}")
        from iounet.training.images import MAX_IMAGE_PIXELS

        self.pipeline = pipeline
        self.manifest = manifest
        self.max_detections = max_detections
        self.max_pixels = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
        if self.max_pixels < 1:
            raise ValueError(f"the image pixel limit must be positive, got {self.max_pixels}")
        self.category_ids = np.asarray(manifest.category_ids, dtype=np.int32)

    def __call__(self, requests: Iterable[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """The answers of PyTriton's requests (each a mapping of input name -> batch)."""
        return [self.answer({name: request[name] for name in request}) for request in requests]

    def answer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs (``OUTPUTS``, each with the batch dimension first) of one request's
        inputs; RequestError naming the first problem."""
        sizes = {len(value) for value in inputs.values()}
        if len(sizes) != 1:
            raise RequestError(f"the inputs have different batch sizes: {sorted(sizes)}")
        (batch,) = sizes
        answers = []
        for index in range(batch):
            item = {name: value[index] for name, value in inputs.items()}
            try:
                answers.append(self.detect(item))
            except RequestError as error:
                where = f"image {index} of the request: " if batch > 1 else ""
                raise RequestError(f"{where}{error}") from None
        return {name: np.stack([answer[name] for answer in answers]) for name in OUTPUTS}

    def detect(self, item: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs of one image (no batch dimension)."""
        import torch

        pipeline = self._pipeline(item)
        raw = _raw_detections(item)
        try:
            if "image" in item and "pixels" in item:
                raise RequestError("give the image as encoded bytes or as pixels, not both")
            if "image" in item:
                found = self._run_encoded(pipeline, _encoded(item["image"]), raw)
            elif "pixels" in item:
                pixels = self._pixels(item["pixels"])
                found = pipeline(torch.from_numpy(pixels).permute(2, 0, 1), *raw)
            else:
                raise RequestError("no image: give the input image (bytes) or pixels (uint8)")
        except RequestError:
            raise
        except (ValueError, TypeError) as error:
            raise RequestError(str(error)) from None
        return self._outputs(found)

    def _pipeline(self, item: dict[str, np.ndarray]) -> Pipeline:
        """The server's pipeline, or one with the request's settings on the same backend."""
        from iounet.runtime.pipeline import Pipeline

        changes: dict[str, float | int] = {}
        if "nms_threshold" in item:
            threshold = _scalar(item["nms_threshold"], "nms_threshold")
            if not 0.0 <= threshold <= 1.0:
                raise RequestError(f"nms_threshold must lie in [0, 1], got {threshold:g}")
            changes["nms_threshold"] = threshold
        if "refine_top" in item:
            top = int(_scalar(item["refine_top"], "refine_top"))
            if top < 0:
                raise RequestError(f"refine_top must be 0 or more, got {top}")
            changes["refine_top"] = top
        if not changes:
            return self.pipeline
        config = dataclasses.replace(self.pipeline.config, **changes)
        return Pipeline.for_manifest(self.manifest, self.pipeline.backend, config)

    def _run_encoded(self, pipeline: Pipeline, data: bytes, raw: tuple) -> Detections:
        """An encoded image read as ``iounet infer`` reads files, raw boxes in its pixels."""
        from iounet.training.images import load_resized

        size = self.manifest.input
        image, scale, shown = load_resized(
            _RequestBytes(data), size.min_size, size.max_size, self.max_pixels
        )
        return pipeline.run_scaled(image, scale, shown, *raw)

    def _pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 H x W x 3 pixels, checked against the pixel limit."""
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise RequestError(
                f"pixels must be uint8 of shape (H, W, 3), got {pixels.dtype} {pixels.shape}"
            )
        height, width = pixels.shape[:2]
        if height * width == 0:
            raise RequestError(f"the image is empty: {height}x{width} pixels")
        if height * width > self.max_pixels:
            raise RequestError(
                f"the image is {width}x{height} = {width * height:,} pixels, above the limit of "
                f"{self.max_pixels:,} (--max-image-pixels)"
            )
        return np.ascontiguousarray(pixels)

    def _outputs(self, found: Detections) -> dict[str, np.ndarray]:
        """The fixed-size outputs of one image's detections (the most confident K)."""
        rows = self.max_detections
        count = min(len(found.boxes), rows)
        boxes = np.zeros((rows, 4), np.float32)
        scores = np.zeros(rows, np.float32)
        classes = np.zeros(rows, np.int32)
        ious = np.zeros(rows, np.float32)
        boxes[:count] = found.boxes[:count].detach().cpu().numpy()
        scores[:count] = found.scores[:count].detach().cpu().numpy()
        classes[:count] = found.labels[:count].detach().cpu().numpy()
        if found.ious is not None:
            ious[:count] = found.ious[:count].detach().cpu().numpy()
        category_ids = np.zeros(rows, np.int32)
        category_ids[:count] = self.category_ids[classes[:count]]
        return {
            "num_detections": np.asarray([count], np.int32),
            "detection_boxes": boxes,
            "detection_scores": scores,
            "detection_classes": classes,
            "detection_ious": ious,
            "detection_category_ids": category_ids,
        }


class _RequestBytes(io.BytesIO):
    """An encoded image of a request, named so in messages."""

    def __str__(self) -> str:
        return f"in the request ({len(self.getbuffer()):,} bytes)"

    def __repr__(self) -> str:
        return "<the request's image>"


def _encoded(value: np.ndarray) -> bytes:
    """The bytes of the input ``image`` (shape (1,), BYTES)."""
    if value.shape != (1,):
        raise RequestError(f"image must hold one encoded image (shape (1,)), got {value.shape}")
    data = value[0]
    if not isinstance(data, bytes):
        raise RequestError(f"image must be bytes (BYTES), got {type(data).__name__}")
    if not data:
        raise RequestError("the image is empty: 0 bytes")
    return data


def _scalar(value: np.ndarray, name: str) -> float:
    if value.size != 1:
        raise RequestError(f"{name} must hold one value, got shape {value.shape}")
    number = float(value.reshape(-1)[0])
    if not np.isfinite(number):
        raise RequestError(f"{name} must be finite, got {number}")
    return number


def _raw_detections(item: dict[str, np.ndarray]) -> tuple:
    """The request's raw detections as tensors (boxes, scores, labels), or () for none."""
    import torch

    given = [name for name in ("boxes", "scores", "labels") if name in item]
    if not given:
        return ()
    if len(given) != 3:
        raise RequestError(f"give boxes, scores and labels together (or none), got {given}")
    return tuple(torch.from_numpy(np.array(item[name])) for name in ("boxes", "scores", "labels"))


def model_tensors() -> tuple[list, list]:
    """PyTriton's descriptions of the inputs and the outputs of the model ``iounet`` (without
    the batch dimension)."""
    from pytriton.model_config import Tensor

    inputs = [
        Tensor(name="image", dtype=np.bytes_, shape=(1,), optional=True),
        Tensor(name="pixels", dtype=np.uint8, shape=(-1, -1, 3), optional=True),
        Tensor(name="boxes", dtype=np.float32, shape=(-1, 4), optional=True),
        Tensor(name="scores", dtype=np.float32, shape=(-1,), optional=True),
        Tensor(name="labels", dtype=np.int32, shape=(-1,), optional=True),
        Tensor(name="nms_threshold", dtype=np.float32, shape=(1,), optional=True),
        Tensor(name="refine_top", dtype=np.int32, shape=(1,), optional=True),
    ]
    outputs = [
        Tensor(name="num_detections", dtype=np.int32, shape=(1,)),
        Tensor(name="detection_boxes", dtype=np.float32, shape=(-1, 4)),
        Tensor(name="detection_scores", dtype=np.float32, shape=(-1,)),
        Tensor(name="detection_classes", dtype=np.int32, shape=(-1,)),
        Tensor(name="detection_ious", dtype=np.float32, shape=(-1,)),
        Tensor(name="detection_category_ids", dtype=np.int32, shape=(-1,)),
    ]
    return inputs, outputs


def check_ports_free(address: ServerAddress) -> None:
    """OSError naming the option when the HTTP or gRPC port cannot be bound on the host."""
    if address.http_port == address.grpc_port:
        raise ValueError(f"--http-port and --grpc-port are both {address.http_port}")
    for option, port in (("--http-port", address.http_port), ("--grpc-port", address.grpc_port)):
        if not 0 < port < 65536:
            raise ValueError(f"{option} must lie in 1..65535, got {port}")
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((address.host, port))
            except OSError as error:
                raise OSError(
                    f"cannot listen on {address.host}:{port} ({option}): {error.strerror} "
                    f"(another server there? choose another {option})"
                ) from error


def python_library_environment() -> None:
    """Put the folder of this Python's shared library (libpython, which the Python backend's
    stub loads) on LD_LIBRARY_PATH for the server process this one starts."""
    folder = sysconfig.get_config_var("LIBDIR")
    library = sysconfig.get_config_var("LDLIBRARY")
    if not folder or not library or not os.path.isfile(os.path.join(folder, library)):
        return
    paths = [path for path in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if path]
    if folder not in paths:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([folder, *paths])


def serve(
    server: ModelServer,
    address: ServerAddress,
    instances: int = 1,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve `server` as the model ``iounet`` at `address` until SIGTERM or Ctrl-C, then stop
    the Triton server cleanly. `instances` model instances share the pipeline (concurrent
    requests); `on_ready` is called once the model is ready."""
    check_ports_free(address)
    python_library_environment()
    from pytriton.model_config import ModelConfig
    from pytriton.triton import Triton, TritonConfig

    config = TritonConfig(
        http_address=address.host,
        http_port=address.http_port,
        grpc_address=address.host,
        grpc_port=address.grpc_port,
        allow_metrics=False,
    )
    inputs, outputs = model_tensors()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with Triton(config=config) as triton:
            triton.bind(
                MODEL_NAME,
                [server] * instances,
                inputs=inputs,
                outputs=outputs,
                config=ModelConfig(batching=True, max_batch_size=MAX_BATCH_SIZE, batcher=None),
                strict=True,
            )
            if on_ready is not None:
                on_ready()
            triton.serve()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: PyTriton then stops the server and its model processes."""
    raise KeyboardInterrupt
