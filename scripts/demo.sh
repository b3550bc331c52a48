#!/usr/bin/env bash
# Set up, then train DeepSARSA on CartPole with a progress bar, save, reload, evaluate, print the result.
# Extra arguments go to examples/quickstart.py (e.g. --smoke, --timesteps N, --seed S).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python examples/quickstart.py "$@"
