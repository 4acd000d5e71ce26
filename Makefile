# biomx: two commands. `make demo` sets everything up and runs the demo; `make test` sets up and tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; GPU users install their own torch (>=2.4) before `pip install -e .`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

$(BIN)/biomx: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/biomx

setup: $(BIN)/biomx

demo: setup
	$(BIN)/biomx demo

test: setup
	$(BIN)/python -m pytest -q
	$(BIN)/ruff check src tests benchmarks

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
