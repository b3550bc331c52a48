"""benchmarks/validate.py: the preset beside DQN on fresh seeds, its bars checked by hand-made results."""

import json
import math
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import harness
import validate

from deep_sarsa.presets import preset


def result(algorithm: str, seed: int, returns: list[float], seconds: list[float], task: str = "CartPole-v1") -> dict[str, Any]:
    return {
        "task": task,
        "algorithm": algorithm,
        "seed": seed,
        "curve": [[5000 * (i + 1), value, 0.0] for i, value in enumerate(returns)],
        "curve_seconds": seconds,
        "train_seconds": seconds[-1] + 1.0,
        "machine": "test machine",
        "commit": "abc",
    }


def test_time_to_solve_is_the_evaluation_from_which_it_stays_solved() -> None:
    run = result("dqn", 0, [10, 480, 470, 500, 490], [1, 2, 3, 4, 5])
    assert validate.time_to_solve(run, 475.0) == 4.0  # 480 at 2 s was luck: it fell back to 470
    assert validate.time_to_solve(run, 485.0) == 4.0
    assert validate.time_to_solve(run, 495.0) == math.inf  # 500 then 490: not solved at the end
    assert validate.time_to_solve(result("dqn", 0, [500, 500], [1, 2]), 475.0) == 1.0
    assert validate.time_to_solve(run, None) == math.inf
    assert validate.time_to_solve(result("dqn", 0, [-200, -17, -15], [1, 2, 3]), -17.0) == 2.0
    assert validate.threshold_of("CartPole-v1") == 475.0  # gymnasium's registry
    # the optimal Taxi policy's mean (7.93, examples/taxi_linear.py) is below gymnasium's 8; CliffWalking has none
    assert gym.spec("Taxi-v4").reward_threshold == 8 and validate.threshold_of("Taxi-v4") == 6.5
    assert gym.spec("CliffWalking-v1").reward_threshold is None and validate.threshold_of("CliffWalking-v1") == -17.0


def test_taxi_threshold_is_one_the_optimal_policy_passes_and_gymnasiums_is_not() -> None:
    # The optimal returns, independently of the package: Taxi is deterministic, every step costs 1 and the
    # drop-off pays 20, so the optimal return from a start state is 21 - (the fewest actions to finish),
    # found by a breadth-first search over Taxi's transition table.
    env: Any = gym.make("Taxi-v4").unwrapped
    table, starts = env.P, np.flatnonzero(env.initial_state_distrib)
    returns = []
    for start in starts:
        frontier, seen, length = [int(start)], {int(start)}, 0
        while not any(d for s in frontier for a in table[s] for _, _, _, d in table[s][a]):
            frontier = [n for s in frontier for a in table[s] for _, n, _, d in table[s][a] if n not in seen]
            seen.update(frontier)
            length += 1
        returns.append(21 - (length + 1))
    mean, std = float(np.mean(returns)), float(np.std(returns))
    gymnasiums, ours = gym.spec("Taxi-v4").reward_threshold, validate.threshold_of("Taxi-v4")
    assert gymnasiums is not None and ours is not None
    assert len(starts) == 300 and round(mean, 2) == 7.93  # examples/taxi_linear.py's optimum
    error = std / math.sqrt(20)  # of the harness's 20-episode evaluation
    assert mean < gymnasiums  # gymnasium's 8: the optimal policy passes it by chance
    assert (mean - ours) / error >= 2.4  # the optimal policy passes 6.5 ~99% of times


def write(runs: Path, results: list[dict[str, Any]]) -> None:
    for r in results:
        path = harness.job_path(runs, r["task"], r["algorithm"], r["seed"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))


def test_report_checks_the_preset_against_dqn(tmp_path: Path) -> None:
    # DQN: finals 500, 400, 300, 200 (median 350, IQR [275, 425]); solves at 40 s on its first seed only
    dqn = [result("dqn", s, [100, 100, 100, 500 - 100 * s], [10, 20, 30, 40]) for s in range(4)]
    # the preset: finals 500, 500, 500, 490 (median 500, IQR [497.5, 500]), at 475 from its 2nd evaluation (20 s)
    ours = [result("sarsa-preset", s, [100, 480, 490, 500 - 10 * (s == 3)], [10, 20, 30, 40]) for s in range(4)]
    write(tmp_path, dqn + ours)
    output = tmp_path / "validation.md"
    assert validate.main(["report", "--runs", str(tmp_path), "--output", str(output)]) == 0
    text = output.read_text()
    assert "| CartPole-v1 | dqn | 4 | 350.0 [275.0, 425.0] |" in text
    assert "| CartPole-v1 | sarsa-preset | 4 | 500.0 [497.5, 500.0] |" in text
    # times: DQN 40, never, never, never -> median never; the preset 20 s for every seed
    assert "median time to solve 20 s <= half DQN's never: yes" in text
    assert "median final 500.0 >= DQN's 350.0: yes" in text and "IQR width 2.5 <= DQN's 150.0: yes" in text
    # last 20% (the last evaluation of 4): 500, 500, 500, 490 -> all >= 475; 3 of 4 at 500 (ceil(3.6) = 4 needed)
    assert "3/4 seeds at 500 at the end (>= 4): NO" in text and "4/4 seeds >= 475 over the last 20% (>= 4): yes" in text
    assert output.with_suffix(".png").stat().st_size > 1000
    assert "per-variant presets" not in text  # none run
    # a per-variant preset: finals 300 on every seed (IQR 0), solved never (below 475): a row and its numbers
    write(tmp_path, [result("sarsa-preset-stored", s, [100, 200, 300, 300], [10, 20, 30, 40]) for s in range(4)])
    assert validate.main(["report", "--runs", str(tmp_path), "--output", str(output)]) == 0
    text = output.read_text()
    assert "| CartPole-v1 | sarsa-preset-stored | 4 | 300.0 [300.0, 300.0] |" in text
    line = next(line for line in text.splitlines() if line.startswith("- **CartPole-v1**, `sarsa-preset-stored`"))
    assert "median final 300.0 >= DQN's 350.0: no" in line and "IQR width 0.0 <= DQN's 150.0: yes" in line
    assert "--tasks CartPole-v1 --variants stored --seeds 4" in text
    # the task preset's verdict is unchanged
    assert "3/4 seeds at 500 at the end (>= 4): NO" in text


def test_a_variant_without_its_preset_is_refused_before_any_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    variant = next(v for v in ("sampled", "expected", "stored") if v != preset("Taxi-v4").hyperparameters["next_action"])
    with pytest.raises(SystemExit) as exit_:
        validate.main(["run", "--tasks", "Taxi-v4", "--variants", variant, "--runs", str(tmp_path), "--seeds", "1"])
    assert exit_.value.code == 2
    assert f"no DeepSARSA preset for env_id='Taxi-v4' with next_action={variant!r}" in capsys.readouterr().err
    assert not list(tmp_path.glob("*/*/seed*.json"))


def test_a_study_trial_without_seed_curves_is_named_not_a_bare_min_error() -> None:
    import optuna

    def trial(number: int, curves: list[Any] | None) -> Any:
        made = optuna.trial.create_trial(value=0.0, user_attrs={} if curves is None else {"curves": curves})
        made.number = number
        return made

    # the best trial's worst seed: seed means of the last 20% of evaluations are 3.0 and 1.5; areas 2.0 and 1.5
    curves = [[[1, 1.0, 0.0], [2, 3.0, 0.0]], [[1, 1.5, 0.0], [2, 1.5, 0.0]]]
    assert validate.by_variant([("s", trial(0, curves))])["sampled"] == (1, 1, validate.Best("s", 0, 1.5, 1.5, 1.75))
    with pytest.raises(ValueError, match=r"study 'CartPole-v1-worst-of-3', trial 7: complete, but no seed's curve"):
        validate.by_variant([("CartPole-v1-worst-of-3", trial(7, None))])


def test_report_without_both_algorithms_names_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, [result("dqn", 0, [1.0], [1.0])])
    with pytest.raises(SystemExit) as exit_:
        validate.main(["report", "--runs", str(tmp_path), "--output", str(tmp_path / "v.md")])
    assert exit_.value.code == 2
    assert f"--runs {tmp_path}: no task has results of both" in capsys.readouterr().err


def test_a_preset_job_trains_the_preset_and_times_its_evaluations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(harness.TASKS, "CartPole-v1", dict(steps=600, eval_freq=200, reference="rl-zoo DQN 500"))
    run = json.loads(harness.write_result(tmp_path, harness.train_job("CartPole-v1", "sarsa-preset", 0, 1)).read_text())
    expected = preset("CartPole-v1").hyperparameters
    assert run["hyperparameters"] == {key: str(value) for key, value in expected.items()}
    assert "next_action" in run["hyperparameters"]
    seconds = run["curve_seconds"]
    assert len(seconds) == len(run["curve"]) == 3
    assert 0 < seconds[0] < seconds[1] < seconds[2] <= run["train_seconds"] + 1e-6
    # a per-variant preset job trains preset(task, next_action=VARIANT)
    variant, env_id = "expected", "CartPole-v1"
    run = json.loads(harness.write_result(tmp_path, harness.train_job(env_id, f"sarsa-preset-{variant}", 0, 1)).read_text())
    wanted = preset(env_id, next_action=variant).hyperparameters
    assert run["hyperparameters"] == {key: str(value) for key, value in wanted.items()} and wanted["next_action"] == variant
