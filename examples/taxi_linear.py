"""
One-hot Taxi-v4 with a linear Q-network: the network is a Q-table, and DeepSARSA learns tabular SARSA's values.

Why the loss reaches only the taken action, and why this is tabular SARSA: SB3 one-hot encodes
Taxi's ``Discrete(500)`` state, and with ``net_arch=[]`` the Q-network is one linear layer,
``Q(s, ·) = W·onehot(s) + b = W[:, s] + b``, ``W`` of shape 6 × 500. A sample's loss
``(Q(s, a) - y)²`` uses the taken action's output only (``gather``), so its gradient is
``2·(Q(s, a) - y)`` at ``W[a, s]`` and ``b[a]`` and exactly zero elsewhere: row a, column s (the
script checks it). A plain SGD step on a batch of B samples thus changes ``W[a, s]`` by
``α·(y - Q(s, a))`` per sample, ``α = 2·lr/B``: the tabular SARSA update of entry (s, a); ``b[a]``
is an offset shared by all states, and ``W + b`` is the table. Adam (SB3's default, used here)
keeps the sparsity and gives each entry its own step size. So a DQN that "takes one action only"
on one-hot Taxi is not hurt by the other outputs: look at exploration, at targets written for
actions not taken, and at the shared bias (docs/faq.md).

The script trains DeepSARSA (masked with Taxi's own action mask), then runs an independent
tabular SARSA (a NumPy Q-table, the same masked ε-greedy policy, ε schedule and γ, stepping
Taxi's transition table ``env.unwrapped.P``) and compares the two tables entry by entry.
Measured with ``OMP_NUM_THREADS=1 python examples/taxi_linear.py`` (60k DeepSARSA steps, 600k
tabular steps, seed 0; 110 s on one core):

    greedy return, exact mean over the 300 start states (optimum 7.93): linear 7.93, optimal from 300 of them: solved
    SB3 evaluate_policy, 100 random episodes: 8.06 ± 2.59 (Taxi-v4's reward_threshold: 8)
    255 state-action pairs visited ≥ 20 times by both at ε = 0.05 (Q from -1.0 to 20.0): correlation 0.987,
        mean |difference| 0.38
    greedy actions on the 358 states that optimal paths visit: 82% agree; optimal: 100% (linear), 100% (tabular)

The greedy actions differ only where several actions are optimal (equally short routes). Taxi's
``reward_threshold`` of 8 lies above the best possible mean, 7.93: a sample of episodes passes it
or not by chance, so "solved" here means the greedy return from every start state is optimal.

    python examples/taxi_linear.py --output taxi_linear.png    # also a scatter plot, linear vs tabular
    python examples/taxi_linear.py --smoke
"""

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
import torch as th
from sb3_contrib.common.maskable.evaluation import evaluate_policy
from sb3_contrib.common.wrappers import ActionMasker
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import DummyVecEnv

from deep_sarsa import DeepSARSA
from deep_sarsa.masking import toy_text_action_mask
from deep_sarsa.tabular import q_table

GAMMA = 0.99
TIME_LIMIT = 200  # Taxi-v4's TimeLimit
#: DeepSARSA's exploration: ε from 1 to 0.05 over the first half of its run, then held
EPSILON = dict(start=1.0, end=0.05, end_fraction=0.5)


@dataclass(frozen=True)
class TaxiTables:
    """
    Taxi-v4 (deterministic: not rainy, not fickle) as arrays, read from ``env.unwrapped.P``.

    :param next_state: ``s'`` of each ``(s, a)``, shape ``(500, 6)``
    :param reward: reward of each ``(s, a)``
    :param terminal: whether ``(s, a)`` ends the episode (a drop-off at the destination)
    :param valid: Taxi's action mask of each state
    :param start: probability of each start state
    """

    next_state: np.ndarray
    reward: np.ndarray
    terminal: np.ndarray
    valid: np.ndarray
    start: np.ndarray


def taxi_tables() -> TaxiTables:
    """Read Taxi-v4's transition table, action masks and start distribution."""
    taxi: Any = gym.make("Taxi-v4").unwrapped
    n_states, n_actions = 500, 6
    next_state = np.zeros((n_states, n_actions), dtype=np.int64)
    reward = np.zeros((n_states, n_actions))
    terminal = np.zeros((n_states, n_actions), dtype=bool)
    for s in range(n_states):
        for a in range(n_actions):
            ((probability, next_state[s, a], reward[s, a], terminal[s, a]),) = taxi.P[s][a]
            assert probability == 1.0
    valid = np.array([taxi.action_mask(s) for s in range(n_states)], dtype=bool)
    return TaxiTables(next_state, reward, terminal, valid, np.asarray(taxi.initial_state_distrib))


class VisitCounter(gym.Wrapper):
    """
    Counts how often each (state, action) pair is taken, from a given step on.

    :param env: an env with ``Discrete`` observations and actions
    :param start: count the steps from this one on (the first is step 0)
    """

    def __init__(self, env: gym.Env, start: int = 0) -> None:
        super().__init__(env)
        assert isinstance(env.observation_space, gym.spaces.Discrete) and isinstance(env.action_space, gym.spaces.Discrete)
        self.counts = np.zeros((int(env.observation_space.n), int(env.action_space.n)), dtype=np.int64)
        self.state, self.steps, self.start = 0, 0, start

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """
        :param kwargs: passed to the env
        :return: the first observation and info
        """
        obs, info = self.env.reset(**kwargs)
        self.state = int(obs)
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        """
        :param action: the action
        :return: the env's step
        """
        if self.steps >= self.start:
            self.counts[self.state, int(action)] += 1
        self.steps += 1
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.state = int(obs)
        return obs, reward, terminated, truncated, info


def make_taxi(counter: VisitCounter | None = None) -> gym.Env:
    """Taxi-v4 with its action mask exposed as ``action_masks()``; optionally counting visits."""
    env = counter if counter is not None else Monitor(gym.make("Taxi-v4"))
    return ActionMasker(env, toy_text_action_mask)


def train_linear(timesteps: int, seed: int) -> tuple[DeepSARSA, np.ndarray]:
    """
    DeepSARSA with a linear Q-network (``net_arch=[]``): a 6 × 500 weight matrix plus a bias.

    :param timesteps: env steps
    :param seed: random seed
    :return: the model and the visit count of every (state, action) pair once ε is at its final value
    """
    counter = VisitCounter(Monitor(gym.make("Taxi-v4")), start=int(EPSILON["end_fraction"] * timesteps))
    model = DeepSARSA(
        "MlpPolicy",
        make_taxi(counter),
        learning_rate=1e-2,
        buffer_size=50_000,
        learning_starts=1_000,
        batch_size=128,
        gamma=GAMMA,
        train_freq=1,
        gradient_steps=1,
        target_update_interval=500,
        exploration_fraction=EPSILON["end_fraction"],
        exploration_initial_eps=EPSILON["start"],
        exploration_final_eps=EPSILON["end"],
        policy_kwargs=dict(net_arch=[]),
        use_masking=True,
        seed=seed,
    )
    model.learn(timesteps, progress_bar=True)
    return model, counter.counts


def tabular_sarsa(
    tables: TaxiTables, steps: int, schedule_steps: int, alpha: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """
    Classic online tabular SARSA with the masked ε-greedy policy.

    ε follows DeepSARSA's schedule as a function of the step (over ``schedule_steps``) and stays at
    its final value afterwards. Episodes cut by the 200-step limit bootstrap, as in SB3.

    :param tables: Taxi as arrays
    :param steps: env steps
    :param schedule_steps: the length of DeepSARSA's run, over which its ε schedule is defined
    :param alpha: step size
    :param seed: random seed
    :return: the Q-table and the visit count of every (state, action) pair once ε is at its final value,
        both ``(500, 6)``
    """
    rng = np.random.default_rng(seed)
    epsilon_of = LinearSchedule(**EPSILON)
    valid_actions = [np.flatnonzero(row).tolist() for row in tables.valid]
    next_state, reward, terminal = tables.next_state.tolist(), tables.reward.tolist(), tables.terminal.tolist()
    q = np.zeros(tables.valid.shape)
    counts = np.zeros(tables.valid.shape, dtype=np.int64)
    uniforms, picks = rng.random(steps + 1).tolist(), rng.random(steps + 1).tolist()
    starts = rng.choice(len(tables.start), size=steps + 1, p=tables.start).tolist()

    def act(state: int, t: int) -> int:
        actions = valid_actions[state]
        if uniforms[t] < epsilon_of(1.0 - t / schedule_steps):
            return actions[int(picks[t] * len(actions))]
        values = q[state, actions]
        return actions[int(np.argmax(values))]

    count_from = int(EPSILON["end_fraction"] * schedule_steps)
    episode_start, state = 0, starts[0]
    action = act(state, 0)
    for t in range(steps):
        s_next, r, done = next_state[state][action], reward[state][action], terminal[state][action]
        counts[state, action] += t >= count_from
        if done:
            q[state, action] += alpha * (r - q[state, action])
        else:
            a_next = act(s_next, t + 1)  # the action the agent takes next: SARSA's a'
            q[state, action] += alpha * (r + GAMMA * q[s_next, a_next] - q[state, action])
        if done or t + 1 - episode_start == TIME_LIMIT:
            episode_start, state = t + 1, starts[t + 1]
            action = act(state, t + 1)
        else:
            state, action = s_next, a_next
    return q, counts


def optimal_q(tables: TaxiTables) -> np.ndarray:
    """Q* of Taxi by value iteration (valid actions only; invalid ones are -inf)."""
    q = np.zeros(tables.valid.shape)
    while True:
        v = np.where(tables.valid, q, -np.inf).max(axis=1)
        new_q = tables.reward + GAMMA * np.where(tables.terminal, 0.0, v[tables.next_state])
        if np.max(np.abs(new_q - q)) < 1e-10:
            return np.where(tables.valid, new_q, -np.inf)
        q = new_q


def greedy_actions(q: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The greedy action of every state among its valid actions."""
    return np.where(valid, q, -np.inf).argmax(axis=1)


def rollouts(tables: TaxiTables, actions: np.ndarray) -> tuple[float, set[int], np.ndarray]:
    """
    Run a deterministic policy from every start state (Taxi is deterministic: one episode each).

    :param tables: Taxi as arrays
    :param actions: the action of every state
    :return: the expected return over the start distribution, the states visited, and the return
        from each start state
    """
    expected, visited, returns = 0.0, set(), []
    for start in np.flatnonzero(tables.start):
        state, total = int(start), 0.0
        for _ in range(TIME_LIMIT):
            visited.add(state)
            action = actions[state]
            total += tables.reward[state, action]
            if tables.terminal[state, action]:
                break
            state = int(tables.next_state[state, action])
        expected += tables.start[start] * total
        returns.append(total)
    return float(expected), visited, np.array(returns)


def gradient_support(model: DeepSARSA, state: int, action: int, target: float) -> list[tuple[str, tuple[int, ...]]]:
    """
    The parameters that the loss ``(Q(s, a) - y)²`` of one sample reaches.

    :param model: a DeepSARSA model with a linear Q-network on a ``Discrete`` observation space
    :param state: s
    :param action: a
    :param target: y
    :return: ``(parameter name, index)`` of every nonzero gradient entry
    """
    model.q_net.zero_grad()
    q_values = model.q_net(th.tensor([state], device=model.device))
    ((q_values[0, action] - target) ** 2).backward()
    support = []
    for name, parameter in model.q_net.named_parameters():
        assert parameter.grad is not None
        support += [(name, tuple(int(i) for i in index)) for index in th.nonzero(parameter.grad)]
    model.q_net.zero_grad()
    return support


def draw(linear: np.ndarray, tabular: np.ndarray, output: Path) -> None:
    """Scatter plot of the linear network's Q-values against the tabular ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5))
    axis.scatter(tabular, linear, s=6, alpha=0.5)
    low, high = float(min(tabular.min(), linear.min())), float(max(tabular.max(), linear.max()))
    axis.plot([low, high], [low, high], color="black", linewidth=1, label="y = x")
    axis.set_xlabel("tabular SARSA Q(s, a)")
    axis.set_ylabel("linear Q-network W[a, s] + b[a]")
    axis.set_title(f"Taxi-v4: {len(linear)} state-action pairs visited often by both")
    axis.legend()
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=60_000, help="DeepSARSA's env steps")
    parser.add_argument("--tabular-steps", type=int, default=600_000, help="tabular SARSA's env steps")
    parser.add_argument("--alpha", type=float, default=0.1, help="tabular SARSA's step size")
    parser.add_argument("--min-visits", type=int, default=20, help="compare pairs visited this often by both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="scatter plot, linear vs tabular (PNG)")
    parser.add_argument("--smoke", action="store_true", help="a few thousand steps only")
    args = parser.parse_args()
    timesteps, tabular_steps = (3_000, 20_000) if args.smoke else (args.timesteps, args.tabular_steps)
    min_visits, episodes = (5, 5) if args.smoke else (args.min_visits, 100)
    tables = taxi_tables()

    model, linear_counts = train_linear(timesteps, args.seed)
    linear = q_table(model)
    # One sample's loss reaches row a, column s of the weight matrix and entry a of the bias, nothing else
    support = gradient_support(model, state=123, action=4, target=1.0)
    print(f"gradient of (Q(123, 4) - y)² is nonzero at: {support}")
    assert support == [("q_net.0.weight", (4, 123)), ("q_net.0.bias", (4,))]

    tabular, tabular_counts = tabular_sarsa(tables, tabular_steps, timesteps, args.alpha, args.seed)

    q_star = optimal_q(tables)
    optimum, optimal_states, optimal_returns = rollouts(tables, greedy_actions(q_star, tables.valid))
    linear_return, _, linear_returns = rollouts(tables, greedy_actions(linear, tables.valid))
    tabular_return, _, tabular_returns = rollouts(tables, greedy_actions(tabular, tables.valid))
    solved = "solved" if np.all(linear_returns >= optimal_returns) else "not solved"
    print(
        f"greedy return, exact mean over the {len(optimal_returns)} start states (optimum {optimum:.2f}): "
        f"linear {linear_return:.2f}, optimal from {np.sum(linear_returns >= optimal_returns)} of them: {solved}; "
        f"tabular {tabular_return:.2f}, optimal from {np.sum(tabular_returns >= optimal_returns)}"
    )
    eval_env = DummyVecEnv([make_taxi])
    eval_env.seed(args.seed + 1000)
    mean, std = cast(tuple[float, float], evaluate_policy(model, eval_env, n_eval_episodes=episodes))  # type: ignore[arg-type]
    print(f"SB3 evaluate_policy, {episodes} random episodes: {mean:.2f} ± {std:.2f} (Taxi-v4's reward_threshold: 8)")

    often = (linear_counts >= min_visits) & (tabular_counts >= min_visits) & tables.valid
    x, y = tabular[often], linear[often]
    correlation = float(np.corrcoef(x, y)[0, 1]) if often.sum() > 1 else float("nan")
    print(
        f"{often.sum()} state-action pairs visited ≥ {min_visits} times by both at ε = {EPSILON['end']} "
        f"(Q from {x.min():.1f} to {x.max():.1f}): correlation {correlation:.3f}, mean |difference| {np.abs(x - y).mean():.2f}"
    )
    states = sorted(optimal_states)
    linear_actions = greedy_actions(linear, tables.valid)[states]
    tabular_actions = greedy_actions(tabular, tables.valid)[states]
    best = np.isclose(q_star[states], q_star[states].max(axis=1, keepdims=True))  # ties: several optimal actions
    rows = np.arange(len(states))
    print(
        f"greedy actions on the {len(states)} states that optimal paths visit: "
        f"{np.mean(linear_actions == tabular_actions):.0%} agree; optimal: "
        f"{best[rows, linear_actions].mean():.0%} (linear), {best[rows, tabular_actions].mean():.0%} (tabular)"
    )

    if args.output is not None:
        draw(y, x, args.output)
        print(f"wrote {args.output}")
    elif args.smoke:  # the figure code runs in CI too
        with tempfile.TemporaryDirectory() as folder:
            draw(y, x, Path(folder) / "taxi_linear.png")
        print("drew the scatter plot into a temporary folder")


if __name__ == "__main__":
    main()
