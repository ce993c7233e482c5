#!/usr/bin/env bash
# The device install, checked for real: a second virtual environment with a plain
# `pip install .` (no extras, so no torch), where torch must not import and the device
# commands must work.
#
# Then the same checks in a third environment with the plain `onnxruntime` package in place
# of onnxruntime-training-cpu (what a Raspberry Pi or Python 3.13 gets): predict works and
# retrain runs the numpy trainer. Skip that part with DEVICE_PLAIN_ORT=0.
#
# Usage: scripts/check_device_install.sh [BUNDLE [IMAGE...]]
#   BUNDLE  a bundle folder or .tar.gz; without one, a small real bundle is built with
#           the workstation venv ($WORKSTATION_PYTHON, default .venv/bin/python).
#   IMAGE   images to classify; without any, a few are generated.
# Environment: DEVICE_VENV (default .venv-device), PYTHON (creates it; default python3).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${DEVICE_VENV:-.venv-device}
PYTHON=${PYTHON:-python3}
WORKSTATION_PYTHON=${WORKSTATION_PYTHON:-.venv/bin/python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/edgetl-device-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

say() { printf 'check_device_install: %s\n' "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# Not editable: the installed package (its file list, its package data) is what is tested.
say "installing edgetl into $VENV (pip install ., no extras)"
# (pip's "Location ... is ignored" lines come from this machine's index config, not from edgetl)
"$VENV/bin/python" -m pip install -q . 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
DEVICE_PY="$ROOT/$VENV/bin/python"
EDGETL="$ROOT/$VENV/bin/edgetl"

# Everything below runs outside the source tree, so `import edgetl` is the installed copy.
cd "$WORK"
if "$DEVICE_PY" -c "import torch" 2>/dev/null; then
    fail "torch imports in $VENV; the device install must not pull it in (check [project] dependencies)"
fi
installed=$("$DEVICE_PY" -c "import edgetl, os; print(os.path.dirname(edgetl.__file__))")
case "$installed" in
    "$ROOT/$VENV"/*) ;;
    *) fail "edgetl was imported from $installed, not from $VENV" ;;
esac

"$EDGETL" --version
"$EDGETL" targets >/dev/null || fail "'edgetl targets' failed"
say "edgetl targets: ok"

BUNDLE=${1:-}
if [ -z "$BUNDLE" ]; then
    say "no BUNDLE given: building a small one with $WORKSTATION_PYTHON"
    (cd "$ROOT" && PYTHONPATH="$ROOT/tests:$ROOT" EDGETL_NO_PROGRESS=1 "$WORKSTATION_PYTHON" - "$WORK" <<'PY'
import sys
from pathlib import Path
from _device_models import tiny_models, write_bundle
from edgetl.modalities.image import write_digits

work = Path(sys.argv[1])
digits = write_digits(work / "digits", per_class=20, seed=0)
models = tiny_models(work / "models", digits)
write_bundle(work / "bundle", models, runtime="onnxruntime", precision="int8")
write_bundle(work / "bundle-openvino", models, runtime="openvino", precision="fp32")
PY
    ) 2>"$WORK/build.log" || { cat "$WORK/build.log" >&2; fail "could not build the test bundle"; }
    BUNDLES=("$WORK/bundle" "$WORK/bundle-openvino")
    IMAGES=("$WORK"/digits/3/*.png)
    IMAGES=("${IMAGES[@]:0:3}")
else
    BUNDLES=("$(cd "$ROOT" && realpath "$BUNDLE")")
    shift
    IMAGES=()
    for image in "$@"; do IMAGES+=("$(cd "$ROOT" && realpath "$image")"); done
fi
if [ ${#IMAGES[@]} -eq 0 ]; then
    "$DEVICE_PY" - "$WORK/images" <<'PY'
import sys
from pathlib import Path
import numpy as np
from PIL import Image

out = Path(sys.argv[1]); out.mkdir()
rng = np.random.default_rng(0)
Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(out / "noise.png")
ramp = np.linspace(0, 255, 200, dtype=np.uint8)
Image.fromarray(np.tile(ramp, (150, 1))).save(out / "ramp.jpg")
PY
    IMAGES=("$WORK/images/noise.png" "$WORK/images/ramp.jpg")
fi

# device_checks PYTHON EDGETL TRAINER: predict every bundle, then retrain a copy of the first
# on the digits (when they were built here) and check which trainer ran.
device_checks() {
    local py=$1 edgetl=$2 trainer=$3
    for bundle in "${BUNDLES[@]}"; do
        "$edgetl" predict "$bundle" "${IMAGES[@]}" --json --top-k 2 >"$WORK/predictions.json" \
            || fail "'edgetl predict $bundle' failed ($py)"
        "$py" - "$WORK/predictions.json" "${#IMAGES[@]}" <<'PY' || fail "bad predict output for $bundle"
import json, sys
rows = json.load(open(sys.argv[1]))
assert len(rows) == int(sys.argv[2]) and all(r["error"] is None and r["label"] for r in rows), rows
PY
        say "edgetl predict $bundle: ok ($(tr -d '\n ' <"$WORK/predictions.json" | head -c 120)...)"
    done
    if [ -d "$WORK/digits" ]; then
        rm -rf "$WORK/retrained"
        cp -r "${BUNDLES[0]}" "$WORK/retrained"
        "$edgetl" retrain "$WORK/retrained" "$WORK/digits" --epochs 5 --force --json >"$WORK/retrain.json" \
            || fail "'edgetl retrain' failed ($py)"
        "$py" - "$WORK/retrain.json" "$trainer" <<'PY' || fail "retrain did not run the $trainer trainer"
import json, sys
report = json.load(open(sys.argv[1]))
assert report["switched"] and report["trainer"] == sys.argv[2], report
PY
        say "edgetl retrain: ok ($trainer trainer)"
    fi
}

device_checks "$DEVICE_PY" "$EDGETL" ort
say "device install ok: no torch, targets, predict and retrain work"

if [ "${DEVICE_PLAIN_ORT:-1}" != "0" ]; then
    PLAIN=${DEVICE_PLAIN_VENV:-.venv-device-plain}
    cd "$ROOT"
    if [ ! -x "$PLAIN/bin/python" ]; then
        say "creating $PLAIN (plain onnxruntime, as on ARM or Python 3.13)"
        "$PYTHON" -m venv "$PLAIN"
    fi
    "$PLAIN/bin/python" -m pip install -q . 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    # On this x86-64 machine the markers pick the training wheel; swap it for the package the
    # other platforms get (never both: each provides the module onnxruntime).
    "$PLAIN/bin/python" -m pip uninstall -q -y onnxruntime-training-cpu
    "$PLAIN/bin/python" -m pip install -q "onnxruntime>=1.20" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    cd "$WORK"
    if "$ROOT/$PLAIN/bin/python" -c "import onnxruntime.training.api" 2>/dev/null; then
        fail "$PLAIN still has onnxruntime.training; the plain onnxruntime check would prove nothing"
    fi
    device_checks "$ROOT/$PLAIN/bin/python" "$ROOT/$PLAIN/bin/edgetl" numpy
    say "plain onnxruntime ok: predict works, retrain runs the numpy trainer"
fi
