#!/usr/bin/env bash
# Set up, then run every check: lint, format, types, the docs site (warnings are errors), the
# examples' smoke mode and the test suite.
# Extra arguments go to pytest (e.g. -k masking).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
rm -rf docs/_build
.venv/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html
for example in examples/*.py; do
    OMP_NUM_THREADS=1 .venv/bin/python "$example" --smoke
done
# One torch thread per test worker: two workers on two cores
OMP_NUM_THREADS=1 .venv/bin/python -m pytest -n 2 "$@"
