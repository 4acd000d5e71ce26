#!/usr/bin/env bash
# A separate virtual environment with chemprop 2 (the peer in moleculeace_benchmark.py).
# chemprop is never a biomx dependency: it lives in benchmarks/.venv-chemprop only.
#
#   bash benchmarks/chemprop_env.sh            # creates (or updates) benchmarks/.venv-chemprop
#   PYTHON=python3.11 TORCH_SPEC=torch==2.13.0 bash benchmarks/chemprop_env.sh
#
# torch is installed first, as the Makefile does it (`pip install "$(TORCH_SPEC)"`): pip's own
# configuration on this machine finds the CPU wheel (find-links /opt/wheels); elsewhere it
# comes from PyPI. Then the latest chemprop 2.x from PyPI, which keeps that torch.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
VENV="${VENV:-$HERE/.venv-chemprop}"
BIN="$VENV/bin"

test -x "$BIN/python" || "$PYTHON" -m venv "$VENV"
"$BIN/python" -m pip install --quiet --upgrade pip
"$BIN/python" -m pip install --quiet "$TORCH_SPEC"
"$BIN/python" -m pip install --quiet "chemprop>=2,<3" "$TORCH_SPEC"
"$BIN/chemprop" --help >/dev/null
"$BIN/python" -c "import chemprop, torch; print('chemprop', chemprop.__version__, 'torch', torch.__version__)"
