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

# rl-baselines3-zoo's DQN hyperparameters for CartPole-v1, used unchanged
CARTPOLE = dict(
    learning_rate=2.3e-3,
    batch_size=64,
    buffer_size=100_000,
    learning_starts=1000,
    gamma=0.99,
    target_update_interval=10,
    train_freq=256,
    gradient_steps=128,
    exploration_fraction=0.16,
    exploration_final_eps=0.04,
    policy_kwargs=dict(net_arch=[256, 256]),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few hundred steps only")
    args = parser.parse_args()
    timesteps = 1_500 if args.smoke else args.timesteps

    model = DeepSARSA("MlpPolicy", "CartPole-v1", verbose=0, seed=args.seed, **CARTPOLE)  # type: ignore[arg-type]
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
