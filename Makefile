# biomx: two commands. `make demo` sets everything up and runs the demo; `make test` sets up and tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; GPU users install their own torch (>=2.4) before `pip install -e .`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test lint bench clean browser node postgres
# System packages the tests drive (Debian's; nothing is downloaded from elsewhere): a headless
# Chromium for the served web page, Node.js for the clients in clients/node, PostgreSQL for the
# tune study shared by workers (tests/test_tune_postgres.py starts a throwaway server). Installed
# only when missing; apt needs root, so sudo is used only when not root and sudo exists.
SUDO := $(shell if [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null; then echo sudo; fi)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
NODE_CLIENT := clients/node

$(BIN)/biomx: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/biomx

setup: $(BIN)/biomx

demo: setup
	$(BIN)/biomx demo

browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(APT_INSTALL) chromium chromium-driver >/dev/null; }

# Debian's postgresql puts initdb and pg_ctl in /usr/lib/postgresql/<version>/bin (not on PATH).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(APT_INSTALL) postgresql >/dev/null; }

# npm separately: where nodejs comes from NodeSource it bundles npm, and Debian's npm conflicts with it.
node:
	@command -v node >/dev/null || { $(SUDO) apt-get update -qq && $(APT_INSTALL) nodejs >/dev/null; }
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && $(APT_INSTALL) npm >/dev/null; }

# npm ci again when the lock file is newer than the last install (.npmrc: no install scripts).
$(NODE_CLIENT)/node_modules/.installed: $(NODE_CLIENT)/package-lock.json | node
	npm ci --prefix $(NODE_CLIENT) --no-audit --no-fund --silent
	touch $@

test: setup browser postgres $(NODE_CLIENT)/node_modules/.installed
	$(BIN)/python -m pytest -q
	$(BIN)/ruff check src tests benchmarks

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache $(NODE_CLIENT)/node_modules
