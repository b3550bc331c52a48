"""``python -m deep_sarsa.zoo``: rl-zoo3 with DeepSARSA registered as ``--algo deep_sarsa``.

Most commands run in this process (``deep_sarsa.zoo.__main__.main``), in a temporary folder, with budgets of a few
hundred steps; the ones that must start fresh interpreters run as subprocesses.
"""

import inspect
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import optuna
import pytest
import rl_zoo3.exp_manager
import rl_zoo3.utils
import yaml
from stable_baselines3.common.callbacks import EvalCallback
from zoo_helpers import InvalidActionCounter

import deep_sarsa.zoo as zoo
from deep_sarsa import DeepSARSA
from deep_sarsa.masking import ToyTextActionMasker
from deep_sarsa.presets import PRESETS_FILE, load_presets
from deep_sarsa.safe_pickle import UnsafeFileError
from deep_sarsa.validation import check_hyperparameters
from deep_sarsa.zoo.__main__ import main
from deep_sarsa.zoo.evaluation import MaskAwareEvalCallback
from deep_sarsa.zoo.sampler import convert_deep_sarsa_params, experiment_settings, sample_deep_sarsa_params

#: DeepSARSA's constructor defaults, for check_hyperparameters
_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(DeepSARSA.__init__).parameters.items()
    if parameter.default is not inspect.Parameter.empty and name != "_init_setup_model"
}
MASKED_TAXI = "env_wrapper:['zoo_helpers.InvalidActionCounter', 'deep_sarsa.masking.ToyTextActionMasker']"


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_folder(log_folder: Path, env_id: str, run: int = 1) -> Path:
    return log_folder / "deep_sarsa" / f"{env_id}_{run}"


def saved_config(folder: Path, env_id: str) -> dict:
    # rl-zoo3 writes config.yml as a list of [key, value] pairs (an OrderedDict)
    text = (folder / env_id / "config.yml").read_text().replace("!!python/object/apply:collections.OrderedDict", "")
    return dict(yaml.safe_load(text)[0])


def train(*arguments: str) -> int:
    return main(["train", "--algo", "deep_sarsa", "--seed", "0", "--eval-freq", "-1", "--verbose", "0", *arguments])


def test_registration_reaches_every_rl_zoo3_command() -> None:
    zoo.register()
    zoo.register()  # idempotent
    assert rl_zoo3.utils.ALGOS["deep_sarsa"] is DeepSARSA
    from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER

    assert HYPERPARAMS_SAMPLER["deep_sarsa"] is sample_deep_sarsa_params
    assert HYPERPARAMS_CONVERTER["deep_sarsa"] is convert_deep_sarsa_params
    assert rl_zoo3.exp_manager.EvalCallback is MaskAwareEvalCallback


def test_unknown_command_and_no_command_exit_2_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err
    assert main([]) == 2
    assert "COMMAND: one of train, enjoy, record_video" in capsys.readouterr().err


def test_train_without_conf_reads_the_package_yml(in_tmp: Path) -> None:
    assert train("--env", "CartPole-v1", "-n", "300", "-f", "logs") == 0
    folder = run_folder(in_tmp / "logs", "CartPole-v1")
    config = saved_config(folder, "CartPole-v1")
    entry = yaml.safe_load(PRESETS_FILE.read_text())["CartPole-v1"]
    for key in ("next_action", "learning_rate", "batch_size", "buffer_size", "target_update_interval", "policy_kwargs"):
        assert config[key] == entry[key], key
    model = DeepSARSA.load(folder / "CartPole-v1.zip")
    # the yml's train_freq of 256 steps rounds 300 up to two rollouts
    assert model.num_timesteps == 512 and model.next_action == entry["next_action"] and model.batch_size == entry["batch_size"]


def test_an_env_without_an_entry_uses_the_default_entry(in_tmp: Path) -> None:
    assert train("--env", "FrozenLake-v1", "-n", "200", "-f", "logs", "--hyperparams", "buffer_size:1000") == 0
    folder = run_folder(in_tmp / "logs", "FrozenLake-v1")
    config = saved_config(folder, "FrozenLake-v1")
    assert config["policy"] == "MlpPolicy" and config["n_timesteps"] == 1e6  # the default entry, budget overridden by -n
    assert DeepSARSA.load(folder / "FrozenLake-v1.zip").num_timesteps == 200


def test_the_yml_has_rl_zoo3_fallback_entries_that_are_not_presets() -> None:
    entries = yaml.safe_load(PRESETS_FILE.read_text())
    assert {"default", "atari"} <= set(entries)
    assert entries["atari"]["policy"] == "CnnPolicy" and entries["atari"]["frame_stack"] == 4
    assert not {"default", "atari"} & set(load_presets())


def test_continue_training_with_i(in_tmp: Path) -> None:
    every_step = ["--hyperparams", "train_freq:1", "gradient_steps:1", "learning_starts:100"]
    assert train("--env", "CartPole-v1", "-n", "300", "-f", "logs", "--save-replay-buffer", *every_step) == 0
    first = run_folder(in_tmp / "logs", "CartPole-v1")
    assert (first / "replay_buffer.pkl").is_file()
    arguments = ["-f", "logs", "-i", str(first / "CartPole-v1.zip"), "--save-replay-buffer", *every_step]
    assert train("--env", "CartPole-v1", "-n", "200", *arguments) == 0
    second = run_folder(in_tmp / "logs", "CartPole-v1", 2)
    model = DeepSARSA.load(second / "CartPole-v1.zip")
    model.load_replay_buffer(second / "replay_buffer.pkl")
    assert model.replay_buffer is not None and model.replay_buffer.size() == 500  # the first run's 300 steps, then 200
    assert model.num_timesteps == 200  # rl-zoo3 counts the new run's steps from 0


def test_continue_training_a_run_with_rl_zoo3s_linear_schedule(in_tmp: Path) -> None:
    linear = ["--hyperparams", "learning_rate:'lin_1e-3'", "train_freq:1", "gradient_steps:1", "learning_starts:100"]
    assert train("--env", "CartPole-v1", "-n", "200", "-f", "logs", *linear) == 0
    first = run_folder(in_tmp / "logs", "CartPole-v1") / "CartPole-v1.zip"
    with pytest.raises(UnsafeFileError, match=r"rl_zoo3\.utils\.SimpleLinearSchedule"):
        DeepSARSA.load(first)  # rl-zoo3's schedule class is not rebuilt from a file...
    assert train("--env", "CartPole-v1", "-n", "100", "-f", "logs", "-i", str(first), *linear) == 0  # ...nor needed for -i
    second = DeepSARSA.load(run_folder(in_tmp / "logs", "CartPole-v1", 2) / "CartPole-v1.zip", trusted=True)
    assert second.num_timesteps == 100
    assert type(second.learning_rate).__name__ == "SimpleLinearSchedule" and second.lr_schedule(1.0) == pytest.approx(1e-3)


def test_enjoy_plays_without_allocating_the_replay_buffer(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train("--env", "CartPole-v1", "-n", "300", "-f", "logs") == 0
    path = run_folder(in_tmp / "logs", "CartPole-v1") / "CartPole-v1.zip"
    plain = DeepSARSA.load(path).replay_buffer
    assert plain is not None and plain.buffer_size == 100_000  # what a plain load allocates (the yml's)
    player = zoo.PlayingDeepSARSA.load(path)
    assert (
        player.model.replay_buffer is not None and player.model.replay_buffer.buffer_size == 1 and player.num_timesteps == 512
    )
    capsys.readouterr()
    assert main(["enjoy", "--algo", "deep_sarsa", "--env", "CartPole-v1", "-f", "logs", "-n", "300", "--no-render"]) == 0
    output = capsys.readouterr().out
    assert "Episode Reward" in output and "Mean reward" in output


def test_record_video_without_a_display(in_tmp: Path) -> None:
    assert train("--env", "CartPole-v1", "-n", "300", "-f", "logs") == 0
    command = ["record_video", "--algo", "deep_sarsa", "--env", "CartPole-v1", "-f", "logs", "-n", "60", "-o", "videos"]
    assert main(command) == 0
    videos = list((in_tmp / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
    assert "final-model-deep_sarsa-CartPole-v1" in videos[0].name


def test_zoo_command_rewrites_the_interpreters_rl_zoo3_starts() -> None:
    python = sys.executable
    assert zoo.zoo_command(["python", "-m", "rl_zoo3.record_video", "--algo", "deep_sarsa"]) == [
        python, "-m", "deep_sarsa.zoo", "record_video", "--algo", "deep_sarsa",
    ]  # fmt: skip
    assert zoo.zoo_command(["python", "enjoy.py", "--algo", "deep_sarsa", "-n", 5]) == [
        python, "-m", "deep_sarsa.zoo", "enjoy", "--algo", "deep_sarsa", "-n", "5",
    ]  # fmt: skip
    assert zoo.zoo_command(["python", "-m", "rl_zoo3.plots.plot_train", "-f", "logs"]) == [
        python, "-m", "deep_sarsa.zoo", "plot_train", "-f", "logs",
    ]  # fmt: skip
    assert zoo.zoo_command(["python", "-m", "rl_zoo3.no_such_script"]) is None
    assert zoo.zoo_command(["ffmpeg", "-i", "x.mp4"]) is None
    assert zoo.zoo_command(["python", "-c", "print()"]) is None
    assert zoo.zoo_command("python -m rl_zoo3.train") is None


def test_a_subprocess_rl_zoo3_starts_sees_the_registration(in_tmp: Path) -> None:
    # What record_training does: subprocess.call(["python", "-m", "rl_zoo3.record_video", ...]) from a registered process
    script = (
        "import subprocess, sys\n"
        "import deep_sarsa.zoo as zoo\n"
        "zoo.register()\n"
        "zoo.redirect_subprocesses()\n"
        "sys.exit(subprocess.call(['python', '-m', 'rl_zoo3.record_video', '--help'], stdout=open('help.txt', 'w')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "deep_sarsa" in (in_tmp / "help.txt").read_text()  # --algo's choices in the child include deep_sarsa


@pytest.mark.slow
def test_record_training_records_every_model_in_fresh_interpreters(in_tmp: Path) -> None:
    assert train("--env", "CartPole-v1", "-n", "300", "-f", "logs", "--eval-freq", "150", "--eval-episodes", "1") == 0
    videos = in_tmp / "videos"
    command = [sys.executable, "-m", "deep_sarsa.zoo", "record_training", "--algo", "deep_sarsa", "--env", "CartPole-v1"]
    result = subprocess.run(
        [*command, "-f", "logs", "-n", "40", "-o", str(videos)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(path.name for path in videos.glob("*.mp4"))
    assert any(name.startswith("final-model-deep_sarsa") for name in names), names
    assert any(name.startswith("best-model-deep_sarsa") for name in names), names
    assert "training.mp4" in names


def test_plots_run_on_a_zoo_run(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib.pyplot as plt

    assert train("--env", "CartPole-v1", "-n", "600", "-f", "logs") == 0
    saved: list[str] = []
    monkeypatch.setattr(plt, "show", lambda *args, **kwargs: saved.append("shown"))
    command = ["plot_train", "--algo", "deep_sarsa", "--env", "CartPole-v1", "-f", "logs", "-x", "steps", "-w", "5"]
    assert main(command) == 0
    assert saved == ["shown"]
    (axes,) = plt.gcf().get_axes()
    assert axes.get_title() == "Training Episodic Reward" and axes.has_data()  # the run's learning curve


# --- masks ---------------------------------------------------------------------------------------------------------


def test_the_mask_wrapper_is_importable_by_name() -> None:
    wrapper = rl_zoo3.utils.get_wrapper_class({"env_wrapper": "deep_sarsa.masking.ToyTextActionMasker"})
    assert wrapper is not None
    env = wrapper(gym.make("Taxi-v4"))
    assert isinstance(env, ToyTextActionMasker)
    env.reset(seed=0)
    taxi: Any = env.unwrapped
    assert np.array_equal(env.action_masks(), taxi.action_mask(taxi.s).astype(bool))


def test_masked_taxi_trains_and_evaluates_with_masks_in_rl_zoo3(in_tmp: Path) -> None:
    InvalidActionCounter.reset_counts()
    arguments = ["--env", "Taxi-v4", "-n", "400", "-f", "logs", "--eval-freq", "200", "--eval-episodes", "2"]
    assert train(*arguments, "--hyperparams", MASKED_TAXI) == 0
    counts = dict(InvalidActionCounter.counts)
    assert counts["steps"] >= 400 + 2 * 2 * 20  # training, then two evaluations of two episodes
    assert counts["invalid"] == 0, counts
    evaluations = np.load(run_folder(in_tmp / "logs", "Taxi-v4") / "evaluations.npz")
    assert evaluations["results"].shape == (2, 2) and (evaluations["results"] > -2000).all()

    # enjoy, on the env of the run's saved config (its env_wrapper), with masks too; the config names a wrapper of the
    # tests' own module, outside the modules a folder may import from unless --trusted
    InvalidActionCounter.reset_counts()
    enjoy = ["enjoy", "--algo", "deep_sarsa", "--env", "Taxi-v4", "-f", "logs", "-n", "300", "--no-render"]
    assert main(enjoy) == 2
    assert InvalidActionCounter.counts["steps"] == 0
    assert main([*enjoy, "--trusted"]) == 0
    assert InvalidActionCounter.counts["steps"] == 300 and InvalidActionCounter.counts["invalid"] == 0


def test_without_mask_aware_evaluation_the_same_run_takes_invalid_actions(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control of the test above: rl-zoo3's own EvalCallback, same run, same seed
    zoo.register()
    monkeypatch.setattr(rl_zoo3.exp_manager, "EvalCallback", EvalCallback)
    InvalidActionCounter.reset_counts()
    arguments = ["--env", "Taxi-v4", "-n", "400", "-f", "logs", "--eval-freq", "200", "--eval-episodes", "2"]
    assert train(*arguments, "--hyperparams", MASKED_TAXI) == 0
    assert InvalidActionCounter.counts["invalid"] > 0


def test_trial_evaluation_of_optimize_uses_masks(in_tmp: Path) -> None:
    InvalidActionCounter.reset_counts()
    arguments = ["--env", "Taxi-v4", "-n", "300", "-f", "logs", "--optimize", "--n-trials", "2", "--n-evaluations", "2"]
    storage = f"sqlite:///{in_tmp / 'taxi.db'}"
    options = ["--eval-episodes", "2", "--sampler", "random", "--pruner", "none", "--no-optim-plots", "--study-name", "t"]
    assert train(*arguments, *options, "--storage", storage, "--hyperparams", MASKED_TAXI) == 0
    assert InvalidActionCounter.counts["steps"] >= 2 * (300 + 2 * 2 * 20)
    assert InvalidActionCounter.counts["invalid"] == 0
    trials = optuna.load_study(study_name="t", storage=storage).trials
    assert [trial.state for trial in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(trial.value is not None and trial.value > -2000 for trial in trials)


def test_mask_aware_eval_callback_leaves_unmasked_envs_and_other_models_to_sb3() -> None:
    from stable_baselines3 import DQN
    from stable_baselines3.common.env_util import make_vec_env

    masked = make_vec_env("Taxi-v4", wrapper_class=ToyTextActionMasker)
    for model, env, expected in [
        (DeepSARSA("MlpPolicy", masked, buffer_size=100), masked, True),
        (DeepSARSA("MlpPolicy", masked, buffer_size=100, use_masking=False), masked, False),
        (DeepSARSA("MlpPolicy", "CartPole-v1", buffer_size=100), make_vec_env("CartPole-v1"), False),
        (DQN("MlpPolicy", masked, buffer_size=100), masked, False),
    ]:
        callback = MaskAwareEvalCallback(env, eval_freq=1, n_eval_episodes=1)
        callback.init_callback(model)
        assert callback.use_masking is expected


# --- the sampler ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("buffer_size", [16, 1000, 1_000_000])
def test_the_sampler_never_gives_an_invalid_combination(buffer_size: int) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    seen_batch_sizes, seen_next_actions, seen_losses = set(), set(), set()
    for _ in range(150):
        trial = study.ask()
        with experiment_settings({"buffer_size": buffer_size, "learning_starts": 1000}, n_timesteps=600):
            sampled = sample_deep_sarsa_params(trial, 2, 1, {"using_her_replay_buffer": False, "her_kwargs": {}})
        study.tell(trial, 0.0)
        assert sampled["batch_size"] <= buffer_size
        assert 1 <= sampled["gradient_steps"] <= sampled["train_freq"]
        assert sampled["learning_starts"] == 300  # the yml's 1000 would leave the 600-step trial nothing to learn
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # not even the warning of batch_size > buffer_size
            check_hyperparameters(**{**_DEFAULTS, "buffer_size": buffer_size, **sampled})
        assert convert_deep_sarsa_params(trial.params) == {k: v for k, v in sampled.items() if k != "learning_starts"}
        seen_batch_sizes.add(sampled["batch_size"])
        seen_next_actions.add(sampled["next_action"])
        seen_losses.add(sampled["loss"])
    assert max(seen_batch_sizes) == min(2048, 2 ** int(np.log2(buffer_size)))
    assert seen_next_actions == {"sampled", "expected", "stored"} and seen_losses == {"mse", "huber"}


def test_the_converter_names_missing_and_bad_parameters() -> None:
    with pytest.raises(ValueError, match=r"missing \['loss', 'next_action'\]"):
        convert_deep_sarsa_params({"one_minus_gamma": 0.01, "batch_size_pow": 5, "learning_rate": 1e-3, "train_freq": 4,
                                   "subsample_steps": 2, "exploration_final_eps": 0.05, "exploration_fraction": 0.1,
                                   "target_update_interval": 100, "net_arch": "small"})  # fmt: skip
    with (
        pytest.raises(ValueError, match="buffer_size must be an integer >= 4"),
        experiment_settings({"buffer_size": 2}, n_timesteps=100),
    ):
        sample_deep_sarsa_params(optuna.create_study().ask(), 2, 1, {})


def test_trial_id_trains_with_a_finished_trials_parameters(in_tmp: Path) -> None:
    storage = f"sqlite:///{in_tmp / 's.db'}"
    options = ["--sampler", "random", "--pruner", "none", "--no-optim-plots", "--study-name", "s", "--storage", storage]
    assert train("--env", "CartPole-v1", "-n", "200", "-f", "logs", "--optimize", "--n-trials", "1", "--n-evaluations",
                 "1", "--eval-episodes", "1", *options) == 0  # fmt: skip
    params = optuna.load_study(study_name="s", storage=storage).trials[0].params
    assert train("--env", "CartPole-v1", "-n", "200", "-f", "logs", "--storage", storage, "--study-name", "s",
                 "--trial-id", "0") == 0  # fmt: skip
    (path,) = (in_tmp / "logs" / "deep_sarsa").glob("CartPole-v1_*/CartPole-v1.zip")  # the optimization saves no model
    model = DeepSARSA.load(path)
    assert model.next_action == params["next_action"] and model.loss == params["loss"]
    assert model.batch_size == 2 ** params["batch_size_pow"] and model.gamma == pytest.approx(1 - params["one_minus_gamma"])


def test_help_of_a_command_lists_deep_sarsa(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--help"]) == 0
    assert "deep_sarsa" in capsys.readouterr().out
