# `make run`: set up .venv and run the embedded default job. `make test`: set up and run the tests.
# `make gpu-carry`: gpu-carry/, what the GPU check machine lacks (bench/gpu_carry.py), checked offline;
# PYTHON_VERSION=3.11 builds it for this machine's Python instead, CARRY_PYTHON names the Python that builds it
# (default: .venv's, set up first).
PYTHON ?= python3
PYTHON_VERSION ?= 3.12
CARRY_PYTHON ?=
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup run test lint clean s3-server gpu-carry

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: setup
	$(BIN)/rnnfarm run deploy/local.yaml

test: setup
	tests/setup/debian.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

gpu-carry: $(if $(CARRY_PYTHON),,setup)
	$(or $(CARRY_PYTHON),$(BIN)/python) bench/gpu_carry.py --python-version $(PYTHON_VERSION) --out gpu-carry

s3-server: setup
	$(BIN)/python -m tests.s3local

clean:
	rm -rf $(VENV) rnnfarm-data rnnfarm-s3 .pytest_cache gpu-carry
