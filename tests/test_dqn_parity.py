"""DeepSARSA as a drop-in for SB3's DQN: the same keywords accepted, and settings changed later read as DQN reads them."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import stable_baselines3.dqn.dqn as dqn_module
import torch as th
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy

import deep_sarsa.deep_sarsa as deep_sarsa_module
from deep_sarsa import DeepSARSA
from deep_sarsa.deep_sarsa import NextState
from deep_sarsa.wrappers import ZeroBasedActions

SMALL: dict[str, Any] = dict(learning_starts=10, buffer_size=500, batch_size=8, seed=0)
ALGORITHMS: list[type[Any]] = [DQN, DeepSARSA]


@pytest.fixture
def sync_counts(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[type, int]]:
    """How many times each algorithm calls polyak_update (twice per target sync: weights, then batch-norm stats)."""
    counts: dict[type, int] = {DQN: 0, DeepSARSA: 0}

    def counting(algorithm: type, original: Callable[..., None]) -> Callable[..., None]:
        def polyak_update(*args: Any, **kwargs: Any) -> None:
            counts[algorithm] += 1
            original(*args, **kwargs)

        return polyak_update

    monkeypatch.setattr(dqn_module, "polyak_update", counting(DQN, dqn_module.polyak_update))
    monkeypatch.setattr(deep_sarsa_module, "polyak_update", counting(DeepSARSA, deep_sarsa_module.polyak_update))
    yield counts


def test_target_update_interval_set_after_construction_takes_effect_as_in_dqn(sync_counts: dict[type, int]) -> None:
    for algorithm in ALGORITHMS:
        model = algorithm("MlpPolicy", "CartPole-v1", **SMALL)
        model.target_update_interval = 50
        model.learn(200)
    assert sync_counts[DQN] == sync_counts[DeepSARSA] == 2 * 4


def test_target_update_interval_given_to_load_takes_effect_as_in_dqn(sync_counts: dict[type, int], tmp_path: Path) -> None:
    for algorithm in ALGORITHMS:
        algorithm("MlpPolicy", "CartPole-v1", **SMALL).save(tmp_path / algorithm.__name__)
        loaded = algorithm.load(tmp_path / algorithm.__name__, env=gym.make("CartPole-v1"), target_update_interval=50)
        loaded.learn(200)
    assert sync_counts[DQN] == sync_counts[DeepSARSA] == 2 * 4


def test_target_update_interval_switched_to_episodes_while_training(sync_counts: dict[type, int]) -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", **SMALL)
    model.learn(100)
    model.target_update_interval = (2, "episode")
    episodes_before = model._episode_num
    model.learn(300, reset_num_timesteps=False)
    assert sync_counts[DeepSARSA] == 2 * ((model._episode_num - episodes_before) // 2)


def test_a_bad_target_update_interval_set_later_is_refused_when_learning_starts() -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", **SMALL)
    model.target_update_interval = 0
    with pytest.raises(ValueError, match="target_update_interval must be a positive integer"):
        model.learn(10)


def record_train_calls(model: Any) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    train = model.train

    def recording(gradient_steps: int, batch_size: int = 100) -> None:
        calls.append((gradient_steps, batch_size))
        train(gradient_steps, batch_size)

    model.train = recording
    return calls


def test_batch_size_and_gradient_steps_set_later_are_read_as_in_dqn() -> None:
    calls = {}
    for algorithm in ALGORITHMS:
        model = algorithm("MlpPolicy", "CartPole-v1", **SMALL)
        model.batch_size, model.gradient_steps = 4, 3
        calls[algorithm] = record_train_calls(model)
        model.learn(60)
    assert calls[DQN] == calls[DeepSARSA] and set(calls[DQN]) == {(3, 4)}


def target_weights(model: BaseAlgorithm) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in model.q_net_target.parameters()]  # type: ignore[attr-defined]


def test_tau_set_later_is_read_as_in_dqn() -> None:
    for algorithm in ALGORITHMS:
        model = algorithm("MlpPolicy", "CartPole-v1", target_update_interval=20, **SMALL)
        model.tau = 0.0
        before = target_weights(model)
        model.learn(100)
        for a, b in zip(before, target_weights(model), strict=True):
            np.testing.assert_array_equal(a, b)


def test_gamma_set_later_is_read() -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", **SMALL)
    model.learn(50)
    model.gamma = 0.0
    assert model.replay_buffer is not None
    samples = model.replay_buffer.sample(16)
    with th.no_grad():
        targets = model._td_target(samples, NextState())
    np.testing.assert_allclose(targets.numpy(), samples.rewards.numpy())


def test_exploration_settings_are_read_as_in_dqn(tmp_path: Path) -> None:
    rates = {}
    for algorithm in ALGORITHMS:
        model = algorithm("MlpPolicy", "CartPole-v1", **SMALL)
        model.exploration_final_eps = 0.5  # DQN builds its schedule at set-up: no effect
        model.learn(100)
        model.save(tmp_path / algorithm.__name__)
        loaded = algorithm.load(
            tmp_path / algorithm.__name__, env=gym.make("CartPole-v1"), exploration_initial_eps=0.3, exploration_final_eps=0.3
        )
        loaded.learn(20)  # load rebuilds the schedule from the given values
        rates[algorithm] = (model.exploration_rate, loaded.exploration_rate)
    assert rates[DQN] == rates[DeepSARSA] == (pytest.approx(0.05), pytest.approx(0.3))


@pytest.mark.parametrize("learning_rate", [0.0, 0.02])
def test_learning_rate_from_custom_objects_is_used_as_in_dqn(learning_rate: float, tmp_path: Path) -> None:
    for algorithm in ALGORITHMS:
        algorithm("MlpPolicy", "CartPole-v1", **SMALL).save(tmp_path / algorithm.__name__)
        loaded = algorithm.load(
            tmp_path / algorithm.__name__, env=gym.make("CartPole-v1"), custom_objects={"learning_rate": learning_rate}
        )
        loaded.learn(40)
        assert loaded.policy.optimizer.param_groups[0]["lr"] == learning_rate, algorithm


@pytest.mark.parametrize(
    "keyword, value, warning",
    [
        ("tau", 0.0, "tau=0: the target network is never updated"),
        ("learning_rate", 0.0, "learning_rate=0: the Q-network is never updated"),
        ("max_grad_norm", 0.0, "max_grad_norm=0: every gradient is clipped to zero"),
        ("batch_size", 1000, r"batch_size \(1000\) is larger than buffer_size \(500\)"),
    ],
)
def test_what_dqn_accepts_is_accepted_with_a_warning(keyword: str, value: Any, warning: str) -> None:
    settings = dict(SMALL, **{keyword: value})
    DQN("MlpPolicy", "CartPole-v1", **settings).learn(40)
    with pytest.warns(UserWarning, match=warning):
        model = DeepSARSA("MlpPolicy", "CartPole-v1", **settings)
    model.learn(40)
    assert model._n_updates > 0


def test_a_policy_that_is_not_a_q_network_policy_is_refused_naming_those_that_work() -> None:
    policies: list[Any] = [ActorCriticPolicy, "ActorCriticPolicy"]
    for policy in policies:
        with pytest.raises(ValueError, match=r"policy must be one of 'MlpPolicy', 'CnnPolicy', 'MultiInputPolicy' or a sub"):
            DeepSARSA(policy, "CartPole-v1")


def test_policy_kwargs_the_policy_does_not_take_are_refused() -> None:
    with pytest.raises(ValueError, match=r"policy_kwargs must hold keywords of MlpPolicy, got unknown keys \['n_layers'\]"):
        DeepSARSA("MlpPolicy", "CartPole-v1", policy_kwargs=dict(n_layers=2))


class OffsetActions(gym.Env):
    """One state; the actions are Discrete(3, start=5), and action 7 pays 1."""

    observation_space = spaces.Box(0, 1, (1,))
    action_space = spaces.Discrete(3, start=5)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        assert self.action_space.contains(action), action
        return np.zeros(1, dtype=np.float32), float(action == 7), True, False, {}


def test_discrete_actions_that_do_not_start_at_zero_are_refused_with_the_wrapper_to_use() -> None:
    with pytest.raises(ValueError, match=r"action_space must start at 0 .* got Discrete\(3, start=5\).*ZeroBasedActions"):
        DeepSARSA("MlpPolicy", OffsetActions())
    env = ZeroBasedActions(OffsetActions())
    model = DeepSARSA("MlpPolicy", env, learning_rate=1e-2, exploration_fraction=0.5, **dict(SMALL, seed=1))
    model.learn(600)
    action, _ = model.predict(np.zeros(1, dtype=np.float32), deterministic=True)
    assert env.action(action) == 7
    assert th.isfinite(next(model.policy.parameters())).all()
