"""`iounet triton-repo`: a Triton model repository for a GPU host from an exported model folder
and its TensorRT engines (``iounet build-engine``: ``ENGINES/<precision>/<role>.engine``).

The repository holds one ``tensorrt_plan`` model per graph role (``iounet_<role>/1/model.plan``, its
inputs and outputs from the manifest) and the Python-backend model ``iounet``
(``iounet/1/model.py``, ``iounet.runtime.serving_triton_model``, and the model's
``manifest.json``), which runs the pipeline through BLS calls to them. Every ``config.pbtxt``
is parsed with Triton's ``ModelConfig`` message (tritonclient's ``model_config_pb2``) before the
repository is written.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from iounet.export.manifest import Manifest
from iounet.export.manifest_format import TensorSpec
from iounet.runtime.serving import MAX_BATCH_SIZE, MODEL_NAME
from iounet.runtime.serving_triton_model import ENGINE_PREFIX

#: Triton's data types of the manifest's element types.
TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
}
#: The model ``iounet``'s inputs and outputs: (name, Triton type, dims without the batch, optional).
PIPELINE_INPUTS = (
    ("image", "TYPE_STRING", (1,), True),
    ("pixels", "TYPE_UINT8", (-1, -1, 3), True),
    ("boxes", "TYPE_FP32", (-1, 4), True),
    ("scores", "TYPE_FP32", (-1,), True),
    ("labels", "TYPE_INT32", (-1,), True),
    ("nms_threshold", "TYPE_FP32", (1,), True),
    ("refine_top", "TYPE_INT32", (1,), True),
)
PIPELINE_OUTPUTS = (
    ("num_detections", "TYPE_INT32", (1,)),
    ("detection_boxes", "TYPE_FP32", (-1, 4)),
    ("detection_scores", "TYPE_FP32", (-1,)),
    ("detection_classes", "TYPE_INT32", (-1,)),
    ("detection_ious", "TYPE_FP32", (-1,)),
    ("detection_category_ids", "TYPE_INT32", (-1,)),
)


def _dims(shape: tuple[int | str, ...]) -> str:
    return ", ".join(str(size) if isinstance(size, int) else "-1" for size in shape)


def _tensor(name: str, kind: str, dims: str, optional: bool = False) -> str:
    extra = ", optional: true" if optional else ""
    return f"  {{ name: {name!r}, data_type: {kind}, dims: [ {dims} ]{extra} }}".replace("'", '"')


def _tensors(specs: tuple[TensorSpec, ...] | list[TensorSpec]) -> str:
    return ",\n".join(
        _tensor(spec.name, TRITON_TYPES[spec.dtype], _dims(tuple(spec.shape))) for spec in specs
    )


def engine_config(role: str, manifest: Manifest, precision: str) -> str:
    """The ``config.pbtxt`` of the ``tensorrt_plan`` model of graph `role`."""
    graph = manifest.graph(role, precision)
    return (
        f'name: "{ENGINE_PREFIX}{role}"\nplatform: "tensorrt_plan"\nmax_batch_size: 0\n'
        f"input [\n{_tensors(graph.inputs)}\n]\noutput [\n{_tensors(graph.outputs)}\n]\n"
        "instance_group [ { kind: KIND_GPU, count: 1 } ]\n"
    )


def pipeline_config(max_detections: int) -> str:
    """The ``config.pbtxt`` of the Python-backend model ``iounet``."""
    inputs = ",\n".join(
        _tensor(name, kind, _dims(dims), optional) for name, kind, dims, optional in PIPELINE_INPUTS
    )
    outputs = ",\n".join(_tensor(name, kind, _dims(dims)) for name, kind, dims in PIPELINE_OUTPUTS)
    return (
        f'name: "{MODEL_NAME}"\nbackend: "python"\nmax_batch_size: {MAX_BATCH_SIZE}\n'
        f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
        "instance_group [ { kind: KIND_CPU, count: 1 } ]\n"
        f'parameters: {{ key: "max_detections", value: {{ string_value: "{max_detections}" }} }}\n'
    )


def validate_config(text: str, where: str) -> None:
    """ValueError naming `where` unless `text` parses as Triton's ``ModelConfig``."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as error:
        raise ValueError(f"{where}: not a valid Triton model config: {error}") from error


def engine_files(manifest: Manifest, engines: Path, precision: str) -> dict[str, Path]:
    """The engine of every graph role; FileNotFoundError naming the first missing."""
    found = {}
    for role in manifest.roles():
        path = engines / precision / f"{role}.engine"
        if not path.is_file():
            raise FileNotFoundError(
                f"no {precision} engine for the {role} graph: {path} (iounet build-engine)"
            )
        found[role] = path
    return found


def write_repository(
    manifest: Manifest,
    engines: dict[str, Path],
    repository: str | os.PathLike,
    max_detections: int,
    precision: str = "fp32",
) -> None:
    """Write the model repository into the (new, empty) folder `repository`."""
    from iounet.runtime import serving_triton_model

    folder = Path(repository)
    configs = {ENGINE_PREFIX + role: engine_config(role, manifest, precision) for role in engines}
    configs[MODEL_NAME] = pipeline_config(max_detections)
    for name, text in configs.items():
        validate_config(text, f"{name}/config.pbtxt")
    for name, text in configs.items():
        (folder / name / "1").mkdir(parents=True)
        (folder / name / "config.pbtxt").write_text(text)
    for role, path in engines.items():
        shutil.copyfile(path, folder / (ENGINE_PREFIX + role) / "1" / "model.plan")
    version = folder / MODEL_NAME / "1"
    shutil.copyfile(serving_triton_model.__file__, version / "model.py")
    shutil.copyfile(manifest.folder / "manifest.json", version / "manifest.json")
