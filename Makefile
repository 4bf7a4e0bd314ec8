# `make run`: set up .venv and run the embedded default job. `make test`: set up and run the tests.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup run test lint clean s3-server

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

s3-server: setup
	$(BIN)/python -m tests.s3local

clean:
	rm -rf $(VENV) rnnfarm-data rnnfarm-s3 .pytest_cache
