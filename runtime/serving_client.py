"""A client of `iounet serve` (tritonclient): image files or pixels in, detections out, and the
files' COCO results as `iounet infer` writes them."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

import numpy as np

from iounet.runtime.detections import CocoResult, ImageId
from iounet.runtime.serving import MODEL_NAME, OUTPUTS


class ServingError(RuntimeError):
    """An error response of the server: its last line, the problem."""


class ServingClient:
    """A connection to the model ``iounet`` at `url` (HOST:PORT) over HTTP or gRPC."""

    def __init__(self, url: str, protocol: str = "http", timeout: float = 300.0) -> None:
        if protocol == "http":
            import tritonclient.http as triton
        elif protocol == "grpc":
            import tritonclient.grpc as triton
        else:
            raise ValueError(f"protocol must be http or grpc, got {protocol!r}")
        self.url = url
        self._triton = triton
        if protocol == "http":
            self._client = triton.InferenceServerClient(
                url, connection_timeout=timeout, network_timeout=timeout
            )
        else:
            self._client = triton.InferenceServerClient(url)

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (a server stops at once only when no connection is open)."""
        self._client.close()

    def wait_ready(self, timeout: float) -> None:
        """Return once the model is ready; ConnectionError after `timeout` seconds."""
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._client.is_model_ready(MODEL_NAME):
                    return
            except (InferenceServerException, OSError):
                pass
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"no model '{MODEL_NAME}' ready at {self.url} after {timeout:g} s "
                    "(is `iounet serve` running there?)"
                )
            time.sleep(0.2)

    def detect(
        self,
        image: bytes | np.ndarray,
        detections: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        nms_threshold: float | None = None,
        refine_top: int | None = None,
    ) -> dict[str, np.ndarray]:
        """The outputs of one image (encoded bytes, or uint8 H x W x 3 pixels) with their
        batch dimension removed; ``num_detections`` is an int. `detections` are raw
        (boxes, scores, labels) in the image's pixels, at least one (PyTriton carries no
        zero-size tensor). ValueError for an empty image or no detections, ServingError for an
        error response."""
        inputs: dict[str, np.ndarray] = {}
        if isinstance(image, bytes):
            if not image:
                raise ValueError("the image is empty: 0 bytes")
            inputs["image"] = np.array([[image]], dtype=np.object_)
        else:
            pixels = np.asarray(image)
            if pixels.size == 0:
                raise ValueError(f"the image is empty: shape {pixels.shape}")
            inputs["pixels"] = pixels[None]
        if detections is not None:
            boxes, scores, labels = detections
            if not len(boxes):
                raise ValueError("no raw detections: a request carries at least one")
            inputs["boxes"] = np.asarray(boxes, np.float32)[None]
            inputs["scores"] = np.asarray(scores, np.float32)[None]
            inputs["labels"] = np.asarray(labels, np.int32)[None]
        if nms_threshold is not None:
            inputs["nms_threshold"] = np.array([[nms_threshold]], np.float32)
        if refine_top is not None:
            inputs["refine_top"] = np.array([[refine_top]], np.int32)
        answer = self.infer(inputs)
        found = {name: value[0] for name, value in answer.items()}
        found["num_detections"] = int(found["num_detections"][0])
        return found

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs for `inputs` (name -> array with the batch dimension, sent with
        the dtype given: the server's checks see what was sent). ServingError for an error
        response."""
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        sent = []
        for name, value in inputs.items():
            tensor = self._triton.InferInput(
                name, list(value.shape), np_to_triton_dtype(value.dtype)
            )
            tensor.set_data_from_numpy(value)
            sent.append(tensor)
        wanted = [self._triton.InferRequestedOutput(name) for name in OUTPUTS]
        try:
            result = self._client.infer(MODEL_NAME, sent, outputs=wanted)
        except InferenceServerException as error:
            raise ServingError(_problem(error)) from error
        return {name: result.as_numpy(name) for name in OUTPUTS}

    def coco_results(self, paths: Iterable[Path]) -> Iterator[list[CocoResult]]:
        """Per image file, its COCO results as `iounet infer` writes them (file names as image
        ids). ValueError naming the file for an error response."""
        for path in paths:
            try:
                found = self.detect(Path(path).read_bytes())
            except ServingError as error:
                raise ValueError(f"{path}: {error}") from error
            yield coco_results(Path(path).name, found)


def coco_results(image_id: ImageId, found: dict[str, np.ndarray]) -> list[CocoResult]:
    """One image's outputs (``ServingClient.detect``) as COCO results (``[x, y, w, h]``)."""
    count = found["num_detections"]
    results = []
    for box, score, category, iou in zip(
        found["detection_boxes"][:count].tolist(),
        found["detection_scores"][:count].tolist(),
        found["detection_category_ids"][:count].tolist(),
        found["detection_ious"][:count].tolist(),
        strict=True,
    ):
        result: CocoResult = {
            "image_id": image_id,
            "category_id": category,
            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
            "score": score,
            "iou": iou,
        }
        results.append(result)
    return results


def _problem(error: Exception) -> str:
    """The problem an error response names: the message of the model's ``RequestError`` (the
    response carries the server's traceback), else the last line naming an error, else the
    response as it is (Triton's own checks: one line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for marker in ("RequestError: ", "Error: ", "Exception: "):
        found = [line for line in lines if marker in line]
        if found:
            return found[-1].split(marker, 1)[1]
    return str(error).strip()
