#!/usr/bin/env bash
# The whole suite: ruff, then pytest. pytest's "no tests ran" (exit 5) is a failure here.
set -uo pipefail
PY=${1:-.venv/bin/python}
# scikit-learn's BLAS oversubscribes 2 cores badly (500x slower fits); torch keeps its own threads.
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
echo "[test] ruff check"
"$PY" -m ruff check pointpeft tools tests scripts datasets benchmarks || exit 1
echo "[test] pytest"
"$PY" -m pytest -q -p no:cacheprovider --timeout=900 --durations=15 tests
rc=$?
if [ $rc -eq 5 ]; then echo "[test] FAIL: pytest collected no tests"; exit 1; fi
exit $rc
