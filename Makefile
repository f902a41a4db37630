# The README's commands. Everything they need is set up here, on a fresh machine too.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
BUILD := build
# GPU architectures of the CUDA kernels (nvcc 13: 75 and newer; see README for 61/70).
CUDA_ARCHS ?= 75;80;86;89;90
# A TensorRT folder (include/, lib/) builds the TensorRT plugins too.
TENSORRT_ROOT ?=
JOBS ?= 2

CMAKE := $(shell command -v cmake 2>/dev/null)
ifeq ($(CMAKE),)
CMAKE := $(VENV)/bin/cmake
endif

.PHONY: test demo reproduce native coverage lint bench gpu-check clean

test: $(INSTALLED) native coverage
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	cd $(BUILD) && ctest --output-on-failure
	$(PY) -m pytest -m "not slow"

# The whole stack on the synthetic benchmark (trained models are reused from demo-work/).
SEED ?= 0
demo: $(INSTALLED) native
	$(PY) -m iounet.demo --work demo-work --out demo-output --seed $(SEED)

# Table 3 over three seeds at the demo's budget (not CI; about 25 min a seed on 2 cores; shares
# demo-work/ with make demo).
SEEDS ?= 0 1 2
reproduce: $(INSTALLED) native
	$(PY) -m iounet.reproduce --work demo-work --out reproduce-output --seeds $(SEEDS)

# CPU kernels (+ their sanitizer build), CUDA kernels when nvcc is found, TensorRT plugins when
# TENSORRT_ROOT is given. The libraries Python loads are copied into plugins/lib.
native: $(CMAKE)
	$(CMAKE) -S . -B $(BUILD) -DCMAKE_CUDA_ARCHITECTURES="$(CUDA_ARCHS)" -DTENSORRT_ROOT="$(TENSORRT_ROOT)"
	$(CMAKE) --build $(BUILD) -j$(JOBS)

# Line coverage of the kernel headers (prroi_pool_math.h, prroi_pool_kernel_bodies.h) by the host
# tests, printed as one line; fails below 100% (a few seconds; cmake/kernel_coverage.cmake).
coverage: native
	$(CMAKE) --build $(BUILD) --target coverage

# On a GPU machine (PyTorch with CUDA, nvcc, CMake; no TensorRT, no registry): builds for its
# GPU, runs the gpu tests (a skip fails), compute-sanitizer and the latency table. No .venv.
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py

lint: $(INSTALLED)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(INSTALLED) native
	$(PY) benchmarks/prroi_pool_bench.py --boxes 100 512 1000
	$(PY) benchmarks/nms_bench.py

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstalled when the package's requirements change.
$(INSTALLED): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --editable '.[test]'
	touch $@

$(VENV)/bin/cmake: | $(PY)
	$(PY) -m pip install --quiet 'cmake>=3.18'

clean:
	rm -rf $(BUILD) build-gpu plugins/lib
