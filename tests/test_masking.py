"""Invalid-action masking: no invalid action is ever taken, and invalid values never reach a target."""

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib.common.envs import InvalidActionEnvDiscrete
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from sb3_contrib.common.maskable.evaluation import evaluate_policy
from sb3_contrib.common.maskable.utils import get_action_masks
from sb3_contrib.common.wrappers import ActionMasker
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor

from deep_sarsa import DeepSARSA
from deep_sarsa.masking import NextStateMasks, check_action_masks, masks_of
from deep_sarsa.targets import epsilon_greedy_probs, sample_epsilon_greedy

VARIANTS = ["sampled", "expected", "stored"]
FAST = dict(learning_starts=50, buffer_size=2000, batch_size=32, train_freq=4, target_update_interval=100, seed=0)


def trap_masks(env: gym.Env) -> np.ndarray:
    """The mask function given to ActionMasker."""
    return TrapEnv.action_masks(env.unwrapped)  # type: ignore[arg-type]


class CountInvalid(gym.Wrapper):
    """Counts the actions the env receives that its own mask forbids."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.invalid = 0
        self.steps = 0

    def step(self, action: Any) -> Any:
        self.steps += 1
        self.invalid += int(not self.env.get_wrapper_attr("action_masks")()[int(action)])
        return self.env.step(action)


class TrapEnv(gym.Env[np.int64, np.int64]):
    """
    Two states, three actions. Action 2 would pay 100 but is never valid; action 0 pays 1 and
    moves to the other state, action 1 pays 0 and stays. Episodes terminate with probability 0.1
    per step and are cut at 20 steps. In strict mode an invalid action is an error.
    """

    observation_space = spaces.Discrete(2)
    action_space = spaces.Discrete(3)

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self.state, self.t = 0, 0

    def action_masks(self) -> np.ndarray:
        return np.array([True, True, False])

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.int64, dict]:
        super().reset(seed=seed)
        self.state, self.t = 0, 0
        return np.int64(self.state), {}

    def step(self, action: np.int64) -> tuple[np.int64, float, bool, bool, dict]:
        if int(action) == 2 and self.strict:
            raise ValueError("invalid action 2 sent to TrapEnv")
        self.t += 1
        reward = {0: 1.0, 1: 0.0, 2: 100.0}[int(action)]
        if int(action) == 0:
            self.state = 1 - self.state
        terminated = bool(self.np_random.random() < 0.1)
        return np.int64(self.state), reward, terminated, self.t >= 20, {}


@pytest.mark.parametrize("next_action", VARIANTS)
def test_no_invalid_action_during_learning_on_sb3_contrib_env(next_action: str) -> None:
    env = CountInvalid(InvalidActionEnvDiscrete(dim=10, ep_length=30, n_invalid_actions=7))
    model = DeepSARSA("MlpPolicy", env, next_action=next_action, exploration_fraction=0.5, **FAST)  # type: ignore[arg-type]
    model.learn(600)
    assert env.steps == 600 and env.invalid == 0
    # ... and in prediction, random (ε = 1) and greedy
    obs, _ = env.reset()
    for deterministic, rate in [(False, 1.0), (True, 0.0)]:
        model.exploration_rate = rate
        for _ in range(100):
            action, _ = model.predict(obs, deterministic=deterministic, action_masks=get_action_masks(env))
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                obs, _ = env.reset()
    assert env.invalid == 0


def test_no_invalid_action_with_several_envs_and_action_masker() -> None:
    venv = make_vec_env(lambda: ActionMasker(TrapEnv(), trap_masks), n_envs=3, seed=0)
    model = DeepSARSA("MlpPolicy", venv, next_action="stored", exploration_fraction=1.0, **FAST)  # type: ignore[arg-type]
    model.learn(600)  # TrapEnv raises on the invalid action: finishing is the check
    assert model.num_timesteps == 600


def test_without_masking_the_invalid_action_is_taken() -> None:
    env = CountInvalid(ActionMasker(TrapEnv(strict=False), trap_masks))
    model = DeepSARSA("MlpPolicy", env, use_masking=False, **FAST)  # type: ignore[arg-type]
    model.learn(300)
    assert env.invalid > 0  # the check above can fail


def poison_invalid_action(model: DeepSARSA) -> None:
    """Make both networks value the invalid action 2 at 1000 in every state."""
    with th.no_grad():
        for q_net in (model.q_net, model.q_net_target):
            layer = q_net.q_net[-1]
            assert isinstance(layer, th.nn.Linear)
            layer.weight[2].zero_()
            layer.bias[2] = 1000.0


@pytest.mark.parametrize("n_steps", [1, 3])
@pytest.mark.parametrize("next_action", VARIANTS)
def test_invalid_action_values_never_reach_the_targets(next_action: str, n_steps: int) -> None:
    model = DeepSARSA(
        "MlpPolicy",
        TrapEnv(),
        next_action=next_action,  # type: ignore[arg-type]
        n_steps=n_steps,
        policy_kwargs=dict(net_arch=[]),
        **FAST,  # type: ignore[arg-type]
    )
    model.learn(400)
    poison_invalid_action(model)
    for epsilon in (0.0, 0.5, 1.0):
        model.exploration_rate = epsilon
        replay_data, next_state = model._sample(512)
        with th.no_grad():
            targets = model._td_target(replay_data, next_state)
        # Valid values are at most a few units (rewards of 0 or 1 with γ = 0.99 over short
        # episodes, from a barely trained network); one leaked 1000·γ would show at once
        assert targets.abs().max().item() < 50.0, (epsilon, targets.max().item())
    # Without the masks the same batch does bootstrap from the invalid action
    model._masking = False
    model.exploration_rate = 0.0
    replay_data, next_state = model._sample(512)
    with th.no_grad():
        assert model._td_target(replay_data, next_state).max().item() > 500.0


def test_greedy_prediction_picks_the_best_valid_action() -> None:
    model = DeepSARSA("MlpPolicy", TrapEnv(), policy_kwargs=dict(net_arch=[]), **FAST)  # type: ignore[arg-type]
    poison_invalid_action(model)
    obs = np.array([0, 1])
    unmasked, _ = model.predict(obs, deterministic=True)
    assert list(unmasked) == [2, 2]
    masked, _ = model.predict(obs, deterministic=True, action_masks=np.array([[1, 1, 0], [0, 1, 0]]))
    with th.no_grad():
        q = model.q_net(th.as_tensor(obs)).numpy()
    assert masked[0] == int(np.argmax(q[0, :2])) and masked[1] == 1
    single, _ = model.predict(
        np.int64(0),  # type: ignore[arg-type]
        deterministic=True,
        action_masks=np.array([False, True, False]),
    )
    assert single.shape == () and int(single) == 1


@pytest.mark.parametrize(
    "masks, match",
    [
        (np.ones((2, 4), dtype=bool), r"shape \(2, 3\)"),
        (np.ones(3, dtype=bool), r"shape \(2, 3\)"),
        (np.full((2, 3), 0.5), "booleans"),
        (np.array([["a", "b", "c"]] * 2), "booleans"),
        (np.array([[True, False, False], [False, False, False]]), r"no action for observation\(s\) \[1\]"),
    ],
)
def test_bad_masks_are_refused_clearly(masks: np.ndarray, match: str) -> None:
    model = DeepSARSA("MlpPolicy", TrapEnv(), **FAST)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        model.predict(np.array([0, 1]), action_masks=masks)


def test_a_state_without_valid_action_during_learning_is_refused() -> None:
    env = ActionMasker(TrapEnv(), lambda env: np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="no action"):
        DeepSARSA("MlpPolicy", env, **FAST).learn(10)  # type: ignore[arg-type]


def test_masked_epsilon_greedy_by_hand() -> None:
    q = th.tensor([[1.0, 9.0, 4.0, 2.0]])
    masks = th.tensor([[True, False, True, True]])
    # greedy among valid is action 2; ε = 0.3 spread over the 3 valid actions
    probs = epsilon_greedy_probs(q, 0.3, masks)
    np.testing.assert_allclose(probs.numpy(), [[0.1, 0.0, 0.8, 0.1]], atol=1e-6)
    th.manual_seed(0)
    draws = sample_epsilon_greedy(q.repeat(3000, 1), 1.0, masks.repeat(3000, 1))
    counts = th.bincount(draws.flatten(), minlength=4)
    assert counts[1] == 0 and counts.min() == 0 and (counts[[0, 2, 3]] > 900).all()


def test_next_state_masks_are_packed_bits() -> None:
    store = NextStateMasks(buffer_size=5, n_envs=2, n_actions=11)
    assert store.bits.shape == (5, 2, 2) and store.bits.dtype == np.uint8
    rng = np.random.default_rng(0)
    masks = rng.random((2, 11)) < 0.5
    store.write(3, masks, np.array([True, False]))
    read, known = store.read(np.array([3, 3]), np.array([0, 1]))
    np.testing.assert_array_equal(read, masks)
    np.testing.assert_array_equal(known, [True, False])


class TruncatingEnv(TrapEnv):
    """TrapEnv that never terminates, cut at 5 steps, optionally reporting the mask in info."""

    def __init__(self, mask_in_info: bool) -> None:
        super().__init__()
        self.mask_in_info = mask_in_info

    def step(self, action: np.int64) -> tuple[np.int64, float, bool, bool, dict]:
        obs, reward, _, _, info = super().step(action)
        if self.mask_in_info:
            info["action_mask"] = self.action_masks()
        return obs, reward, False, self.t >= 5, info


@pytest.mark.parametrize("mask_in_info", [True, False])
def test_truncated_rows_use_the_mask_in_info_or_do_not_bootstrap(mask_in_info: bool) -> None:
    model = DeepSARSA("MlpPolicy", TruncatingEnv(mask_in_info), **FAST)  # type: ignore[arg-type]
    model.learn(40)
    buffer = model.replay_buffer
    assert buffer is not None
    store = masks_of(buffer)
    assert store is not None
    truncated = buffer.timeouts[:40, 0] > 0
    assert truncated.sum() == 8
    assert store.known[:40, 0][~truncated].all()
    assert (store.known[:40, 0][truncated] == mask_in_info).all()


def test_maskable_evaluation_and_eval_callback(tmp_path: Path) -> None:
    def make() -> gym.Env:
        return Monitor(InvalidActionEnvDiscrete(dim=6, ep_length=20, n_invalid_actions=3))

    callback = MaskableEvalCallback(make(), eval_freq=100, n_eval_episodes=3, log_path=str(tmp_path))
    model = DeepSARSA("MlpPolicy", make(), **FAST)  # type: ignore[arg-type]
    model.learn(200, callback=callback)
    assert len(callback.evaluations_results) == 2
    mean, _ = evaluate_policy(model, make(), n_eval_episodes=3)  # type: ignore[arg-type]
    assert 0.0 <= float(mean) <= 20.0  # type: ignore[arg-type]


def test_save_load_keeps_masked_prediction_and_buffer_masks(tmp_path: Path) -> None:
    model = DeepSARSA("MlpPolicy", TrapEnv(), **FAST)  # type: ignore[arg-type]
    model.learn(200)
    poison_invalid_action(model)
    model.save(tmp_path / "model.zip")
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    loaded = DeepSARSA.load(tmp_path / "model.zip", env=TrapEnv())
    assert loaded.use_masking
    obs = np.array([0, 1])
    masks = np.array([[True, True, False]] * 2)
    np.testing.assert_array_equal(
        loaded.predict(obs, deterministic=True, action_masks=masks)[0],
        model.predict(obs, deterministic=True, action_masks=masks)[0],
    )
    loaded.load_replay_buffer(tmp_path / "buffer.pkl")
    assert loaded.replay_buffer is not None
    store = masks_of(loaded.replay_buffer)
    assert store is not None and store.known[:200].any()
    loaded.learn(100, reset_num_timesteps=False)  # TrapEnv raises on an invalid action


def test_check_action_masks_accepts_lists_and_ints() -> None:
    np.testing.assert_array_equal(check_action_masks([1, 0, 1], 1, 3), [[True, False, True]])
