"""
Train Deep SARSA on CartPole with a progress bar, save it, load it back, evaluate it.

    python examples/quickstart.py            # full run (50k steps, about a minute or two on 2 cores)
    python examples/quickstart.py --smoke    # a few hundred steps, to check that everything runs
"""

import argparse
import tempfile
from pathlib import Path

import gymnasium as gym
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from deep_sarsa import DeepSARSA
from deep_sarsa.presets import rl_zoo_dqn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few hundred steps only")
    args = parser.parse_args()
    timesteps = 1_500 if args.smoke else args.timesteps

    # rl-baselines3-zoo's DQN hyperparameters for CartPole-v1, used unchanged
    model = DeepSARSA("MlpPolicy", "CartPole-v1", seed=args.seed, **rl_zoo_dqn("CartPole-v1"))
    model.learn(timesteps, progress_bar=True)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sarsa_cartpole.zip"
        model.save(path)
        loaded = DeepSARSA.load(path)

    env = Monitor(gym.make("CartPole-v1"))
    mean, std = evaluate_policy(loaded, env, n_eval_episodes=20, deterministic=True)
    print(f"DeepSARSA on CartPole-v1 after {timesteps} steps: mean return {mean:.1f} ± {std:.1f} over 20 episodes")


if __name__ == "__main__":
    main()
