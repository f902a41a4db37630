# The README's commands. Everything they need is set up here, on a fresh machine too.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
BUILD := build
# GPU architectures of the CUDA kernels (nvcc 13: 75 and newer; make cuda12 builds 61/70).
CUDA_ARCHS ?= 75;80;86;89;90
# make cuda12: a CUDA 12 toolkit's nvcc (the newest /usr/local/cuda-12.*) and its architectures.
CUDA12_NVCC ?= $(lastword $(sort $(wildcard /usr/local/cuda-12.*/bin/nvcc)))
CUDA12_ARCHS ?= 61;70;75;80;86;89;90
# A TensorRT folder (include/, lib/) builds the TensorRT plugins too.
TENSORRT_ROOT ?=
JOBS ?= 2

CMAKE := $(shell command -v cmake 2>/dev/null)
ifeq ($(CMAKE),)
CMAKE := $(VENV)/bin/cmake
endif

.PHONY: test demo reproduce native cuda12 cuda-emulation coverage lint bench gpu-check clean

test: $(INSTALLED) native coverage cuda-emulation
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	cd $(BUILD) && ctest -LE cuda-emulation --output-on-failure
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

# The CUDA kernels for TITAN X (Pascal), TITAN Xp (sm_61) and TITAN V (sm_70), which CUDA 13
# dropped: NVIDIA's CUDA 12 toolkit (PyPI has no CUDA 12 nvcc) builds them into build-cuda12/, and
# the libraries Python loads are copied into plugins/lib as by make native.
cuda12: $(CMAKE)
	@test -x "$(CUDA12_NVCC)" || { echo "make cuda12: no CUDA 12 nvcc: install NVIDIA's CUDA 12.x toolkit or pass CUDA12_NVCC=<its bin/nvcc>" >&2; exit 2; }
	$(CMAKE) -S . -B build-cuda12 -DCMAKE_CUDA_COMPILER="$(CUDA12_NVCC)" -DCMAKE_CUDA_ARCHITECTURES="$(CUDA12_ARCHS)" -DIOUNET_SANITIZE=OFF -DIOUNET_COVERAGE=OFF
	$(CMAKE) --build build-cuda12 -j$(JOBS) --target iounet_python_libraries

# The CUDA kernels as launched, on the CPU: the unchanged kernel sources built against a host
# emulation of the CUDA execution model (plugins/cuda_host) and run over the edge-case table under
# ThreadSanitizer and under AddressSanitizer + UBSan, with planted bugs that must be caught (about
# 2 minutes on 2 cores). Also builds build/lib/libiounet_prroi_cuda_host.so for the pytest binding test.
cuda-emulation: native
	$(CMAKE) --build $(BUILD) --target cuda_emulation -j$(JOBS)
	cd $(BUILD) && ctest -L cuda-emulation -j$(JOBS) --output-on-failure

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
	$(PY) -m pip install --quiet --editable '.[test,serve]'
	touch $@

$(VENV)/bin/cmake: | $(PY)
	$(PY) -m pip install --quiet 'cmake>=3.18'

clean:
	rm -rf $(BUILD) build-gpu build-cuda12 plugins/lib
