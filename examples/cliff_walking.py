"""
SARSA vs Q-learning on CliffWalking with ε = 0.1: DeepSARSA learns the safe path, DQN the edge.

Both learn a Q-table (one-hot states, ``net_arch=[]``) with the same ε-greedy exploration, held
at 0.1 after the first half of the run (the package's ``CliffWalking-v1`` preset; with only 20%
of the run to explore, DeepSARSA had not found the goal yet in most seeds).
DQN's target ``max_a Q(s', a)`` ignores that the agent explores, so its greedy path runs along
the cliff (13 steps, return -13), where every exploratory step down costs -100. DeepSARSA's
target follows the ε-greedy policy itself, so it prices those falls in and keeps a row or two
away from the edge (return -15 or -17). The script draws both greedy paths.

    python examples/cliff_walking.py --output cliff.png     # 60k steps each, about 5 minutes
    python examples/cliff_walking.py --smoke
"""

import argparse
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import TimeLimit
from stable_baselines3 import DQN

from deep_sarsa import DeepSARSA
from deep_sarsa.presets import preset

ROWS, COLUMNS = 4, 12
START, GOAL = 36, 47
MOVES = {0: (-1, 0), 1: (0, 1), 2: (1, 0), 3: (0, -1)}  # up, right, down, left


def make_env() -> gym.Env:
    return TimeLimit(gym.make("CliffWalking-v1"), max_episode_steps=200)


def train(algorithm: str, timesteps: int, seed: int) -> DQN | DeepSARSA:
    # The package's CliffWalking preset for both: a Q-table, ε from 1 down to 0.1 over half the
    # run, then held there: the values learned are those of ε = 0.1
    settings: dict[str, Any] = preset("CliffWalking-v1").hyperparameters
    target = {key: settings.pop(key) for key in ("next_action", "next_action_net")}  # DeepSARSA's own keywords
    if algorithm == "dqn":
        return DQN("MlpPolicy", make_env(), seed=seed, **settings).learn(timesteps)
    return DeepSARSA("MlpPolicy", make_env(), seed=seed, **target, **settings).learn(timesteps)


def greedy_path(model: DQN | DeepSARSA) -> tuple[list[int], float]:
    """Follow the greedy policy from the start: the cells visited and the return (at most 50 steps)."""
    env = gym.make("CliffWalking-v1")
    state, _ = env.reset(seed=0)
    path, total = [int(state)], 0.0
    for _ in range(50):
        action, _ = model.predict(np.array(state), deterministic=True)
        state, reward, terminated, _, _ = env.step(int(action))
        path.append(int(state))
        total += float(reward)
        if terminated:
            break
    return path, total


def draw(paths: dict[str, tuple[list[int], float]], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 3.4))
    axis.add_patch(plt.Rectangle((0.5, 2.5), 10, 1, color="black", alpha=0.7))
    axis.text(5.5, 3, "cliff (-100)", color="white", ha="center", va="center")
    axis.text(0, 3, "S", ha="center", va="center", fontsize=14)
    axis.text(11, 3, "G", ha="center", va="center", fontsize=14)
    for (name, (path, total)), offset, color in zip(paths.items(), (-0.12, 0.12), ("tab:red", "tab:blue"), strict=False):
        rows, columns = np.divmod(np.array(path), COLUMNS)
        axis.plot(columns + offset, rows + offset, "-o", color=color, label=f"{name}: return {total:.0f}")
    axis.set_xlim(-0.5, COLUMNS - 0.5)
    axis.set_ylim(ROWS - 0.5, -0.5)
    axis.set_xticks(range(COLUMNS))
    axis.set_yticks(range(ROWS))
    axis.grid(True)
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, 1.25), ncol=2)
    figure.tight_layout()
    figure.savefig(output, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="draw both greedy paths into this PNG")
    parser.add_argument("--smoke", action="store_true", help="a few hundred steps only")
    args = parser.parse_args()
    timesteps = 1_200 if args.smoke else args.timesteps

    paths = {}
    sarsa = f"DeepSARSA ({preset('CliffWalking-v1').hyperparameters['next_action']})"
    for name, algorithm in [("DQN (Q-learning)", "dqn"), (sarsa, "sarsa")]:
        path, total = greedy_path(train(algorithm, timesteps, args.seed))
        paths[name] = (path, total)
        print(f"{name}: greedy path of {len(path) - 1} steps, return {total:.0f}")
    if args.output is not None:
        draw(paths, args.output)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
