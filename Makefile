# The README's commands. Everything they need is set up here, on a fresh machine too.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: test lint bench clean

test: $(INSTALLED)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -m "not slow"

lint: $(INSTALLED)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(INSTALLED)
	$(PY) benchmarks/prroi_pool_bench.py --boxes 512 1000

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstalled when the package's requirements change.
$(INSTALLED): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --editable '.[test]'
	touch $@

clean:
	rm -rf build
