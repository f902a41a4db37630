"""A fake ``tensorrt`` module for the tests without TensorRT: it records what the engine builder is
asked to do (the fake parser reads graph files whose content is a JSON list of inputs) and
deserializes the engines it built into objects that know their inputs (no execution)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path


class FakeTensorRT(types.ModuleType):
    """Just enough of the tensorrt module for build_engines and for loading the engines it built
    (``Runtime``); records what it is asked to do."""

    __version__ = "10.99.1"

    def __init__(self) -> None:
        super().__init__("tensorrt")
        self.builds: list[dict] = []
        self.networks: dict[bytes, list] = {}  # engine bytes -> the inputs it was built from
        self.cache_given: list[bytes] = []
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, severity: int) -> None:
                self.severity = severity

        class Network:
            def __init__(self, flags: int) -> None:
                self.flags = flags
                self.inputs: list[types.SimpleNamespace] = []

            @property
            def num_inputs(self) -> int:
                return len(self.inputs)

            def get_input(self, index: int) -> types.SimpleNamespace:
                return self.inputs[index]

        class OnnxParser:
            def __init__(self, network: Network, logger: Logger) -> None:
                self.network, self.errors = network, []

            def parse_from_file(self, path: str) -> bool:
                try:
                    inputs = json.loads(Path(path).read_text())
                except ValueError:
                    self.errors = ["In node 3 (importPrRoIPool): UNSUPPORTED_NODE"]
                    return False
                self.network.file = Path(path).name
                self.network.inputs = [types.SimpleNamespace(**i) for i in inputs]
                return True

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
                fake.networks[data] = network.inputs
                return data

        class DataType:
            def __init__(self, name: str) -> None:
                self.name = name

        class TensorIOMode:
            INPUT, OUTPUT = "input", "output"

        class Engine:
            """A deserialized engine: its inputs (float32); no outputs, no execution."""

            def __init__(self, inputs: list) -> None:
                self.names = [i.name for i in inputs]

            @property
            def num_io_tensors(self) -> int:
                return len(self.names)

            def get_tensor_name(self, index: int) -> str:
                return self.names[index]

            def get_tensor_dtype(self, name: str) -> DataType:
                return DataType("FLOAT")

            def get_tensor_mode(self, name: str) -> str:
                return TensorIOMode.INPUT

            def create_execution_context(self) -> object:
                return types.SimpleNamespace()

        class Runtime:
            def __init__(self, logger: Logger) -> None:
                pass

            def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
                inputs = fake.networks.get(bytes(data))
                return None if inputs is None else Engine(inputs)

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.Runtime, self.TensorIOMode = Runtime, TensorIOMode
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
