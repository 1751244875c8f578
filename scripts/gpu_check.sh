#!/usr/bin/env bash
# Issue 15's GPU checks as one script, for a machine with a CUDA device (none in CI): every
# preset on CUDA against its CPU run, the skip of a non-finite step without a host sync, a model
# across CPU and GPU (tests/optim/test_cuda.py), the syncs per step counted (scripts/cuda_syncs.py),
# launches and busy time per step (scripts/cuda_profile.py), the step-cost benchmark there, and
# last the compiled steps against the eager ones (the slow tests of test_cuda.py).
#
#   PYTHON=python3 OUT=outputs/gpu scripts/gpu_check.sh      # or: make gpu-check
#
# Uses $PYTHON's torch as it is (a CUDA build; this project's .venv holds the CPU wheel) and
# installs nothing: the accelerator machines may have no network. Writes the test log, the
# benchmark's log and a copy of docs/results.md with its step-cost-cuda section filled in under
# $OUT (copy that section into docs/results.md with experiments.report.section and
# replace_section, not by hand). Exits non-zero if a test fails or
# there is no GPU.
set -uo pipefail
PYTHON=${PYTHON:-python3}
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PYTHON" - <<'PY' | tee "$OUT/device.txt" || exit 1
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"no CUDA device for torch {torch.__version__}")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")
PY

status=0
if "$PYTHON" -c "import pytest, hypothesis" 2>/dev/null; then
    "$PYTHON" -m pytest -q -rs -p no:cacheprovider -m "not slow" tests/optim/test_cuda.py \
        2>&1 | tee "$OUT/test_cuda.log" || status=1
else
    echo "pytest or hypothesis missing for $PYTHON: tests/optim/test_cuda.py not run" \
        | tee "$OUT/test_cuda.log"
    status=1
fi

"$PYTHON" scripts/cuda_syncs.py 2>&1 | tee "$OUT/syncs.md" || status=1
"$PYTHON" scripts/cuda_profile.py 2>&1 | tee "$OUT/profile.md" || status=1

# BENCH_ARGS, e.g. "--no-compile": cold compiles of the compile=True rows take minutes
cp docs/results.md "$OUT/results.md"
# shellcheck disable=SC2086
"$PYTHON" -m experiments.bench_step --device cuda ${BENCH_ARGS:-} --write "$OUT/results.md" \
    2>&1 | tee "$OUT/bench_step.log" || status=1
echo "benchmark section written to $OUT/results.md (section step-cost-cuda)"

# last: the compiled steps (a cold compile per preset)
"$PYTHON" -m pytest -q -rs -p no:cacheprovider -m slow tests/optim/test_cuda.py \
    2>&1 | tee "$OUT/test_cuda_compiled.log" || status=1
exit $status
