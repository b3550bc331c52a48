"""``next_action="stored"``: a' is the action actually taken next in the same env."""

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.env_util import make_vec_env

from deep_sarsa import DeepSARSA
from deep_sarsa.buffers import bootstrap_rows, mark_newest_rows_truncated, sample_with_indices, stored_next_actions

OBS_SPACE = spaces.Box(-1, 1, (2,), np.float32)
ACTION_SPACE = spaces.Discrete(5)


Layout = list[list[tuple[int, int]]]  # per step, per env: (action, 0 = goes on / 1 = terminated / 2 = truncated)


def add_steps(buffer: ReplayBuffer, layout: Layout) -> list[list[dict[str, Any]]]:
    """Add the steps of ``layout``; return each env's own log of what happened, step by step.

    The observation of each transition is its (env, step) id, so rows can be recognised in samples.
    """
    log: list[list[dict[str, Any]]] = [[] for _ in range(buffer.n_envs)]
    for step in layout:
        actions = np.array([action for action, _ in step])
        terminated = np.array([end == 1 for _, end in step])
        truncated = np.array([end == 2 for _, end in step])
        infos = [{"TimeLimit.truncated": bool(t)} for t in truncated]
        ids = np.array([[env, len(log[env])] for env in range(buffer.n_envs)], dtype=np.float32) / 1000
        buffer.add(ids, ids, actions, np.zeros(buffer.n_envs), terminated | truncated, infos)
        for env, entry in enumerate(log):
            entry.append({"action": int(actions[env]), "end": bool(terminated[env] | truncated[env])})
    return log


def fill(buffer: ReplayBuffer, n_steps: int, rng: np.random.Generator) -> list[list[dict[str, Any]]]:
    """Add random transitions (8% terminated, 6% truncated)."""
    layout = [
        [
            (int(rng.integers(ACTION_SPACE.n)), (int(np.searchsorted([0.08, 0.14], rng.random(), side="right")) + 1) % 3)
            for _ in range(buffer.n_envs)
        ]
        for _ in range(n_steps)
    ]
    return add_steps(buffer, layout)


def check_every_row(buffer: ReplayBuffer, log: list[list[dict[str, Any]]], n_steps: int) -> int:
    """Compare stored_next_actions on every row with the envs' logs; return how many a' existed."""
    grid = np.meshgrid(np.arange(buffer.buffer_size if buffer.full else buffer.pos), np.arange(buffer.n_envs))
    rows, envs = grid[0].ravel(), grid[1].ravel()
    next_actions, available = stored_next_actions(buffer, rows, envs)
    newest = (buffer.pos - 1) % buffer.buffer_size
    checked = 0
    for row, env, action, ok in zip(rows, envs, next_actions, available, strict=True):
        t = len(log[env]) - 1 - (newest - row) % buffer.buffer_size  # the env's step that wrote this row
        expected = expected_next_action(log[env], int(t), n_steps)
        assert ok == (expected is not None), (row, env, t)
        if expected is not None:
            assert action == expected
            checked += 1
    return checked


def expected_next_action(log: list[dict[str, Any]], t: int, n_steps: int) -> int | None:
    """Walk the env's own log: the action after the n-step sequence starting at t, or None."""
    last = t
    for k in range(n_steps):
        last = t + k
        if log[last]["end"] or last == len(log) - 1:
            break
    if log[last]["end"] or last == len(log) - 1:
        return None
    return log[last + 1]["action"]


@pytest.mark.parametrize("n_envs", [1, 3])
@pytest.mark.parametrize("n_steps", [1, 3])
@pytest.mark.parametrize("total", [5, 13, 47])  # before, at and well past wrap-around
def test_stored_next_action_is_the_action_taken_next(n_envs: int, n_steps: int, total: int) -> None:
    rng = np.random.default_rng(total * 10 + n_envs)
    kwargs: dict[str, Any] = dict(n_envs=n_envs)
    if n_steps > 1:
        buffer: ReplayBuffer = NStepReplayBuffer(10 * n_envs, OBS_SPACE, ACTION_SPACE, n_steps=n_steps, **kwargs)
    else:
        buffer = ReplayBuffer(10 * n_envs, OBS_SPACE, ACTION_SPACE, **kwargs)
    log = fill(buffer, total, rng)
    assert check_every_row(buffer, log, n_steps) > 0


@settings(max_examples=150, deadline=None)
@given(
    n_envs=st.integers(1, 3),
    rows=st.integers(2, 8),
    n_steps=st.integers(1, 4),
    data=st.data(),
)
def test_stored_next_action_property(n_envs: int, rows: int, n_steps: int, data: st.DataObject) -> None:
    """Random episode layouts, env counts, buffer sizes and wrap-around positions."""
    step = st.lists(st.tuples(st.integers(0, 4), st.sampled_from([0, 0, 0, 1, 2])), min_size=n_envs, max_size=n_envs)
    layout = data.draw(st.lists(step, min_size=1, max_size=4 * rows))
    if n_steps > 1:
        buffer: ReplayBuffer = NStepReplayBuffer(rows * n_envs, OBS_SPACE, ACTION_SPACE, n_envs=n_envs, n_steps=n_steps)
    else:
        buffer = ReplayBuffer(rows * n_envs, OBS_SPACE, ACTION_SPACE, n_envs=n_envs)
    log = add_steps(buffer, layout)
    check_every_row(buffer, log, n_steps)
    # The row bootstrapped from is the one whose next observation SB3 itself returns
    samples, batch_inds, env_indices = sample_with_indices(buffer, 32)
    last_rows, _ = bootstrap_rows(buffer, batch_inds, env_indices)
    np.testing.assert_array_equal(samples.next_observations.numpy(), buffer.next_observations[last_rows, env_indices])  # type: ignore[union-attr]


@pytest.mark.parametrize("n_envs", [1, 4])
def test_sample_with_indices_samples_and_consumes_randomness_like_sample(n_envs: int) -> None:
    buffer = ReplayBuffer(40, OBS_SPACE, ACTION_SPACE, n_envs=n_envs)
    fill(buffer, 17, np.random.default_rng(0))
    np.random.seed(3)
    plain = buffer.sample(16)
    after_plain = np.random.rand()
    np.random.seed(3)
    samples, rows, envs = sample_with_indices(buffer, 16)
    assert np.random.rand() == after_plain
    for name in ["observations", "actions", "next_observations", "dones", "rewards"]:
        np.testing.assert_array_equal(getattr(plain, name).numpy(), getattr(samples, name).numpy())
    np.testing.assert_array_equal(samples.actions.numpy().ravel(), buffer.actions[rows, envs].ravel())
    np.testing.assert_array_equal(samples.observations.numpy(), buffer.observations[rows, envs])  # type: ignore[union-attr]


class ActionLog(gym.Wrapper):
    """Records every action the env receives and whether the step ended the episode."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.log: list[dict[str, Any]] = []

    def step(self, action: Any) -> Any:
        result = self.env.step(action)
        self.log.append({"action": int(action), "end": bool(result[2] or result[3])})
        return result


@pytest.mark.parametrize("n_steps", [1, 2])
def test_stored_next_actions_during_training_with_several_envs(n_steps: int) -> None:
    """Through DeepSARSA.learn, with truncation by a short time limit and a wrapping buffer."""
    env = make_vec_env("CartPole-v1", n_envs=3, seed=0, env_kwargs=dict(max_episode_steps=9), wrapper_class=ActionLog)
    model = DeepSARSA("MlpPolicy", env, buffer_size=3 * 50, learning_starts=30, next_action="stored", n_steps=n_steps, seed=0)
    model.learn(3 * 130)
    buffer = model.replay_buffer
    assert buffer is not None and buffer.full
    logs = [env.envs[i].get_wrapper_attr("log") for i in range(3)]  # type: ignore[attr-defined]
    grid = np.meshgrid(np.arange(buffer.buffer_size), np.arange(3))
    rows, envs = grid[0].ravel(), grid[1].ravel()
    next_actions, available = stored_next_actions(buffer, rows, envs)
    newest = (buffer.pos - 1) % buffer.buffer_size
    for row, e, action, ok in zip(rows, envs, next_actions, available, strict=True):
        t = len(logs[e]) - 1 - (newest - row) % buffer.buffer_size
        expected = expected_next_action(logs[e], int(t), n_steps)
        assert ok == (expected is not None)
        if expected is not None:
            assert action == expected
    # Time-limit truncations are stored as timeouts and have no next action
    assert buffer.timeouts.sum() > 0
    assert not available[(buffer.timeouts[rows, envs] > 0) & (n_steps == 1)].any()


def test_a_reset_between_learn_calls_cuts_the_running_episodes() -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", learning_starts=10, next_action="stored", seed=0)
    model.learn(57)
    buffer = model.replay_buffer
    assert buffer is not None
    newest = buffer.pos - 1
    assert buffer.dones[newest, 0] == 0 or buffer.timeouts[newest, 0] == 0
    was_running = buffer.dones[newest, 0] == 0
    model.learn(20)  # reset_num_timesteps=True resets the env: the episode of row `newest` is cut
    _, available = stored_next_actions(buffer, np.array([newest]), np.array([0]))
    assert not available[0]
    if was_running:
        assert buffer.timeouts[newest, 0] == 1 and buffer.dones[newest, 0] == 0
    newest = buffer.pos - 1
    timeouts_before = buffer.timeouts[newest, 0]
    model.learn(20, reset_num_timesteps=False)  # no reset: the episode goes on, nothing is marked
    assert buffer.timeouts[newest, 0] == timeouts_before


def test_mark_newest_rows_truncated_on_an_empty_buffer_is_a_no_op() -> None:
    buffer = ReplayBuffer(8, OBS_SPACE, ACTION_SPACE)
    mark_newest_rows_truncated(buffer)
    assert buffer.timeouts.sum() == 0
