"""The shipped presets file: rl-zoo's format, valid DeepSARSA keywords, rl-zoo's DQN values where it says so."""

from pathlib import Path

import gymnasium as gym
import pytest

from deep_sarsa import DeepSARSA
from deep_sarsa.presets import PRESETS_FILE, RL_ZOO_DQN, load_presets, parse_policy_kwargs, preset

TASKS = ["CartPole-v1", "Acrobot-v1", "MountainCar-v0", "LunarLander-v3", "Taxi-v4", "CliffWalking-v1"]


def test_the_file_is_inside_the_package_and_has_every_benchmark_task() -> None:
    assert PRESETS_FILE.is_file() and PRESETS_FILE.parent.parent.name == "deep_sarsa"
    assert sorted(load_presets()) == sorted(TASKS)


@pytest.mark.parametrize("env_id", TASKS)
def test_each_entry_builds_a_model(env_id: str) -> None:
    entry = preset(env_id)
    assert entry.policy == "MlpPolicy" and entry.n_timesteps >= 50_000
    assert entry.hyperparameters["next_action"] in ("sampled", "expected", "stored")
    try:
        env = gym.make(env_id)
    except gym.error.DependencyNotInstalled:  # LunarLander without Box2D: the keywords still get checked
        env = gym.make("CartPole-v1")
    model = DeepSARSA(entry.policy, env, **entry.hyperparameters)
    assert model.batch_size == entry.hyperparameters["batch_size"]
    assert model.policy.net_arch == entry.hyperparameters["policy_kwargs"]["net_arch"]


@pytest.mark.parametrize("env_id", sorted(RL_ZOO_DQN))
def test_classic_control_entries_keep_rl_zoos_dqn_values(env_id: str) -> None:
    hyperparameters = dict(preset(env_id).hyperparameters)
    del hyperparameters["next_action"]
    assert hyperparameters == RL_ZOO_DQN[env_id]


def test_preset_is_a_fresh_copy() -> None:
    preset("CartPole-v1").hyperparameters["policy_kwargs"]["net_arch"].append(7)
    assert preset("CartPole-v1").hyperparameters["policy_kwargs"] == {"net_arch": [256, 256]}


def test_unknown_env_id_lists_the_presets() -> None:
    with pytest.raises(ValueError, match=r"env_id='Pong-v5'.*CartPole-v1"):
        preset("Pong-v5")


NOT_LITERAL = ["dict(activation_fn=nn.ReLU)", "list(net_arch=[64])", "dict(net_arch=[64]", "__import__('os')"]


@pytest.mark.parametrize("text", NOT_LITERAL)
def test_policy_kwargs_strings_are_parsed_without_eval(text: str) -> None:
    with pytest.raises(ValueError, match="policy_kwargs must be a literal"):
        parse_policy_kwargs(text)
    parsed = parse_policy_kwargs("dict(net_arch=[64, 64], normalize_images=False)")
    assert parsed == {"net_arch": [64, 64], "normalize_images": False}


def test_a_bad_presets_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "list.yml").write_text("- CartPole-v1\n")
    (tmp_path / "broken.yml").write_text("CartPole-v1: [\n")
    (tmp_path / "no_budget.yml").write_text("CartPole-v1:\n  gamma: 0.9\n")
    cases = [("list.yml", "mapping of env ids"), ("broken.yml", "not a readable YAML"), ("no_budget.yml", "n_timesteps")]
    for name, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            load_presets(tmp_path / name)
        assert name in str(error.value)
    with pytest.raises(ValueError, match=r"missing\.yml"):
        load_presets(tmp_path / "missing.yml")
