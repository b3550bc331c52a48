"""
Sutton & Barto's cliff walking (Example 6.6): SARSA learns the safe path and a better online return than Q-learning.

With ε = 0.1 held fixed, the book's figure shows SARSA's return per episode near -25 and Q-learning's near -50:
Q-learning learns the optimal path along the cliff's edge (13 steps) and falls off it while exploring; SARSA learns
the values of the ε-greedy policy that acts, so it walks a row away from the edge. The references here are exact,
from Gymnasium's own transition table: the online return of the ε-greedy policy that is greedy in its own values
(SARSA's fixed point) and of the ε-greedy policy around Q* (what Q-learning acts with).
"""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium.wrappers import TimeLimit
from stable_baselines3 import DQN
from stable_baselines3.common.monitor import Monitor

from deep_sarsa import DeepSARSA
from deep_sarsa.tabular import TabularMDP, epsilon_greedy_policy, q_pi, q_star

EPSILON = 0.1
START, GOAL = 36, 47


def cliff_walking() -> TabularMDP:
    """Gymnasium's CliffWalking-v1 as a TabularMDP, undiscounted as in the book (a fall: -100, back to the start)."""
    env = gym.make("CliffWalking-v1").unwrapped
    n_states, n_actions = int(env.observation_space.n), int(env.action_space.n)  # type: ignore[attr-defined]
    transitions, rewards = np.zeros((n_states, n_actions, n_states)), np.zeros((n_states, n_actions))
    for state in range(n_states):
        for action in range(n_actions):
            for probability, next_state, reward, terminated in env.P[state][action]:  # type: ignore[attr-defined]
                rewards[state, action] += probability * reward
                if not terminated:  # the missing mass ends the episode
                    transitions[state, action, next_state] += probability
    return TabularMDP(transitions, rewards, gamma=1.0, start_state=START)


def online_return(mdp: TabularMDP, greedy: np.ndarray) -> float:
    """The expected return from the start of the ε-greedy policy around ``greedy`` (it acts with ε = 0.1)."""
    policy = epsilon_greedy_policy(greedy, EPSILON, mdp.n_actions)
    return float(policy[START] @ q_pi(mdp, policy)[START])


def greedy_path_length(mdp: TabularMDP, greedy: np.ndarray) -> int:
    state, steps = START, 0
    while state != GOAL and steps < 100:
        following = mdp.transitions[state, greedy[state]]
        state, steps = (int(following.argmax()) if following.sum() else GOAL), steps + 1
    return steps


def sarsa_fixed_point(mdp: TabularMDP) -> np.ndarray:
    """The greedy actions of the ε-greedy policy that is greedy in its own values (policy iteration over ε-soft policies)."""
    greedy = np.zeros(mdp.n_states, dtype=int)
    while True:
        improved = q_pi(mdp, epsilon_greedy_policy(greedy, EPSILON, mdp.n_actions)).argmax(axis=1)
        if np.array_equal(improved, greedy):
            return greedy
        greedy = improved


def test_exact_references_are_the_books_gap() -> None:
    mdp = cliff_walking()
    sarsa, q_learning = sarsa_fixed_point(mdp), q_star(mdp).argmax(axis=1)
    # the book's figure: about -25 against about -50 (smoothed curves of learning agents)
    assert online_return(mdp, sarsa) == pytest.approx(-20.71, abs=0.01)
    assert online_return(mdp, q_learning) == pytest.approx(-45.80, abs=0.01)
    # Q-learning's path runs along the edge (13 steps); SARSA's keeps a row away from it (15)
    assert (greedy_path_length(mdp, q_learning), greedy_path_length(mdp, sarsa)) == (13, 15)


#: the grid's CliffWalking-v1 entry (benchmarks/harness.py, HAND_SET): a Q-table (one-hot states, no hidden layer)
#: learning from every step; ε falls from 1 to 0.1 over the first 30k steps and stays at 0.1 for the last 30k
SETTINGS: dict = dict(learning_rate=0.05, batch_size=64, buffer_size=50_000, learning_starts=1000, gamma=0.99)
SETTINGS |= dict(target_update_interval=500, train_freq=1, gradient_steps=1, policy_kwargs=dict(net_arch=[]))
SETTINGS |= dict(exploration_fraction=0.5, exploration_initial_eps=1.0, exploration_final_eps=EPSILON, seed=0, device="cpu")


def train(algorithm: type[DeepSARSA] | type[DQN]) -> tuple[np.ndarray, float, float]:
    """
    Train on CliffWalking-v1 (at most 200 steps an episode).

    :return: the greedy action of each state, the mean return of the episodes that started in the last 10k steps
        (ε = 0.1 for the last 30k; DeepSARSA, seed 0: 551 episodes in them, their means by 100 -199, -50, -28, -23,
        -24, -23) and the return of one greedy episode
    """
    env = Monitor(TimeLimit(gym.make("CliffWalking-v1"), max_episode_steps=200))
    model = algorithm("MlpPolicy", env, **SETTINGS).learn(60_000)
    starts = np.cumsum([0, *env.get_episode_lengths()])[:-1]
    online = float(np.mean(np.array(env.get_episode_rewards())[starts >= 50_000]))
    with th.no_grad():
        greedy_actions = model.q_net(th.arange(START + 12)).argmax(dim=1).numpy()
    observation, _ = env.reset()
    greedy, done = 0.0, False
    while not done:
        action, _ = model.predict(observation, deterministic=True)
        observation, reward, terminated, truncated, _ = env.step(int(action))
        greedy, done = greedy + float(reward), terminated or truncated
    return greedy_actions, online, greedy


def test_deep_sarsa_walks_the_safe_path_and_acts_near_sarsas_online_return() -> None:
    # DeepSARSA's defaults for the TD target. `exact`: the expected return of the ε-greedy policy around what it
    # learned, from the transition table; `online`: what its last 500 episodes returned
    greedy_actions, online, greedy = train(DeepSARSA)
    exact = online_return(cliff_walking(), greedy_actions)
    assert greedy in (-15.0, -17.0), greedy  # a row (or two) away from the edge
    assert exact > -30.0 and abs(online - exact) < 10.0, (exact, online)  # SARSA's fixed point: -20.7


def test_q_learning_walks_the_edge_and_acts_near_q_learnings_online_return() -> None:
    # the same settings with SB3's DQN (Q-learning): the other side of the book's gap
    greedy_actions, online, greedy = train(DQN)
    exact = online_return(cliff_walking(), greedy_actions)
    assert greedy == -13.0  # along the edge
    assert exact < -40.0 and abs(online - exact) < 10.0, (exact, online)  # Q-learning's: -45.8
