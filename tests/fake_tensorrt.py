"""A fake ``tensorrt`` module for the tests without TensorRT: it records what the engine builder is
asked to do and deserializes the engines it built.

The fake parser reads two kinds of graph files: a JSON list of inputs (an engine of it knows its
inputs and does not run), or a real ONNX file, whose engine runs the graph with ONNX Runtime (the
iounet ops included) the way TensorRT runs an engine: it reads each input from the address set
for it (host memory: the tests pass CPU tensors), refuses shapes outside the optimization profile
the engine was built with, and writes each output to its address, or, for an output whose shape
depends on the data (a graph with NonMaxSuppression or NonZero), to the memory the output
allocator set for it returns, telling the allocator the shape. Every execution is recorded.
"""

from __future__ import annotations

import ctypes
import json
import math
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

#: ONNX element types -> TensorRT data type names.
ONNX_TYPES = {1: "FLOAT", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "HALF"}
#: TensorRT data type names -> numpy dtypes.
NUMPY_TYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT32": np.int32,
    "INT64": np.int64,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}
#: ONNX ops whose output sizes depend on the data: the dynamic dimensions of the outputs of a
#: graph with one are data-dependent (-1 until the engine has run, as in TensorRT).
DATA_DEPENDENT_OPS = ("NonMaxSuppression", "NonZero")
#: The alignment the fake asks output allocators for.
ALIGNMENT = 256


def _tensors(values: Any, initializers: set[str]) -> list[dict[str, Any]]:
    """Name, shape (-1 for a dynamic dimension) and TensorRT type name of ONNX graph values."""
    return [
        {
            "name": value.name,
            "shape": [
                d.dim_value if d.HasField("dim_value") else -1
                for d in value.type.tensor_type.shape.dim
            ],
            "dtype": ONNX_TYPES[value.type.tensor_type.elem_type],
        }
        for value in values
        if value.name not in initializers
    ]


def read_memory(address: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A copy of the array of `shape` and TensorRT type `dtype` at a host address."""
    kind = np.dtype(NUMPY_TYPES[dtype])
    count = math.prod(shape)
    if count == 0:
        return np.zeros(shape, kind)
    if not address:
        raise ValueError("no address set")
    buffer = (ctypes.c_char * (count * kind.itemsize)).from_address(address)
    return np.frombuffer(buffer, kind, count).reshape(shape).copy()


def write_memory(address: int, array: np.ndarray) -> None:
    """Copy `array` to a host address."""
    array = np.ascontiguousarray(array)
    if array.nbytes:
        ctypes.memmove(address, array.ctypes.data, array.nbytes)


class FakeTensorRT(types.ModuleType):
    """Just enough of the tensorrt module for build_engines and for loading the engines it built
    (``Runtime``); records what it is asked to do."""

    __version__ = "10.99.1"

    def __init__(self) -> None:
        super().__init__("tensorrt")
        self.builds: list[dict] = []
        self.networks: dict[bytes, Any] = {}  # engine bytes -> (network, profile) built from
        self.cache_given: list[bytes] = []
        #: Per engine run: the graph file, the stream, the input shapes, the output shapes and
        #: the outputs that went through an output allocator.
        self.executions: list[dict[str, Any]] = []
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, severity: int) -> None:
                self.severity = severity

        class Network:
            def __init__(self, flags: int) -> None:
                self.flags = flags
                self.inputs: list[types.SimpleNamespace] = []
                self.outputs: list[types.SimpleNamespace] = []
                self.onnx: str | None = None  # a real ONNX file: the engine runs it
                self.data_dependent = False

            @property
            def num_inputs(self) -> int:
                return len(self.inputs)

            def get_input(self, index: int) -> types.SimpleNamespace:
                return self.inputs[index]

        class OnnxParser:
            def __init__(self, network: Network, logger: Logger) -> None:
                self.network, self.errors = network, []

            def parse_from_file(self, path: str) -> bool:
                network = self.network
                try:
                    inputs = json.loads(Path(path).read_text())
                except ValueError:
                    inputs = self._parse_onnx(path)
                    if inputs is None:
                        self.errors = ["In node 3 (importPrRoIPool): UNSUPPORTED_NODE"]
                        return False
                network.file = Path(path).name
                network.inputs = [types.SimpleNamespace(**i) for i in inputs]
                return True

            def _parse_onnx(self, path: str) -> list[dict[str, Any]] | None:
                import onnx

                try:
                    model = onnx.load(path)
                except Exception:  # not ONNX either
                    return None
                graph = model.graph
                if not graph.output:
                    return None
                initializers = {t.name for t in graph.initializer}
                self.network.onnx = path
                self.network.outputs = [
                    types.SimpleNamespace(**o) for o in _tensors(graph.output, set())
                ]
                self.network.data_dependent = any(
                    n.op_type in DATA_DEPENDENT_OPS for n in graph.node
                )
                return _tensors(graph.input, initializers)

            @property
            def num_errors(self) -> int:
                return len(self.errors)

            def get_error(self, index: int) -> str:
                return self.errors[index]

        class Profile(dict):
            def set_shape(self, name: str, low: list, opt: list, high: list) -> None:
                self[name] = (list(low), list(opt), list(high))

        class Cache:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def serialize(self) -> bytes:
                return self.data + b"+"

        class Config:
            def __init__(self) -> None:
                self.workspace, self.cache, self.profiles, self.cleared = None, None, [], []

            def clear_flag(self, flag: str) -> None:
                self.cleared.append(flag)

            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                assert pool == "workspace"
                self.workspace = size

            def create_timing_cache(self, data: bytes) -> Cache:
                fake.cache_given.append(data)
                return Cache(data)

            def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
                self.cache = cache
                return True

            def add_optimization_profile(self, profile: Profile) -> None:
                self.profiles.append(dict(profile))

        class Builder:
            def __init__(self, logger: Logger) -> None:
                pass

            def create_network(self, flags: int) -> Network:
                return Network(flags)

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes:
                fake.builds.append(
                    {
                        "file": network.file,
                        "flags": network.flags,
                        "profiles": config.profiles,
                        "workspace": config.workspace,
                        "cache": config.cache,
                        "cleared": config.cleared,
                    }
                )
                data = f"engine {len(fake.builds)} of {network.file}".encode()
                fake.networks[data] = (network, config.profiles[0] if config.profiles else {})
                return data

        class DataType:
            def __init__(self, name: str) -> None:
                self.name = name

        class TensorIOMode:
            INPUT, OUTPUT = "input", "output"

        class Engine:
            """A deserialized engine: its inputs (and outputs, of an ONNX file, which it runs)."""

            def __init__(self, network: Network, profile: dict) -> None:
                self.network, self.profile = network, profile
                self.tensors = {t.name: t for t in [*network.inputs, *network.outputs]}
                self.input_names = [t.name for t in network.inputs]
                self.names = [*self.input_names, *(t.name for t in network.outputs)]
                self.session: Any = None

            @property
            def num_io_tensors(self) -> int:
                return len(self.names)

            def get_tensor_name(self, index: int) -> str:
                return self.names[index]

            def get_tensor_dtype(self, name: str) -> DataType:
                return DataType(getattr(self.tensors[name], "dtype", "FLOAT"))

            def get_tensor_mode(self, name: str) -> str:
                inputs = self.input_names
                return TensorIOMode.INPUT if name in inputs else TensorIOMode.OUTPUT

            def create_execution_context(self) -> Context:
                return Context(self)

            def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                """The graph's outputs for `feeds` (ONNX Runtime, the iounet ops included)."""
                if self.network.onnx is None:
                    raise AssertionError(f"the fake engine of {self.network.file} does not run")
                if self.session is None:
                    from iounet.plugins import onnxruntime_session

                    self.session = onnxruntime_session(self.network.onnx)
                names = [t.name for t in self.network.outputs]
                return dict(zip(names, self.session.run(names, feeds), strict=True))

        class Context:
            """An execution context: input shapes, tensor addresses, output allocators."""

            def __init__(self, engine: Engine) -> None:
                self.engine = engine
                self.shapes: dict[str, tuple[int, ...]] = {}
                self.addresses: dict[str, int] = {}
                self.allocators: dict[str, Any] = {}

            def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
                declared = self.engine.tensors[name].shape
                shape = tuple(int(d) for d in shape)
                if name not in self.engine.input_names or len(shape) != len(declared):
                    return False
                if any(d >= 0 and d != s for d, s in zip(declared, shape, strict=True)):
                    return False
                if name in self.engine.profile:
                    low, _, high = self.engine.profile[name]
                    if not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high, strict=True)):
                        return False
                self.shapes[name] = shape
                return True

            def set_tensor_address(self, name: str, address: int) -> bool:
                self.addresses[name] = int(address)
                return True

            def set_output_allocator(self, name: str, allocator: Any) -> bool:
                if not isinstance(allocator, IOutputAllocator):
                    raise TypeError("an output allocator must be a tensorrt.IOutputAllocator")
                self.allocators[name] = allocator
                return True

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                if name in self.engine.input_names:
                    return self.shapes.get(name, tuple(self.engine.tensors[name].shape))
                declared = self.engine.tensors[name].shape
                if self.engine.network.data_dependent and any(d < 0 for d in declared):
                    return tuple(declared)  # known once the engine has run
                if all(d >= 0 for d in declared):
                    return tuple(declared)
                return tuple(self.engine.run(self._feeds())[name].shape)

            def _feeds(self) -> dict[str, np.ndarray]:
                feeds = {}
                for name in self.engine.input_names:
                    if name not in self.shapes:
                        raise ValueError(f"the input shape of {name} is not set")
                    dtype = self.engine.tensors[name].dtype
                    feeds[name] = read_memory(self.addresses.get(name, 0), self.shapes[name], dtype)
                return feeds

            def execute_async_v3(self, stream: int) -> bool:
                outputs = self.engine.run(self._feeds())
                allocated = []
                for tensor in self.engine.network.outputs:
                    name, value = tensor.name, outputs[tensor.name]
                    value = value.astype(NUMPY_TYPES[tensor.dtype], copy=False)
                    allocator = self.allocators.get(name)
                    if allocator is not None:
                        current = self.addresses.get(name, 0)
                        address = allocator.reallocate_output_async(
                            name, current, value.nbytes, ALIGNMENT, stream
                        )
                        if not address:
                            return False
                        allocator.notify_shape(name, Dims(value.shape))
                        allocated.append(name)
                    elif self.engine.network.data_dependent and -1 in tensor.shape:
                        return False  # TensorRT needs an allocator for a data-dependent shape
                    else:
                        address = self.addresses.get(name, 0)
                        if value.nbytes and not address:
                            return False
                    write_memory(address, value)
                fake.executions.append(
                    {
                        "file": self.engine.network.file,
                        "stream": stream,
                        "inputs": dict(self.shapes),
                        "outputs": {name: value.shape for name, value in outputs.items()},
                        "allocated": allocated,
                    }
                )
                return True

        class Dims(tuple):
            """tensorrt.Dims: the shape TensorRT hands to ``notify_shape``."""

        class IOutputAllocator:
            def __init__(self) -> None:
                pass

        class Runtime:
            def __init__(self, logger: Logger) -> None:
                pass

            def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
                built = fake.networks.get(bytes(data))
                return None if built is None else Engine(*built)

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.Runtime, self.TensorIOMode = Runtime, TensorIOMode
        self.IOutputAllocator, self.Dims = IOutputAllocator, Dims
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=3)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.BuilderFlag = types.SimpleNamespace(TF32="tf32")


def install_fake_tensorrt(monkeypatch) -> FakeTensorRT:
    """Put a FakeTensorRT in sys.modules and a fake plugin library (version 0.1.0) where the
    engine builder and the TensorRT runtime load it."""
    from iounet.export import engine
    from iounet.runtime import trt_backend

    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    for module in (engine, trt_backend):
        monkeypatch.setattr(module, "load_plugin_library", lambda: Path("/fake/libplugin.so"))
        monkeypatch.setattr(module, "plugin_library_version", lambda path: "0.1.0")
    return fake
