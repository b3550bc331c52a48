"""`benchmarks/validate.py variants`: each next_action's grid result and best tuning trial, checked on hand-made trials."""

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import validate as variants

optuna = pytest.importorskip("optuna")


def curve(returns: Sequence[float]) -> list[list[float]]:
    return [[1000.0 * (i + 1), value, 0.0] for i, value in enumerate(returns)]


def trial(number: int, variant: str, curves: list[list[list[float]]], state: str = "COMPLETE") -> Any:
    """A finished trial as a study of tune.py keeps it: the sampled next_action, every seed's curve."""
    frozen = optuna.trial.create_trial(
        params={"next_action": variant},
        distributions={"next_action": optuna.distributions.CategoricalDistribution(["sampled", "expected", "stored"])},
        value=0.0 if state == "COMPLETE" else None,
        state=optuna.trial.TrialState[state],
        user_attrs={"curves": curves},
    )
    frozen.number = number  # the study renumbers it on add_trial
    return frozen


# five evaluations: the last 20% is the last one; the area is the mean of all five
A = [curve([10, 20, 30, 40, 50]), curve([0, 0, 0, 0, 45])]  # worst last 45, worst area 9
B = [curve([20, 20, 20, 20, 45]), curve([45, 45, 45, 45, 45])]  # worst last 45, worst area 25: B beats A on the tie
C = [curve([500, 500, 500, 500, 500])]  # pruned: counted, never best
D = [curve([60, 60, 60, 60, 60]), curve([70, 70, 70, 70, 70])]


def test_a_trial_is_scored_by_its_worst_seeds_last_20_percent_and_area() -> None:
    # A: seed areas 30 and 9; ten evaluations: the last 20% is the last two (15 and 100), areas 3 and 100
    assert variants.by_variant([("s", trial(0, "sampled", A))])["sampled"][2] == variants.Best("s", 0, 45.0, 9.0, 19.5)
    ten = [curve([0] * 8 + [10, 20]), curve([100] * 10)]
    assert variants.by_variant([("s", trial(0, "stored", ten))])["stored"][2] == variants.Best("s", 0, 15.0, 3.0, 51.5)


def test_trials_are_grouped_by_variant_and_the_best_complete_one_is_kept() -> None:
    trials = [
        ("first", trial(0, "sampled", A)),
        ("second", trial(4, "sampled", B)),
        ("second", trial(5, "sampled", C, state="PRUNED")),
        ("first", trial(2, "stored", D)),
        ("first", trial(3, "expected", C, state="PRUNED")),
    ]
    grouped = variants.by_variant(trials)
    assert grouped["sampled"] == (3, 2, variants.Best("second", 4, 45.0, 25.0, 35.0))
    assert grouped["stored"] == (1, 1, variants.Best("first", 2, 60.0, 60.0, 65.0))
    assert grouped["expected"] == (1, 0, None)
    # the same worst seed (last 20% and area): the larger mean area over the seeds wins, as in tune.best_trials
    E = [curve([20, 20, 20, 20, 45]), curve([45, 45, 45, 45, 50])]  # worst 45 / 25 as B's, mean area (25 + 46) / 2
    grouped = variants.by_variant([("second", trial(4, "sampled", B)), ("third", trial(1, "sampled", E))])
    assert grouped["sampled"][2] == variants.Best("third", 1, 45.0, 25.0, 35.5)
    grouped = variants.by_variant([("third", trial(1, "sampled", E)), ("second", trial(4, "sampled", B))])
    assert grouped["sampled"][2] == variants.Best("third", 1, 45.0, 25.0, 35.5)


def test_the_report_reads_the_grid_and_every_study_of_a_task(tmp_path: Path) -> None:
    runs, studies = tmp_path / "runs", tmp_path / "studies"
    for algorithm, finals in {"sarsa-sampled": [500.0, 400.0, 300.0], "dqn": [100.0]}.items():
        for seed, final in enumerate(finals):
            path = runs / "CartPole-v1" / algorithm / f"seed{seed}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            result = {
                "task": "CartPole-v1",
                "algorithm": algorithm,
                "seed": seed,
                "curve": [[5000, 9.0, 0.0], [10000, final, 0.0]],
            }
            path.write_text(json.dumps(result))
    studies.mkdir()
    url = f"sqlite:///{studies / 'CartPole-v1.db'}"
    for name, members in {"one": [trial(0, "sampled", A)], "two": [trial(0, "sampled", B), trial(1, "stored", D)]}.items():
        study = optuna.create_study(study_name=name, storage=url, direction="maximize")
        for member in members:
            study.add_trial(member)
    output = tmp_path / "variants.md"
    assert variants.main(["variants", "--runs", str(runs), "--studies", str(studies), "--output", str(output)]) == 0
    text = output.read_text()
    assert "## CartPole-v1" in text and "## Acrobot-v1" not in text  # only tasks with results
    assert '| `"sampled"` | 400.0 [350.0, 450.0] (3) | 2 (2) | two #0 | 45.0 / 25.0 |' in text
    assert '| `"stored"` | not run | 1 (1) | two #1 | 60.0 / 60.0 |' in text
    assert '| `"expected"` | not run | 0 (0) | none | n/a |' in text
    assert "| DQN | 100.0 [100.0, 100.0] (1) |" in text
    assert 'The preset (`deep_sarsa/hyperparams/deep_sarsa.yml`) uses `"sampled"`' in text
    # CartPole's per-variant preset of "expected" (deep_sarsa_expected.yml) is named
    assert 'A per-variant preset for `"expected"`: `deep_sarsa/hyperparams/deep_sarsa_expected.yml`' in text
