"""The demo (scripts/demo.sh -> examples/quickstart.py): what README says it prints."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
LINE = re.compile(
    r"DeepSARSA on CartPole-v1 after (\d+) steps \((\d+) s of training, seed (\d+)\): mean return ([\d.]+) ± ([\d.]+) "
    r"over (\d+) episodes \(eval seed (\d+)\): (solved|not solved)"
)


def readme_demo_line() -> re.Match[str]:
    match = LINE.search((ROOT / "README.md").read_text())
    assert match, "README.md shows no line that the demo prints"
    return match


def test_readme_shows_a_line_of_the_demo_with_its_defaults() -> None:
    steps, _, seed, mean, _, episodes, eval_seed, verdict = readme_demo_line().groups()
    assert (int(steps), int(seed), int(episodes), int(eval_seed)) == (50_000, 0, 20, 10_000)
    assert verdict == "solved" and float(mean) >= 475.0


@pytest.mark.slow
def test_the_demo_prints_a_solved_cartpole() -> None:
    # the whole demo, as README runs it (its preset, 50k steps, the seeded evaluation)
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True, text=True, timeout=900, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    match = LINE.search(done.stdout)
    assert match, done.stdout[-2000:]
    assert match[8] == "solved" and float(match[4]) >= 475.0, match[0]
