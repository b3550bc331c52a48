#!/usr/bin/env bash
# Run the test suite (and examples' smoke mode) with the LOWEST versions pyproject.toml declares for
# stable-baselines3, sb3-contrib, gymnasium and numpy, and for rl_zoo3 and optuna of the zoo extra (installed too, so
# that tests/test_zoo.py and tests/test_tuning.py run here as well), in a separate .venv-lowest. Safe to run again.
# rl_zoo3's lowest is 2.9.1: 2.9.0 caps gymnasium below 1.3 (our lowest gymnasium), 2.9.2 needs sb3-contrib 2.9.2.
# The `==` pins are derived from pyproject.toml's `>=` bounds, so the two cannot drift apart; the
# installed versions are checked against them. The CPU build of PyTorch comes first (constraints.txt).
# Extra arguments go to pytest (e.g. -k masking).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv-lowest
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip

# pyproject.toml's lower bounds of these packages, as exact pins
"$PY" - > "$VENV/lowest-pins.txt" <<'EOF'
import re
import sys

try:
    import tomllib
except ImportError:  # Python 3.10: pip vendors tomli
    from pip._vendor import tomli as tomllib

NAMES = ["stable-baselines3", "sb3-contrib", "gymnasium", "numpy", "rl-zoo3", "optuna"]
with open("pyproject.toml", "rb") as file:
    project = tomllib.load(file)["project"]
dependencies = project["dependencies"] + project["optional-dependencies"]["zoo"]
bounds = {}
for dependency in dependencies:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(,.*)?", dependency.strip())
    if match:
        bounds[match[1].lower().replace("_", "-")] = match[2]
missing = [name for name in NAMES if name not in bounds]
if missing:
    sys.exit(f"pyproject.toml: no `>=` lower bound for {missing}")
for name in NAMES:
    print(f"{name}=={bounds[name]}")
EOF
echo "Lowest declared versions: $(tr '\n' ' ' < "$VENV/lowest-pins.txt")"

"$PY" -m pip install --quiet -c constraints.txt torch
"$PY" -m pip install --quiet -c constraints.txt -c "$VENV/lowest-pins.txt" -e ".[dev,zoo]"

# The pins took effect (pip would not, say, keep a newer version a constraint excludes)
"$PY" - "$VENV/lowest-pins.txt" <<'EOF'
import sys
from importlib.metadata import version

from pip._vendor.packaging.version import Version

wrong = []
for line in open(sys.argv[1]).read().split():
    name, pinned = line.split("==")
    if Version(version(name)) != Version(pinned):
        wrong.append(f"{name} {version(name)} (pinned {pinned})")
if wrong:
    sys.exit("not the lowest declared versions: " + ", ".join(wrong))
EOF

# The examples' smoke mode, two at a time (one torch thread each); each one's output is shown when it ends
mkdir -p "$VENV/smoke"
printf '%s\n' examples/*.py | OMP_NUM_THREADS=1 xargs -P 2 -I{} sh -c '
    log="$1/smoke/$(basename "$2").log"
    if "$1/bin/python" "$2" --smoke > "$log" 2>&1; then cat "$log"; echo "ok: $2 --smoke"
    else cat "$log"; echo "FAILED: $2 --smoke" >&2; exit 1; fi' sh "$VENV" {}
# One torch thread per test worker: two workers on two cores
OMP_NUM_THREADS=1 "$PY" -m pytest -n 2 -q "$@"
