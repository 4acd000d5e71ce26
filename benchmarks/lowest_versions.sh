#!/usr/bin/env bash
# Do the lower bounds in pyproject.toml hold? Installs the LOWEST version each dependency allows
# (core and every extra; their own dependencies at the newest) into a throwaway venv under /tmp
# and runs a subset of the tests that touches every dependency's API.
#
#   nice -n 19 benchmarks/lowest_versions.sh            # ~10 min; needs the package index
#   KEEP=1 benchmarks/lowest_versions.sh                 # keep the venv (path printed) to dig in
#
# Not part of `make test`: it downloads ~1 GB and takes minutes. torch stays at TORCH_SPEC (the CPU
# wheel pip finds locally); the lowest torch biomx allows (2.4) is not installed here.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3.11}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
VENV=$(mktemp -d /tmp/biomx-lowest.XXXXXX)
if [[ -z "${KEEP:-}" ]]; then trap 'rm -rf "$VENV"' EXIT; fi
# The test tools of pyproject's dev extra, at their lowest too. Its higher bounds on biomx's own
# dependencies (what only the tests need) are left out: this checks what a user gets.
TEST_TOOLS=$("$PYTHON" - "$ROOT/pyproject.toml" <<'PY'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
name = lambda spec: re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower()
core = {name(s) for s in project["dependencies"]} | {"biomx"}
print(" ".join(s for s in project["optional-dependencies"]["dev"] if name(s) not in core))
PY
)
# Every extra but the two that only gather the others.
EXTRA_FLAGS=$("$PYTHON" -c 'import sys, tomllib; print(" ".join(f"--extra {e}" for e in tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"] if e not in ("all", "dev")))' "$ROOT/pyproject.toml")
# ... and the two tests that need those higher bounds.
NEEDS_DEV_BOUNDS=(
    --deselect tests/test_dicom_voi.py::test_the_first_of_several_windows_is_used          # pydicom 3.0.1's test file
    --deselect tests/test_classification.py::test_multiclass_metrics_match_sklearn        # scikit-learn 1.7 multiclass Brier
)
TESTS=(
    tests/test_config.py tests/test_plugins.py tests/test_extras.py    # pydantic, pyyaml
    tests/test_trainer.py tests/test_report.py                         # safetensors, rich, tensorboard, matplotlib
    tests/test_image.py tests/test_gradcam.py tests/test_dicom_voi.py  # pillow, tifffile, pydicom, captum
    tests/test_classification.py tests/test_splits.py                  # scikit-learn, scipy
    tests/test_segmentation_task.py                                    # monai losses, scipy.ndimage
    tests/test_volume_io.py tests/test_sliding_window.py               # nibabel, pynrrd, pydicom series, monai
    tests/test_segmentation_models.py                                  # monai nets (SwinUNETR), einops
    tests/test_molecule_data.py tests/test_molecule_models.py          # rdkit, torch-geometric, scikit-learn
    tests/test_sequence.py tests/test_sequence_explain.py              # pyfaidx, captum, scipy
    tests/test_tabular.py tests/test_survival.py                       # pandas, pyarrow, lightgbm, lifelines, sksurv
)

echo "venv: $VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet uv "$TORCH_SPEC"
# uv reads the dependencies (and the named extras) from pyproject.toml without installing biomx
# itself; lowest-direct: each of them at the lowest version its bound allows. torch is held at the
# build installed above (a constraint, and uv keeps an installed version that satisfies it).
echo "$TORCH_SPEC" > "$VENV/constraints.txt"
# uv trusts its own root certificates; where pip is told of another bundle (PIP_CERT), so is uv.
if [[ -n "${PIP_CERT:-}" && -z "${SSL_CERT_FILE:-}" ]]; then export SSL_CERT_FILE="$PIP_CERT"; fi
"$VENV/bin/uv" pip install --python "$VENV/bin/python" --resolution lowest-direct \
    --constraint "$VENV/constraints.txt" -r "$ROOT/pyproject.toml" \
    $EXTRA_FLAGS $TEST_TOOLS
echo "--- installed (the direct dependencies) ---"
"$VENV/bin/python" - "$ROOT/pyproject.toml" <<'PY'
import re, sys, tomllib
from importlib.metadata import version
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
specs = project["dependencies"] + [s for k, v in project["optional-dependencies"].items() if k not in ("all", "dev")
                                   for s in v]
for spec in specs:
    name = re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]
    print(f"{name:18} {version(name):12} (allowed: {spec})")
PY
cd "$ROOT"
PYTHONPATH="$ROOT/src" PATH="$VENV/bin:$PATH" "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    -m "not slow" "${NEEDS_DEV_BOUNDS[@]}" "${TESTS[@]}"
