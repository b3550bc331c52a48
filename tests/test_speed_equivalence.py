"""
The faster code paths compute exactly what the straightforward formulation computes: pinned
down on fixed batches against a plain re-implementation of one update and of DQN's ``predict``.
"""

import copy

import numpy as np
import pytest
import torch as th
from stable_baselines3.dqn import DQN

from deep_sarsa import DeepSARSA
from deep_sarsa.targets import sample_epsilon_greedy


def straightforward_update(model: DeepSARSA, batch_size: int) -> None:
    """One update written out plainly: SB3's sampling, three separate forwards, MSE, the policy's Adam."""
    assert model.replay_buffer is not None
    data = model.replay_buffer.sample(batch_size)
    with th.no_grad():
        next_q_target = model.q_net_target(data.next_observations)
        next_actions = sample_epsilon_greedy(model.q_net(data.next_observations), model.exploration_rate)
        target = data.rewards + (1 - data.dones) * model.gamma * next_q_target.gather(1, next_actions)
    q_taken = model.q_net(data.observations).gather(1, data.actions.long())
    loss = ((q_taken - target) ** 2).mean()
    model.policy.optimizer.zero_grad()
    loss.backward()
    th.nn.utils.clip_grad_norm_(model.policy.parameters(), model.max_grad_norm)
    model.policy.optimizer.step()


@pytest.mark.parametrize("steps", [1, 50])
def test_train_matches_the_straightforward_update(steps: int) -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", learning_starts=100, buffer_size=1000, batch_size=32, seed=0)
    model.learn(200)  # fills the buffer and gives Adam some history
    reference = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.q_net.parameters()]

    np.random.seed(7)
    th.manual_seed(7)
    model.train(gradient_steps=steps, batch_size=32)
    np.random.seed(7)
    th.manual_seed(7)
    for _ in range(steps):
        straightforward_update(reference, 32)

    for fast, plain in zip(model.policy.parameters(), reference.policy.parameters(), strict=True):
        assert th.equal(fast, plain)
    assert not all(th.equal(a, b) for a, b in zip(before, model.q_net.parameters(), strict=True))  # it did train


def test_rollout_actions_match_dqn_predict() -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", learning_starts=0, seed=0)
    model.learn(50)
    observations = np.random.default_rng(0).normal(size=(200, 1, 4)).astype(np.float32)
    for epsilon in (0.0, 0.3, 1.0):
        model.exploration_rate = epsilon
        np.random.seed(11)
        model.action_space.seed(11)
        fast = []
        for obs in observations:
            model._last_obs = obs
            fast.append(model._sample_action(learning_starts=0, n_envs=1)[0])
        next_fast = np.random.rand()
        np.random.seed(11)
        model.action_space.seed(11)
        plain = [DQN.predict(model, obs, deterministic=False)[0] for obs in observations]  # type: ignore[arg-type]
        np.testing.assert_array_equal(np.concatenate(fast), np.concatenate(plain))
        assert np.random.rand() == next_fast  # the same random numbers were drawn
