"""
The Deep SARSA lecture's MountainCar-v0 setting, as DeepSARSA keywords, with the lecture's two figures.

The lecture (escape-velocity-labs, *beginner_master_rl*, section 8) describes the algorithm: a
Q-network with one output per action, an ε-greedy policy, a FIFO replay memory sampled at
random, the MSE loss on Q(s, a) against ``r + γ·Q_target(s', a')`` with a' drawn from the
ε-greedy policy (``next_action="sampled"``), and a target network synced every K episodes. The
numbers are those of its companion notebook (``Section_8_deep_sarsa_complete.ipynb``): a
[128, 64] ReLU network, AdamW with learning rate 1e-3, batch 32, γ = 0.99, a replay memory of
1,000,000 transitions sampled once it holds 10 batches (``learning_starts=320``), one gradient
step per env step, ε = 0.01 throughout, the target network synced every 10 episodes, and 2500
episodes (2500 × 200 = 500k steps: MountainCar's episodes last 200 steps until the car first
reaches the flag).

Two differences: SB3 clips the gradient norm at 10 (``max_grad_norm``, DQN's default), which
the notebook does not do; and the notebook treats the 200-step time limit as a terminal state
(old Gym's ``done``), where SB3 records a truncation and DeepSARSA bootstraps, since time running
out is not a property of the state. That second difference decides the outcome. Measured
(``benchmarks/harness.py``, seed 0, 500k steps, greedy evaluation every 50k steps):

* truncation bootstrapped (the default): the flag is never reached (-200 at every evaluation);
  the Q-values settle near -92 almost everywhere, the value of never arriving, and with ε = 0.01
  nothing drives exploration further;
* ``--timeout-as-terminal`` (the notebook's reading, :class:`deep_sarsa.wrappers.TimeLimitAsTermination`):
  the flag is reached from 200k steps on (-123 to -162 at the evaluations; 14 of 20 greedy
  episodes of the final model). Ending every episode at step 200 acts as a reward shaping: states
  reached late in an episode are worth more, and the states with the most energy are reached late.

Figures, as in the lecture: the cost-to-go ``-max_a Q(s, a)`` over (position, velocity), a 3D
surface, and the greedy action over the same grid (push left / no push / push right).

    python examples/mountain_car_lecture.py --output-dir runs/mountain_car    # 500k steps (~20 min), model + figures
    python examples/mountain_car_lecture.py --timeout-as-terminal --output-dir runs/mountain_car_notebook
    python examples/mountain_car_lecture.py --from-model runs/mountain_car/model.zip   # figures only, no training
    python examples/mountain_car_lecture.py --smoke
"""

import argparse
import tempfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from deep_sarsa import DeepSARSA
from deep_sarsa.presets import LECTURE_MOUNTAIN_CAR
from deep_sarsa.wrappers import TimeLimitAsTermination

ENV_ID = "MountainCar-v0"
POSITION = (-1.2, 0.6)
VELOCITY = (-0.07, 0.07)
ACTIONS = ["push left", "no push", "push right"]
LECTURE = LECTURE_MOUNTAIN_CAR


def train(timesteps: int, seed: int, timeout_as_terminal: bool = False) -> DeepSARSA:
    """
    Train DeepSARSA with the lecture's setting.

    :param timesteps: env steps
    :param seed: random seed
    :param timeout_as_terminal: end episodes at the time limit as the notebook does (no bootstrap)
    :return: the trained model
    """
    env = gym.make(ENV_ID)
    if timeout_as_terminal:
        env = TimeLimitAsTermination(env)
    model = DeepSARSA("MlpPolicy", Monitor(env), seed=seed, verbose=0, **LECTURE)
    return model.learn(timesteps, progress_bar=True)


def q_grid(model: DeepSARSA, points: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Q-values over a grid of (position, velocity).

    :param model: a model trained on MountainCar-v0
    :param points: grid points along each axis
    :return: positions ``(points,)``, velocities ``(points,)`` and ``Q[velocity, position, action]``
    """
    positions = np.linspace(*POSITION, points, dtype=np.float32)
    velocities = np.linspace(*VELOCITY, points, dtype=np.float32)
    grid_p, grid_v = np.meshgrid(positions, velocities)  # rows: velocity, columns: position
    states = np.stack([grid_p.ravel(), grid_v.ravel()], axis=1)
    with th.no_grad():
        q = model.q_net(th.as_tensor(states, device=model.device)).cpu().numpy()
    return positions, velocities, q.reshape(points, points, -1)


def draw(model: DeepSARSA, folder: Path) -> list[Path]:
    """
    Draw the cost-to-go surface and the greedy-action map.

    :param model: a model trained on MountainCar-v0
    :param folder: where to write ``cost_to_go.png`` and ``greedy_actions.png``
    :return: the two files
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    positions, velocities, q = q_grid(model)
    folder.mkdir(parents=True, exist_ok=True)

    figure = plt.figure(figsize=(7, 6))
    axis: Any = figure.add_subplot(projection="3d")
    grid_p, grid_v = np.meshgrid(positions, velocities)
    surface = axis.plot_surface(grid_p, grid_v, -q.max(axis=2), cmap="viridis", linewidth=0, antialiased=False)
    figure.colorbar(surface, shrink=0.6, pad=0.1, label="-max_a Q(s, a)")
    axis.set_xlabel("position")
    axis.set_ylabel("velocity")
    axis.set_title("Estimated cost-to-go")
    cost_to_go = folder / "cost_to_go.png"
    figure.tight_layout()
    figure.savefig(cost_to_go, dpi=100)
    plt.close(figure)

    colors = ["tab:red", "tab:gray", "tab:blue"]
    figure, axis = plt.subplots(figsize=(7, 5))
    axis.imshow(
        q.argmax(axis=2),
        origin="lower",
        extent=(*POSITION, *VELOCITY),
        aspect="auto",
        cmap=ListedColormap(colors),
        vmin=-0.5,
        vmax=len(ACTIONS) - 0.5,
        interpolation="nearest",
    )
    axis.legend(
        handles=[Patch(color=color, label=label) for color, label in zip(colors, ACTIONS, strict=True)],
        loc="upper left",
        bbox_to_anchor=(1.02, 1),
    )
    axis.set_xlabel("position")
    axis.set_ylabel("velocity")
    axis.set_title("Greedy action")
    greedy_actions = folder / "greedy_actions.png"
    figure.tight_layout()
    figure.savefig(greedy_actions, dpi=100)
    plt.close(figure)
    return [cost_to_go, greedy_actions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=500_000, help="env steps (the lecture: 2500 episodes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timeout-as-terminal", action="store_true", help="the notebook's reading of the 200-step limit: no bootstrap there"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="model.zip, cost_to_go.png and greedy_actions.png go here (default: runs/mountain_car_lecture, "
        "or the model's folder with --from-model)",
    )
    parser.add_argument("--from-model", type=Path, default=None, help="draw the figures of this saved model, no training")
    parser.add_argument("--episodes", type=int, default=20, help="greedy evaluation episodes")
    parser.add_argument("--smoke", action="store_true", help="2000 steps only, figures to a temporary folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:  # --smoke without --output-dir writes here
        output = args.output_dir
        if args.from_model is not None:
            model = DeepSARSA.load(args.from_model, device="cpu")
            output = output or args.from_model.parent
        else:
            model = train(2_000 if args.smoke else args.timesteps, args.seed, args.timeout_as_terminal)
            output = output or (Path(scratch) if args.smoke else Path("runs") / "mountain_car_lecture")
            output.mkdir(parents=True, exist_ok=True)
            model.save(output / "model.zip")
            print(f"saved {output / 'model.zip'}")
        for figure in draw(model, output):
            print(f"wrote {figure}")

    episodes = 3 if args.smoke else args.episodes
    returns, _ = evaluate_policy(
        model, Monitor(gym.make(ENV_ID)), n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True
    )
    values = np.array(returns, dtype=float)
    print(
        f"greedy evaluation over {episodes} episodes: mean return {values.mean():.1f} ± {values.std():.1f}, "
        f"flag reached (in fewer than 200 steps) in {np.sum(values > -200)} of {episodes}"
    )


if __name__ == "__main__":
    main()
