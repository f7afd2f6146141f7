# Trainyard: `make run` starts the service on the embedded default and shows it training;
# `make test` runs lint, types and the whole test suite. Each target creates/uses .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned; on a machine without a local CPU wheel, point pip at a CPU index, e.g.
#   make run TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=

.PHONY: run test lint typecheck bench soak clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIP_ARGS) "torch==2.13.0"
	$(BIN)/pip install -q -e ".[api,worker]"
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

run: $(BIN)/.installed
	$(BIN)/trainyard run --demo

lint: $(BIN)/.installed-dev
	$(BIN)/ruff check app worker trainyard tests bench migrations
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed-dev
	bash bench/run_all.sh

soak: $(BIN)/.installed-dev
	TRAINYARD_SOAK=full $(BIN)/python -m pytest -q tests/reliability/test_load.py

clean:
	rm -rf $(VENV) .trainyard .mypy_cache .ruff_cache
