"""benchmarks/tune.py: the worst-of-seeds objective, workers sharing one SQLite study, a SIGKILLed worker, bad arguments."""

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import disk
import optuna
import pytest
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import harness
import tune
from trained_keywords import trained_keywords

from deep_sarsa import DeepSARSA
from deep_sarsa.presets import preset

ROOT = Path(__file__).parent.parent
TUNE = ROOT / "benchmarks" / "tune.py"
#: a real CartPole trial of a few hundred steps
TINY = ["--steps", "100", "--eval-freq", "50", "--eval-episodes", "1"]


def curve(*returns: float) -> list[tuple[int, float, float]]:
    return [(100 * (i + 1), float(value), 0.0) for i, value in enumerate(returns)]


def test_last_fraction_and_objective_by_hand() -> None:
    # 10 evaluations: the last 2 (20%); 7: ceil(1.4) = 2; 3: ceil(0.6) = 1
    assert tune.last_fraction_mean(curve(0, 0, 0, 0, 0, 0, 0, 0, 400, 500)) == 450.0
    assert tune.last_fraction_mean(curve(1, 2, 3, 4, 5, 6, 8)) == 7.0
    assert tune.last_fraction_mean(curve(9, 9, 30)) == 30.0
    assert tune.area_under_curve(curve(10, 20, 60)) == 30.0
    seeds = [curve(*[0] * 8, 400, 500), curve(*[500] * 8, 100, 100), curve(*[0] * 8, 300, 300)]
    assert [tune.seed_score(seed) for seed in seeds] == [450.0, 100.0, 300.0]  # a study's objective: the worst, 100
    with pytest.raises(ValueError, match="curve must hold at least one evaluation"):
        tune.last_fraction_mean([])
    # --objective area: areas 90, 420, 60 (the first seed is good at the end only, the third is late and low)
    area = tune.OBJECTIVES["area"]
    assert [tune.seed_score(seed, area) for seed in seeds] == [90.0, 420.0, 60.0]
    with pytest.raises(ValueError, match="objective: 'best seed' is none of"):
        tune.seed_score(curve(1, 2), "best seed")


def fake_training(monkeypatch: pytest.MonkeyPatch, calls: list[tuple[int, dict[str, Any]]]) -> None:
    """Training replaced by curves that depend on the seed: seed scores 450, 100 and 300 (and 60, 20, ... beyond)."""
    by_seed = {
        1000: curve(*[0] * 8, 400, 500),
        1001: curve(*[500] * 8, 100, 100),
        1002: curve(*[0] * 8, 300, 300),
    }

    def train(task: str, hyperparameters: dict[str, Any], seed: int, steps: int, eval_freq: int, episodes: int) -> Any:
        calls.append((seed, hyperparameters))
        assert (task, steps, eval_freq, episodes) == ("CartPole-v1", 50_000, 5_000, 20)
        return by_seed[seed]

    monkeypatch.setattr(tune, "train_seed", train)


def test_objective_is_the_worst_seed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[int, dict[str, Any]]] = []
    fake_training(monkeypatch, calls)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert tune.main(["study", "--task", "CartPole-v1", "--trials", "3", "--storage", storage]) == 0
    study = optuna.load_study(study_name="CartPole-v1-worst-of-3", storage=storage)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3
    for trial in trials:
        assert trial.value == 100.0
        assert trial.user_attrs["seed_scores"] == [450.0, 100.0, 300.0]
        assert trial.user_attrs["seed_areas"] == [90.0, 420.0, 60.0]
    # the tuning seeds, never the harness's validation seeds 0, 1, ...; each trial's keywords are valid DeepSARSA keywords
    assert [seed for seed, _ in calls] == [1000, 1001, 1002] * 3
    for _, hyperparameters in calls[::3]:
        assert hyperparameters["next_action"] in ("sampled", "expected", "stored")
        assert hyperparameters["batch_size"] <= hyperparameters["buffer_size"]
        DeepSARSA("MlpPolicy", "CartPole-v1", device="cpu", **hyperparameters)
    assert study.user_attrs["seeds"] == [1000, 1001, 1002]
    # Running the command again with more trials extends the study
    assert tune.main(["study", "--task", "CartPole-v1", "--trials", "4", "--storage", storage]) == 0
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4


def test_area_objective_scores_each_seed_by_its_area(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_training(monkeypatch, [])
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["--task", "CartPole-v1", "--storage", storage]
    assert tune.main(["study", *common, "--objective", "area", "--trials", "2"]) == 0
    study = optuna.load_study(study_name="CartPole-v1-worst-of-3-area", storage=storage)
    assert study.user_attrs["objective"] == tune.OBJECTIVES["area"]
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        assert trial.value == 60.0 and trial.user_attrs["seed_scores"] == trial.user_attrs["seed_areas"] == [90, 420, 60]
    # the export's command resumes the same study (its objective and space named); the other objective is refused
    out = tmp_path / "tuning.md"
    assert tune.main(["export", *common, "--objective", "area", "--out", str(out)]) == 0
    assert "--objective area`" in out.read_text() and "Seed scores: each tuning seed's area under the curve" in out.read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        tune.main(["study", *common, "--study-name", study.study_name, "--trials", "3"])
    assert exit_.value.code == 2
    assert "was run with objective=" in capsys.readouterr().err


def test_minutes_stops_starting_trials_after_the_deadline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # each seed trains 0.1 s: with --minutes 0.001 (60 ms) the first trial ends past the deadline, whole, and the worker
    # starts no other one of the 5 asked for; the same command without --minutes goes on to --trials
    fake_training(monkeypatch, [])
    trained = tune.train_seed

    def slow(*args: Any) -> Any:
        time.sleep(0.1)
        return trained(*args)

    monkeypatch.setattr(tune, "train_seed", slow)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["study", "--task", "CartPole-v1", "--storage", storage, "--no-prune", "--trials", "5"]
    assert tune.main([*common, "--minutes", "0.001"]) == 0
    study = optuna.load_study(study_name="CartPole-v1-worst-of-3", storage=storage)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["seed_scores"] == [450.0, 100.0, 300.0]
    assert tune.main(common) == 0
    assert [trial.state for trial in study.get_trials()] == [TrialState.COMPLETE] * 5


def test_export(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_training(monkeypatch, [])
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["--task", "CartPole-v1", "--storage", storage]
    assert tune.main(["study", *common, "--trials", "2"]) == 0
    out = tmp_path / "tuning.md"
    assert tune.main(["export", *common, "--out", str(out)]) == 0
    table = out.read_text()
    assert table.count("| complete | 100.00 | 450.0, 100.0, 300.0 |") == 2
    assert "python benchmarks/tune.py study --task CartPole-v1" in table and "Machine: " in table and " UTC." in table
    # the best trial's keywords, as a preset entry takes them (tests/test_presets.py), build a model
    study = optuna.load_study(study_name="CartPole-v1-worst-of-3", storage=storage)
    best = tune.best_trials(study, 1)[0]
    assert f"Best: trial {best.number}, objective 100.00" in table
    keywords = {**harness.hyperparameters_of("CartPole-v1"), **trained_keywords(best, "CartPole-v1")}
    DeepSARSA("MlpPolicy", "CartPole-v1", device="cpu", **keywords)


def test_the_near_preset_space_starts_from_the_preset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[int, dict[str, Any]]] = []
    fake_training(monkeypatch, calls)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["--task", "CartPole-v1", "--storage", storage, "--space", "near-preset"]
    assert tune.main(["study", *common, "--trials", "6"]) == 0
    study = optuna.load_study(study_name="CartPole-v1-worst-of-3-near-preset", storage=storage)
    assert study.user_attrs["space"] == "near-preset"
    # trial 0 trains the package's preset (deep_sarsa.yml) as it is
    first = calls[0][1]
    wanted = preset("CartPole-v1").hyperparameters
    assert {key: first[key] for key in wanted} == wanted
    # the other trials stay inside the space, with every keyword a valid DeepSARSA keyword
    space = tune.NEAR_PRESET
    for _, keywords in calls[3::3]:
        assert keywords["loss"] == "mse" and keywords["next_action"] in space["next_action"]
        assert space["learning_rate"][0] <= keywords["learning_rate"] <= space["learning_rate"][1]
        assert keywords["train_freq"] in space["train_freq"] and 1 <= keywords["gradient_steps"] <= keywords["train_freq"]
        assert keywords["batch_size"] in space["batch_size"] and keywords["gamma"] in space["gamma"]
        assert space["target_update_interval"][0] <= keywords["target_update_interval"] <= space["target_update_interval"][1]
        DeepSARSA("MlpPolicy", "CartPole-v1", device="cpu", **keywords)
    # the preset command gives back the keywords the best trial trained with
    best = tune.best_trials(study, 1)[0]
    trained = dict(calls[3 * best.number][1])
    assert trained_keywords(best, "CartPole-v1", "near-preset") == {
        key: trained[key] for key in trained_keywords(best, "CartPole-v1", "near-preset")
    }
    # the export's command to resume names the space (without it, the study would be refused)
    assert tune.main(["export", *common, "--out", str(tmp_path / "t.md")]) == 0
    assert "--eval-episodes 20 --space near-preset`" in (tmp_path / "t.md").read_text()
    # a study of one space is not continued with another one
    with pytest.raises(SystemExit) as exit_:
        tune.main(["study", *common[:-1], "zoo", "--study-name", study.study_name, "--trials", "7"])
    assert exit_.value.code == 2


def test_a_preset_trial_that_fails_is_measured_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Ctrl-C while the preset's first seed trains: Optuna fails its trial, and the next run trains the preset again
    # before any sampled trial, once
    calls: list[tuple[int, dict[str, Any]]] = []
    fake_training(monkeypatch, calls)
    trained = tune.train_seed

    def interrupted(*args: Any) -> Any:
        monkeypatch.setattr(tune, "train_seed", trained)
        raise KeyboardInterrupt

    monkeypatch.setattr(tune, "train_seed", interrupted)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["study", "--task", "CartPole-v1", "--storage", storage, "--space", "near-preset", "--no-prune"]
    assert tune.main([*common, "--trials", "2"]) == 130
    study = optuna.load_study(study_name="CartPole-v1-worst-of-3-near-preset", storage=storage)
    assert [trial.state for trial in study.get_trials()] == [TrialState.FAIL]
    assert tune.main([*common, "--trials", "2"]) == 0
    assert tune.main([*common, "--trials", "3"]) == 0
    states = [trial.state for trial in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE, TrialState.COMPLETE]
    wanted = preset("CartPole-v1").hyperparameters
    presets = [i for i, (_, keywords) in enumerate(calls[::3]) if {key: keywords[key] for key in wanted} == wanted]
    assert presets == [0], presets  # trial 1 is the preset; trials 2 and 3 are sampled
    assert study.get_trials()[1].params == study.get_trials()[0].params


def test_a_preset_found_by_the_study_is_not_trained_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the study's best sampled trial became the preset (deep_sarsa.yml): resuming the study does not queue it
    fake_training(monkeypatch, [])
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["study", "--task", "CartPole-v1", "--storage", storage, "--space", "near-preset", "--no-prune"]
    assert tune.main([*common, "--trials", "2"]) == 0
    study = optuna.load_study(study_name="CartPole-v1-worst-of-3-near-preset", storage=storage)
    found = study.get_trials()[1]
    assert "fixed_params" not in found.system_attrs  # sampled, not queued
    monkeypatch.setattr(tune, "near_preset_params", lambda task, next_action=None: dict(found.params))
    assert tune.main([*common, "--trials", "3"]) == 0
    assert ["fixed_params" in trial.system_attrs for trial in study.get_trials()] == [True, False, False]
    # a preset no trial has measured is queued
    monkeypatch.setattr(
        tune,
        "near_preset_params",
        lambda task, next_action=None: {**found.params, "gamma": 0.98 if found.params["gamma"] != 0.98 else 0.99},
    )
    assert tune.main([*common, "--trials", "4"]) == 0
    assert ["fixed_params" in trial.system_attrs for trial in study.get_trials()] == [True, False, False, True]


@pytest.mark.parametrize("task", ["Acrobot-v1", "MountainCar-v0", "Taxi-v4", "CliffWalking-v1"])
def test_each_task_has_a_near_preset_space_around_its_own_preset(
    task: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[dict[str, Any]] = []

    def train(task_: str, hyperparameters: dict[str, Any], seed: int, steps: int, eval_freq: int, episodes: int) -> Any:
        assert task_ == task
        calls.append(hyperparameters)
        return curve(*[-100.0] * 10)

    monkeypatch.setattr(tune, "train_seed", train)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert tune.main(["study", "--task", task, "--storage", storage, "--space", "near-preset", "--trials", "4"]) == 0
    # trial 0 trains the package's preset (deep_sarsa.yml) as it is; -1 gradient steps (one per env step, one env)
    # is the same as train_freq gradient steps
    wanted = preset(task).hyperparameters
    if wanted["gradient_steps"] == -1:
        wanted["gradient_steps"] = wanted["train_freq"]
    assert {key: calls[0][key] for key in wanted} == wanted
    # the other trials stay inside the task's own space (its preset is not inside CartPole's)
    space = tune.near_preset_space(task)
    assert space != tune.NEAR_PRESET
    for keywords in calls[3::3]:
        assert space["learning_rate"][0] <= keywords["learning_rate"] <= space["learning_rate"][1]
        assert keywords["train_freq"] in space["train_freq"] and keywords["gamma"] in space["gamma"]
        low, high = space["exploration_final_eps"]
        assert low <= keywords["exploration_final_eps"] <= high
        DeepSARSA("MlpPolicy", task, device="cpu", **keywords)


def test_near_preset_refuses_a_preset_outside_its_space(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # CliffWalking's preset is a Q-table trained every step (train_freq=1): without a space of its own, CartPole's
    # has neither value
    monkeypatch.delitem(tune.NEAR_PRESET_OF, "CliffWalking-v1")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    with pytest.raises(SystemExit) as exit_:
        tune.main(["study", "--task", "CliffWalking-v1", "--space", "near-preset", "--storage", storage, "--trials", "1"])
    assert exit_.value.code == 2
    assert "--space near-preset: the preset of CliffWalking-v1 is outside the space" in capsys.readouterr().err
    assert not (tmp_path / "study.db").exists() or not optuna.get_all_study_summaries(storage)  # no study was created


def fake_any_task(monkeypatch: pytest.MonkeyPatch, calls: list[dict[str, Any]], score: Any = None) -> None:
    """Training replaced by a flat curve: ``score(hyperparameters, seed)``, or -100 everywhere."""

    def train(task: str, hyperparameters: dict[str, Any], seed: int, steps: int, eval_freq: int, episodes: int) -> Any:
        calls.append(dict(hyperparameters))
        return curve(*[-100.0 if score is None else score(hyperparameters, seed)] * 10)

    monkeypatch.setattr(tune, "train_seed", train)


def test_next_action_fixes_the_variant_and_starts_from_the_preset_with_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[dict[str, Any]] = []
    # the larger the buffer, the worse: the best trial is known without reading the code
    fake_any_task(monkeypatch, calls, lambda keywords, seed: -keywords["buffer_size"] / 1000 - seed % 1000)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["--task", "CliffWalking-v1", "--storage", storage, "--space", "near-preset", "--next-action", "stored"]
    assert tune.main(["study", *common, "--trials", "6", "--no-prune"]) == 0
    study = optuna.load_study(study_name="CliffWalking-v1-worst-of-3-near-preset-stored", storage=storage)
    assert study.user_attrs["next_action"] == "stored"
    # every trial trains "stored"; trial 0 is the task's preset with "stored" (the preset itself uses "sampled")
    assert preset("CliffWalking-v1").hyperparameters["next_action"] == "sampled"
    assert {keywords["next_action"] for keywords in calls} == {"stored"}
    wanted = {**preset("CliffWalking-v1").hyperparameters, "next_action": "stored"}
    assert {key: calls[0][key] for key in wanted} == wanted
    # "stored" bootstraps on the actions its memory kept: the memory's size is sampled, from the task's choices
    space = tune.near_preset_space("CliffWalking-v1")
    assert {keywords["buffer_size"] for keywords in calls} <= set(space["buffer_size"])
    assert all("buffer_size" in trial.params for trial in study.get_trials())
    # the yml entry: the best trial (the smallest memory; seed 1002's score is the worst), next_action "stored"
    best = tune.best_trials(study, 1)[0]
    assert best.value == -min(keywords["buffer_size"] for keywords in calls) / 1000 - 2
    converted = trained_keywords(best, "CliffWalking-v1", "near-preset", "stored")
    trained = calls[3 * best.number]
    assert converted == {key: trained[key] for key in converted} and converted["next_action"] == "stored"
    # the export's command to resume names the variant
    assert tune.main(["export", *common, "--out", str(tmp_path / "t.md")]) == 0
    assert "--space near-preset --next-action stored`" in (tmp_path / "t.md").read_text()
    # a study of one variant is not continued with another, nor with the variant sampled
    for other in (["--next-action", "expected"], []):
        with pytest.raises(SystemExit) as exit_:
            tune.main(["study", *common[:-2], *other, "--study-name", study.study_name, "--trials", "7"])
        assert exit_.value.code == 2
        assert f"--next-action: study {study.study_name!r} was run with next_action='stored'" in capsys.readouterr().err


def test_a_study_from_before_next_action_resumes_as_sampling_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the kept studies were created before --next-action: their settings have no next_action
    calls: list[dict[str, Any]] = []
    fake_any_task(monkeypatch, calls)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["--task", "Taxi-v4", "--storage", storage, "--space", "near-preset", "--no-prune"]
    old = optuna.create_study(study_name="Taxi-v4-worst-of-3-near-preset", storage=storage, direction="maximize")
    arguments = dict(task="Taxi-v4", steps=None, eval_freq=None, eval_episodes=20, seeds=3, space="near-preset")
    for key, value in tune.settings_of(argparse.Namespace(**arguments)).items():
        if key != "next_action":
            old.set_user_attr(key, value)
    assert tune.main(["study", *common, "--trials", "2"]) == 0
    trials = old.get_trials()
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 2
    assert old.user_attrs.get("next_action") is None  # still sampled: trial 1 had all three variants to choose from
    distribution = trials[1].distributions["next_action"]
    assert isinstance(distribution, optuna.distributions.CategoricalDistribution)
    assert distribution.choices == ("sampled", "expected", "stored")
    with pytest.raises(SystemExit) as exit_:
        tune.main(["study", *common, "--next-action", "sampled", "--study-name", old.study_name, "--trials", "3"])
    assert exit_.value.code == 2 and len(old.get_trials()) == 2
    # a free study never samples the memory's size, not even for its "stored" trials
    assert all("buffer_size" not in trial.params for trial in old.get_trials())


def test_a_worker_whose_trials_all_fail_stops(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a trial that fails on a ValueError leaves the study going; three in a row stop the worker (not a loop forever)
    def broken(*args: Any) -> Any:
        raise ValueError("the env is broken")

    monkeypatch.setattr(tune, "train_seed", broken)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert tune.main(["study", "--task", "CartPole-v1", "--storage", storage, "--trials", "5"]) == 1
    trials = optuna.load_study(study_name="CartPole-v1-worst-of-3", storage=storage).get_trials()
    assert [trial.state for trial in trials] == [TrialState.FAIL] * 3
    assert "3 trials failed since this worker started" in capsys.readouterr().out


def test_next_action_needs_the_near_preset_space(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    with pytest.raises(SystemExit) as exit_:
        tune.main(["study", "--task", "CartPole-v1", "--storage", storage, "--next-action", "stored", "--trials", "1"])
    assert exit_.value.code == 2
    assert "--next-action needs --space near-preset" in capsys.readouterr().err


def run_tune(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(TUNE), *args], capture_output=True, text=True, timeout=timeout, env=environment, cwd=ROOT
    )


def start_tune(*args: str) -> subprocess.Popen[str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(TUNE), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
        cwd=ROOT,
    )


def test_workers_on_a_local_cluster_share_a_study_and_retry_a_sigkilled_ones_trial(postgres_url: str) -> None:
    # two workers, Dask tasks on a local cluster, on a fresh PostgreSQL database (conftest.py; skipped outside CI where
    # there is none); one worker process is SIGKILLed while it trains: its nanny starts another, the scheduler runs the
    # task again, and once the trial's heartbeat is 2 s old a worker starting a trial fails it and queues it again
    budget = ["--steps", "1000", "--eval-freq", "500", "--eval-episodes", "1", "--heartbeat", "1", "--no-prune"]
    command = ["study", "--task", "CartPole-v1", "--trials", "5", "--seeds", "1", "--storage", postgres_url, *budget]
    driver = start_tune(*command, "--workers", "2")
    try:
        deadline = time.monotonic() + 120
        running: list[Any] = []
        while not running:
            assert driver.poll() is None and time.monotonic() < deadline, "no trial started"
            time.sleep(0.05)
            with contextlib.suppress(KeyError):  # the study is not there yet
                study = optuna.load_study(study_name="CartPole-v1-worst-of-1", storage=postgres_url)
                running = [trial for trial in study.get_trials(states=(TrialState.RUNNING,)) if "worker" in trial.user_attrs]
        killed = running[0]
        os.kill(int(killed.user_attrs["worker"].split(":")[1]), signal.SIGKILL)
        output = driver.communicate(timeout=180)[0]
    finally:
        driver.kill()
    assert driver.returncode == 0, output
    trials = study.get_trials()
    assert trials[killed.number].state == TrialState.FAIL, "the dead worker's trial is failed, not left RUNNING"
    (retry,) = [trial for trial in trials if trial.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    states = [trial.state for trial in trials]
    assert states.count(TrialState.COMPLETE) >= 5 and TrialState.RUNNING not in states and states.count(TrialState.FAIL) == 1
    assert len({trial.user_attrs["worker"] for trial in trials}) >= 2, "both workers ran trials"
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            assert trial.value == min(trial.user_attrs["seed_scores"]) and len(trial.user_attrs["seed_scores"]) == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["study", "--task", "CartPole-v1", "--trials", "0"], "--trials: expected a positive whole number, got '0'"),
        (["study", "--task", "CartPole-v1", "--trials", "3", "--seeds", "two"], "--seeds: expected a positive whole number"),
        (["study", "--task", "CartPole-v1", "--trials", "3", "--minutes", "-5"], "--minutes: expected a positive number"),
        (["study", "--task", "Pong-v5", "--trials", "3"], "--task: invalid choice: 'Pong-v5'"),
        (["study", "--task", "MountainCar-v0-lecture", "--trials", "3"], "--task: invalid choice"),
        (["study", "--task", "CartPole-v1"], "the following arguments are required: --trials"),
        (["study", "--task", "CartPole-v1", "--trials", "3", "--storage", "study.db"], "--storage must be a database URL"),
        (["study", "--task", "CartPole-v1", "--trials", "3", "--storage", "study.log"], "--storage: journal files have no"),
        (["study", "--task", "CartPole-v1", "--trials", "3", "--storage", "postgresql://u@h/d"], "postgresql+psycopg://"),
        (["study", "--task", "CartPole-v1", "--trials", "3", "--steps", "100", "--eval-freq", "200"], "--eval-freq (200)"),
    ],
)
def test_bad_arguments_name_the_option(arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        tune.main(arguments)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_reading_a_missing_study_or_other_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    for command in ("export",):
        with pytest.raises(SystemExit) as exit_:
            tune.main([command, "--task", "CartPole-v1", "--storage", storage])
        assert exit_.value.code == 2
        assert f"--storage: no study file {tmp_path / 'study.db'}" in capsys.readouterr().err
    assert not (tmp_path / "study.db").exists(), "reading does not create the file"
    fake_training(monkeypatch, [])
    assert tune.main(["study", "--task", "CartPole-v1", "--trials", "1", "--storage", storage]) == 0
    with pytest.raises(SystemExit):
        tune.main(["export", "--task", "CartPole-v1", "--storage", storage, "--study-name", "other"])
    assert "--study-name: no study 'other'" in capsys.readouterr().err
    # the same study with another budget is refused: its trials would not compare
    with pytest.raises(SystemExit):
        tune.main(["study", "--task", "CartPole-v1", "--trials", "2", "--storage", storage, "--eval-episodes", "5"])
    assert "--eval-episodes: study 'CartPole-v1-worst-of-3' was run with episodes=20, not 5" in capsys.readouterr().err


def test_a_hopeless_trial_is_pruned_after_its_first_seed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seeds: list[int] = []

    def train(task: str, hyperparameters: dict[str, Any], seed: int, steps: int, eval_freq: int, episodes: int) -> Any:
        seeds.append(seed)
        # the first 5 trials (15 seeds) score 500 on every seed; the sixth trial's first seed scores 10
        return curve(500, 500) if len(seeds) <= 15 else curve(10, 10)

    monkeypatch.setattr(tune, "train_seed", train)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert tune.main(["study", "--task", "CartPole-v1", "--trials", "6", "--storage", storage]) == 0
    trials = optuna.load_study(study_name="CartPole-v1-worst-of-3", storage=storage).get_trials()
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 5 + [TrialState.PRUNED]
    assert trials[5].user_attrs["seed_scores"] == [10.0]
    assert seeds == [1000, 1001, 1002] * 5 + [1000], "the pruned trial trained one seed only"
    # --no-prune: the same sixth trial trains every seed and completes
    seeds.clear()
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert tune.main(["study", "--task", "CartPole-v1", "--trials", "6", "--storage", other, "--no-prune"]) == 0
    trials = optuna.load_study(study_name="CartPole-v1-worst-of-3", storage=other).get_trials()
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 6
    assert trials[5].value == 10.0
    assert seeds == [1000, 1001, 1002] * 6


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB tmpfs (we may be root)."""
    with disk.small_disk(tmp_path, "2m") as mount_point:
        yield mount_point


def test_a_full_disk_stops_the_worker_and_loses_no_trial(
    small_disk: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_training(monkeypatch, [])
    storage = f"sqlite:///{small_disk / 'study.db'}"
    command = ["study", "--task", "CartPole-v1", "--storage", storage]
    assert tune.main([*command, "--trials", "2"]) == 0
    filler = small_disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk to the last byte
        for size in (65536, 4096, 1):
            while True:
                try:
                    os.write(descriptor, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(descriptor)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        tune.main([*command, "--trials", "4"])
    assert exit_.value.code == 1
    error = capsys.readouterr().err
    assert "error: the storage failed (" in error and "disk is full" in error, error
    filler.unlink()
    # the study is whole: its two trials are there, and the same command goes on from them
    assert tune.main([*command, "--trials", "4"]) == 0
    trials = optuna.load_study(study_name="CartPole-v1-worst-of-3", storage=storage).get_trials()
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    assert len(complete) == 4 and [trial.number for trial in complete[:2]] == [0, 1]
    assert all(trial.value == 100.0 for trial in complete)
