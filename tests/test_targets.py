"""The TD targets and the loss, on small tensors with values worked out by hand."""

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st

from deep_sarsa.targets import (
    epsilon_greedy_probs,
    expected_sarsa_target,
    sample_epsilon_greedy,
    sarsa_target,
    td_loss,
)

Q_NEXT = th.tensor([[1.0, 4.0, 2.0], [3.0, 0.0, -6.0]])


@pytest.mark.parametrize(
    "epsilon, expected",
    [
        (0.0, [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
        (1.0, [[1 / 3, 1 / 3, 1 / 3], [1 / 3, 1 / 3, 1 / 3]]),
        (0.3, [[0.1, 0.8, 0.1], [0.8, 0.1, 0.1]]),
    ],
)
def test_epsilon_greedy_probs(epsilon: float, expected: list[list[float]]) -> None:
    probs = epsilon_greedy_probs(Q_NEXT, epsilon)
    np.testing.assert_allclose(probs.numpy(), expected, atol=1e-6)


def test_epsilon_greedy_probs_ties_go_to_first_index_like_predict() -> None:
    # argmax (and so DQNPolicy._predict) picks the first of tied maxima
    probs = epsilon_greedy_probs(th.tensor([[2.0, 5.0, 5.0]]), 0.0)
    np.testing.assert_allclose(probs.numpy(), [[0.0, 1.0, 0.0]])


def test_sample_epsilon_greedy_is_greedy_at_zero_and_uniform_at_one() -> None:
    th.manual_seed(0)
    q = Q_NEXT.repeat(5000, 1)
    greedy = sample_epsilon_greedy(q, 0.0)
    assert greedy.shape == (10000, 1)
    assert th.equal(greedy[0::2], th.ones(5000, 1, dtype=th.long))
    assert th.equal(greedy[1::2], th.zeros(5000, 1, dtype=th.long))
    uniform = sample_epsilon_greedy(q, 1.0)
    frequencies = th.bincount(uniform.flatten(), minlength=3).double() / 10000
    # Standard error of a frequency of 1/3 over 10000 draws is 0.0047: 0.02 is > 4 of them
    np.testing.assert_allclose(frequencies.numpy(), [1 / 3] * 3, atol=0.02)


def test_sample_epsilon_greedy_matches_the_epsilon_greedy_probabilities() -> None:
    th.manual_seed(1)
    q = Q_NEXT[:1].repeat(20000, 1)
    actions = sample_epsilon_greedy(q, 0.3)
    frequencies = th.bincount(actions.flatten(), minlength=3).double() / 20000
    np.testing.assert_allclose(frequencies.numpy(), [0.1, 0.8, 0.1], atol=0.015)


def test_sarsa_target_by_hand() -> None:
    rewards = th.tensor([[1.0], [-2.0], [0.5]])
    dones = th.tensor([[0.0], [1.0], [0.0]])
    next_q = th.tensor([[1.0, 4.0], [3.0, 7.0], [-1.0, 2.0]])
    next_actions = th.tensor([[0], [1], [1]])
    target = sarsa_target(rewards, dones, 0.9, next_q, next_actions)
    # 1 + 0.9 * 1 ; terminal: -2 ; 0.5 + 0.9 * 2
    np.testing.assert_allclose(target.numpy(), [[1.9], [-2.0], [2.3]], rtol=1e-6)


def test_sarsa_target_uses_per_row_n_step_discounts() -> None:
    # A 3-step return with gamma = 0.5 bootstraps with 0.5**3; one cut after 2 steps with 0.5**2
    rewards = th.tensor([[1.75], [1.5]])
    discounts = th.tensor([[0.125], [0.25]])
    next_q = th.tensor([[8.0, 0.0], [0.0, 4.0]])
    target = sarsa_target(rewards, th.zeros(2, 1), discounts, next_q, th.tensor([[0], [1]]))
    np.testing.assert_allclose(target.numpy(), [[1.75 + 1.0], [1.5 + 1.0]])


@pytest.mark.parametrize(
    "epsilon, expected",
    [
        # greedy in s' is action 1 (Q = 4): the target is the greedy value, as Q-learning's
        (0.0, 1.0 + 0.9 * 4.0),
        # uniform: mean of (1, 4, 2) = 7/3
        (1.0, 1.0 + 0.9 * 7.0 / 3.0),
        # 0.1 * 1 + 0.8 * 4 + 0.1 * 2 = 3.5
        (0.3, 1.0 + 0.9 * 3.5),
    ],
)
def test_expected_sarsa_target_by_hand(epsilon: float, expected: float) -> None:
    probs = epsilon_greedy_probs(Q_NEXT[:1], epsilon)
    target = expected_sarsa_target(th.tensor([[1.0]]), th.tensor([[0.0]]), 0.9, Q_NEXT[:1], probs)
    assert target.item() == pytest.approx(expected, rel=1e-6)


def test_expected_sarsa_target_terminal_ignores_next_state() -> None:
    probs = epsilon_greedy_probs(Q_NEXT[:1], 0.5)
    target = expected_sarsa_target(th.tensor([[3.0]]), th.tensor([[1.0]]), 0.9, Q_NEXT[:1] * 1e6, probs)
    assert target.item() == 3.0


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_only_the_taken_action_receives_gradient(loss: str) -> None:
    """Seed 000's question: the loss is built from Q(s, a) only, so dL/dQ(s, b) = 0 for b != a."""
    q_values = th.tensor([[5.0, 7.0, 1.0], [2.0, -3.0, 0.5]], requires_grad=True)
    actions = th.tensor([[1], [2]])
    targets = th.tensor([[6.5], [3.0]])
    td_loss(q_values, actions, targets, loss).backward()  # type: ignore[arg-type]
    assert q_values.grad is not None
    grad = q_values.grad.numpy()
    # MSE: d/dq mean((q - y)^2) = 2 (q - y) / B ; Huber (|q - y| <= 1 -> quadratic / 2, else sign)
    if loss == "mse":
        expected = [[0.0, 2 * (7.0 - 6.5) / 2, 0.0], [0.0, 0.0, 2 * (0.5 - 3.0) / 2]]
    else:
        expected = [[0.0, (7.0 - 6.5) / 2, 0.0], [0.0, 0.0, -1.0 / 2]]
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_mse_and_huber_agree_on_small_errors_and_differ_on_large_ones() -> None:
    q = th.tensor([[0.0]])
    a = th.tensor([[0]])
    assert td_loss(q, a, th.tensor([[0.5]]), "mse").item() == pytest.approx(0.25)
    assert td_loss(q, a, th.tensor([[0.5]]), "huber").item() == pytest.approx(0.125)
    assert td_loss(q, a, th.tensor([[10.0]]), "mse").item() == pytest.approx(100.0)
    assert td_loss(q, a, th.tensor([[10.0]]), "huber").item() == pytest.approx(9.5)


def test_unknown_loss_is_refused() -> None:
    with pytest.raises(ValueError, match="loss must be"):
        td_loss(th.zeros(1, 2), th.zeros(1, 1), th.zeros(1, 1), "l1")  # type: ignore[arg-type]


# A hand-built buffer (γ = 0.5), each row recognised by its reward:
#   row 0: s=0 a=1 r=1.0 -> s'=1                    the next row's action is 0
#   row 1: s=1 a=0 r=2.0 -> s'=2  terminated
#   row 2: s=0 a=0 r=0.5 -> s'=3  truncated by the time limit
#   row 3: s=0 a=1 r=1.5 -> s'=1  the newest row: its next action is not taken yet
# Q_target(1, ·) = (10, 20), Q_target(3, ·) = (30, 40); the online greedy action is 1 in s'=1 and
# 0 in s'=3, the target network's is 1 in both.
HAND_BUILT_TARGETS = {
    # ε = 0: a' is the online network's greedy action; terminal rows are r alone; truncated rows bootstrap
    ("sampled", "online", 0.0): {1.0: 1 + 0.5 * 20, 2.0: 2.0, 0.5: 0.5 + 0.5 * 30, 1.5: 1.5 + 0.5 * 20},
    ("expected", "online", 0.0): {1.0: 1 + 0.5 * 20, 2.0: 2.0, 0.5: 0.5 + 0.5 * 30, 1.5: 1.5 + 0.5 * 20},
    # ε = 1: a uniform a', in expectation the mean of the two target values
    ("expected", "online", 1.0): {1.0: 1 + 0.5 * 15, 2.0: 2.0, 0.5: 0.5 + 0.5 * 35, 1.5: 1.5 + 0.5 * 15},
    # stored: row 0 uses the action of row 1 (0); rows 2 (truncated) and 3 (newest) fall back
    ("stored", "online", 0.0): {1.0: 1 + 0.5 * 10, 2.0: 2.0, 0.5: 0.5 + 0.5 * 30, 1.5: 1.5 + 0.5 * 20},
    # the target network picks: its greedy action in s'=3 is 1 (40), where the online network's is 0 (30)
    ("sampled", "target", 0.0): {1.0: 1 + 0.5 * 20, 2.0: 2.0, 0.5: 0.5 + 0.5 * 40, 1.5: 1.5 + 0.5 * 20},
    ("expected", "target", 0.0): {1.0: 1 + 0.5 * 20, 2.0: 2.0, 0.5: 0.5 + 0.5 * 40, 1.5: 1.5 + 0.5 * 20},
    # ε = 0.04 (rl-zoo's final ε on CartPole): the greedy value weighs 1 - ε + ε/2 = 0.98, the other 0.02
    ("expected", "target", 0.04): {1.0: 1 + 0.5 * 19.8, 2.0: 2.0, 0.5: 0.5 + 0.5 * 39.8, 1.5: 1.5 + 0.5 * 19.8},
    ("stored", "target", 0.0): {1.0: 1 + 0.5 * 10, 2.0: 2.0, 0.5: 0.5 + 0.5 * 40, 1.5: 1.5 + 0.5 * 20},
}


@pytest.mark.parametrize("next_action, next_action_net, epsilon", list(HAND_BUILT_TARGETS))
def test_targets_of_a_hand_built_buffer(next_action: str, next_action_net: str, epsilon: float) -> None:
    from deep_sarsa import DeepSARSA
    from deep_sarsa.tabular import TabularMDPEnv, risky_bridge

    env = TabularMDPEnv(risky_bridge())
    env.observation_space = spaces.Discrete(4)
    model = DeepSARSA(
        "MlpPolicy",
        env,
        gamma=0.5,
        policy_kwargs=dict(net_arch=[]),
        next_action=next_action,  # type: ignore[arg-type]
        next_action_net=next_action_net,  # type: ignore[arg-type]
    )
    with th.no_grad():
        target_layer, online_layer = model.q_net_target.q_net[0], model.q_net.q_net[0]
        assert isinstance(target_layer, th.nn.Linear) and isinstance(online_layer, th.nn.Linear)
        target_layer.bias.zero_()
        target_layer.weight.copy_(th.tensor([[0.0, 10.0, 0.0, 30.0], [0.0, 20.0, 0.0, 40.0]]))  # weight[a, s]
        online_layer.bias.zero_()
        online_layer.weight.copy_(th.tensor([[0.0, 0.0, 0.0, 5.0], [0.0, 5.0, 0.0, 0.0]]))
    rows = [
        (0, 1, 1.0, 1, False, False),
        (1, 0, 2.0, 2, True, False),
        (0, 0, 0.5, 3, True, True),
        (0, 1, 1.5, 1, False, False),
    ]
    assert model.replay_buffer is not None
    for obs, action, reward, next_obs, done, truncated in rows:
        model.replay_buffer.add(
            np.array([obs]),
            np.array([next_obs]),
            np.array([action]),
            np.array([reward]),
            np.array([done]),
            [{"TimeLimit.truncated": truncated}],
        )
    model.exploration_rate = epsilon
    replay_data, next_state = model._sample(200)
    with th.no_grad():
        targets = model._td_target(replay_data, next_state)
    expected = HAND_BUILT_TARGETS[(next_action, next_action_net, epsilon)]
    seen = set()
    for reward, target in zip(replay_data.rewards.flatten().tolist(), targets.flatten().tolist(), strict=True):
        assert target == pytest.approx(expected[reward]), reward
        seen.add(reward)
    assert seen == set(expected)


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    batch=st.integers(1, 6),
    n_actions=st.integers(1, 6),
    epsilon=st.floats(0.0, 1.0),
    gamma=st.one_of(st.just(0.0), st.floats(0.01, 1.0)),
)
def test_target_properties(data: st.DataObject, batch: int, n_actions: int, epsilon: float, gamma: float) -> None:
    values = st.floats(-100, 100, allow_nan=False, width=32)
    q_next = th.tensor(
        data.draw(st.lists(st.lists(values, min_size=n_actions, max_size=n_actions), min_size=batch, max_size=batch))
    )
    q_online = th.tensor(
        data.draw(st.lists(st.lists(values, min_size=n_actions, max_size=n_actions), min_size=batch, max_size=batch))
    )
    mask_rows = data.draw(
        st.lists(st.lists(st.booleans(), min_size=n_actions, max_size=n_actions).filter(any), min_size=batch, max_size=batch)
    )
    masks = th.tensor(mask_rows)
    rewards = th.tensor(data.draw(st.lists(values, min_size=batch, max_size=batch))).reshape(-1, 1)
    dones = th.tensor(data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=batch, max_size=batch))).reshape(-1, 1)

    probs = epsilon_greedy_probs(q_online, epsilon, masks)
    # A distribution over the valid actions, the greedy one getting at least 1 - ε
    np.testing.assert_allclose(probs.sum(dim=1).numpy(), np.ones(batch), rtol=1e-5)
    assert (probs >= 0).all() and (probs[~masks] == 0).all()
    best_valid = q_online.masked_fill(~masks, -th.inf).argmax(dim=1)
    assert (probs[th.arange(batch), best_valid] >= 1 - epsilon - 1e-6).all()

    # Expected SARSA lies between the smallest and largest valid next value, as a convex combination
    target = expected_sarsa_target(rewards, dones, gamma, q_next, probs)
    low = q_next.masked_fill(~masks, th.inf).min(dim=1, keepdim=True).values
    high = q_next.masked_fill(~masks, -th.inf).max(dim=1, keepdim=True).values
    bootstrap = (target - rewards) / gamma if gamma > 0 else None
    if bootstrap is not None:
        live = dones.flatten() == 0
        assert (bootstrap[live] >= low[live] - 1e-3).all() and (bootstrap[live] <= high[live] + 1e-3).all()
    # Terminal rows are the reward alone; at ε = 0 expected and sampled SARSA agree
    np.testing.assert_allclose(target[dones.flatten() == 1].numpy(), rewards[dones.flatten() == 1].numpy())
    greedy_probs = epsilon_greedy_probs(q_online, 0.0, masks)
    sampled = sample_epsilon_greedy(q_online, 0.0, masks)
    np.testing.assert_allclose(
        expected_sarsa_target(rewards, dones, gamma, q_next, greedy_probs).numpy(),
        sarsa_target(rewards, dones, gamma, q_next, sampled).numpy(),
        rtol=1e-5,
        atol=1e-4,
    )
    # Sampled actions are always valid
    drawn = sample_epsilon_greedy(q_online, epsilon, masks).flatten()
    assert masks[th.arange(batch), drawn].all()
