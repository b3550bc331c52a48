"""
Small tabular MDPs with exact action values, to check Deep SARSA against closed-form answers.

:func:`q_pi` solves the linear Bellman system ``Q = R + γ·P·π·Q`` of a policy exactly, so a
learned Q-network (with one-hot observations and no hidden layer it is a Q-table) can be compared
with the true Q^π of the ε-greedy policy, and with Q* which Q-learning would learn instead.
:class:`TabularMDPEnv` turns an MDP into a Gymnasium env with ``Discrete`` observations, which
SB3 one-hot encodes.
"""

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces

if TYPE_CHECKING:
    from deep_sarsa.deep_sarsa import DeepSARSA


@dataclass(frozen=True)
class TabularMDP:
    """
    A finite MDP. Transition probabilities of a row may sum to less than one: the missing
    mass is the probability that the episode terminates.

    :param transitions: ``P[s, a, s']``, shape ``(S, A, S)``
    :param rewards: expected reward ``R[s, a]``, shape ``(S, A)``
    :param gamma: discount factor
    :param start_state: the state every episode starts in
    :param reward_noise: rewards are ``R[s, a] ± reward_noise`` with equal probability
    """

    transitions: np.ndarray
    rewards: np.ndarray
    gamma: float
    start_state: int = 0
    reward_noise: float = 0.0

    @property
    def n_states(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.rewards.shape[1])


def epsilon_greedy_policy(greedy_actions: np.ndarray, epsilon: float, n_actions: int) -> np.ndarray:
    """
    The ε-greedy policy ``π[s, a]`` around the given greedy actions.

    :param greedy_actions: the greedy action of each state, shape ``(S,)``
    :param epsilon: probability of a uniformly random action
    :param n_actions: number of actions
    :return: ``π[s, a]``, shape ``(S, A)``
    """
    policy = np.full((len(greedy_actions), n_actions), epsilon / n_actions)
    policy[np.arange(len(greedy_actions)), greedy_actions] += 1.0 - epsilon
    return policy


def q_pi(mdp: TabularMDP, policy: np.ndarray) -> np.ndarray:
    """
    Exact action values of ``policy``: the solution of ``Q = R + γ·Σ_s' P(s'|s,a)·Σ_a' π(a'|s')·Q(s',a')``.

    :param mdp: the MDP
    :param policy: ``π[s, a]``, shape ``(S, A)``
    :return: ``Q^π[s, a]``, shape ``(S, A)``
    """
    n = mdp.n_states * mdp.n_actions
    # M[(s,a), (s',a')] = P(s'|s,a) π(a'|s')
    next_pairs = np.einsum("sat,tb->satb", mdp.transitions, policy).reshape(n, n)
    q = np.linalg.solve(np.eye(n) - mdp.gamma * next_pairs, mdp.rewards.reshape(n))
    return q.reshape(mdp.n_states, mdp.n_actions)


def q_star(mdp: TabularMDP, tol: float = 1e-12) -> np.ndarray:
    """
    Optimal action values by value iteration (what Q-learning converges to).

    :param mdp: the MDP
    :param tol: stop when no value changes by more than this
    :return: ``Q*[s, a]``, shape ``(S, A)``
    """
    q = np.zeros_like(mdp.rewards, dtype=np.float64)
    while True:
        new_q = mdp.rewards + mdp.gamma * mdp.transitions @ q.max(axis=1)
        if np.max(np.abs(new_q - q)) < tol:
            return new_q
        q = new_q


def epsilon_greedy_fixed_points(mdp: TabularMDP, epsilon: float) -> list[np.ndarray]:
    """
    All Q^π of ε-greedy policies that are greedy with respect to their own values.

    These are the fixed points of SARSA with a fixed ε: Q = Q^π with π ε-greedy over Q.
    Enumerates every deterministic greedy choice, so it is meant for tiny MDPs only.

    :param mdp: the MDP
    :param epsilon: exploration rate
    :return: the self-consistent action-value tables
    """
    fixed_points = []
    for greedy in itertools.product(range(mdp.n_actions), repeat=mdp.n_states):
        greedy_actions = np.array(greedy)
        q = q_pi(mdp, epsilon_greedy_policy(greedy_actions, epsilon, mdp.n_actions))
        if np.array_equal(q.argmax(axis=1), greedy_actions):
            fixed_points.append(q)
    return fixed_points


def risky_bridge(gamma: float = 0.9) -> TabularMDP:
    """
    Three states, two actions; a short route along an edge and a long safe one.

    From the start (0), action 0 walks onto the edge (state 1; 10% of the time it slips to the
    safe path instead), action 1 takes the safe path (state 2) at a cost of 1. On the edge,
    action 0 reaches the goal (+10) and action 1 falls (-30); both end the episode. On the safe
    path, action 0 reaches the goal (+10) and action 1 walks back to the start. Goal rewards are
    noisy (±2). The greedy optimum takes the edge (Q*(0, 0) = 9 > Q*(0, 1) = 8); an ε-greedy
    agent with ε = 0.2 falls often enough that the safe path is better for it
    (Q^π(0, 0) ≈ 5.73 < Q^π(0, 1) ≈ 7.71): SARSA learns the latter, Q-learning the former.

    :param gamma: discount factor
    :return: the MDP
    """
    transitions = np.zeros((3, 2, 3))
    rewards = np.zeros((3, 2))
    transitions[0, 0, 1], transitions[0, 0, 2] = 0.9, 0.1
    transitions[0, 1, 2], rewards[0, 1] = 1.0, -1.0
    rewards[1, 0], rewards[1, 1] = 10.0, -30.0  # terminal
    rewards[2, 0] = 10.0  # terminal
    transitions[2, 1, 0] = 1.0
    noise = 2.0
    return TabularMDP(transitions, rewards, gamma, start_state=0, reward_noise=noise)


class TabularMDPEnv(gym.Env[np.int64, np.int64]):
    """
    A Gymnasium env that samples a :class:`TabularMDP`.

    Rewards of terminating (state, action) pairs carry ``reward_noise``; others are exact.

    :param mdp: the MDP to sample
    """

    def __init__(self, mdp: TabularMDP) -> None:
        self.mdp = mdp
        self.observation_space = spaces.Discrete(mdp.n_states)
        self.action_space = spaces.Discrete(mdp.n_actions)
        self.state = mdp.start_state

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.int64, dict]:
        """
        Start an episode in the MDP's start state.

        :param seed: seed of the env's random generator
        :param options: unused
        :return: the start state and an empty info dict
        """
        super().reset(seed=seed)
        self.state = self.mdp.start_state
        return np.int64(self.state), {}

    def step(self, action: np.int64) -> tuple[np.int64, float, bool, bool, dict]:
        """
        Sample the next state (or the end of the episode) and the reward.

        :param action: the action
        :return: next state, reward, terminated, truncated (never), info
        """
        probs = self.mdp.transitions[self.state, int(action)]
        reward = float(self.mdp.rewards[self.state, int(action)])
        outcome = self.np_random.choice(self.mdp.n_states + 1, p=[*probs, 1.0 - probs.sum()])
        terminated = bool(outcome == self.mdp.n_states)
        if terminated and self.mdp.reward_noise:
            reward += self.mdp.reward_noise * self.np_random.choice([-1.0, 1.0])
        if not terminated:
            self.state = int(outcome)
        return np.int64(self.state), reward, terminated, False, {}


def tabular_deep_sarsa(mdp: TabularMDP, epsilon: float, **kwargs: Any) -> "DeepSARSA":
    """
    A :class:`~deep_sarsa.DeepSARSA` whose Q-network is a Q-table, with a fixed ε.

    One-hot observations and no hidden layer (``net_arch=[]``) make the network
    ``Q(s, ·) = W·onehot(s) + b``, a table. It learns from every step (``train_freq=1``) with
    batches of 256 and a target network synced every 100 steps.

    :param mdp: the MDP to learn
    :param epsilon: the exploration rate, held fixed from the first step
    :param kwargs: any other DeepSARSA keyword, overriding the defaults above
    :return: the model, not trained yet
    """
    from deep_sarsa.deep_sarsa import DeepSARSA

    settings: dict[str, Any] = dict(
        learning_rate=0.01,
        learning_starts=64,
        batch_size=256,
        gamma=mdp.gamma,
        train_freq=1,
        gradient_steps=1,
        target_update_interval=100,
        exploration_fraction=0.0,
        exploration_initial_eps=epsilon,
        exploration_final_eps=epsilon,
        policy_kwargs=dict(net_arch=[]),
    )
    settings.update(kwargs)
    return DeepSARSA("MlpPolicy", TabularMDPEnv(mdp), **settings)


def q_table(model: "DeepSARSA") -> np.ndarray:
    """
    The Q-values a model gives every state of a ``Discrete`` observation space.

    :param model: a DeepSARSA model on a ``Discrete`` observation space
    :return: ``Q[s, a]``, shape ``(S, A)``
    """
    assert isinstance(model.observation_space, spaces.Discrete)
    with th.no_grad():
        states = th.arange(int(model.observation_space.n), device=model.device)
        return model.q_net(states).cpu().numpy()
