#!/usr/bin/env bash
# Create .venv and install deep-sarsa with its dev tools, the docs tools and the zoo extra (rl-zoo3, Optuna,
# psycopg: tests/test_zoo.py and tests/test_tuning.py need them). Safe to run again.
# The CPU build of PyTorch comes first, pinned by constraints.txt: a plain `torch` requirement
# would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev,docs,zoo]"
