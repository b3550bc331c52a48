"""
DeepSARSA with several envs at once (SubprocVecEnv, one process each) and with a Dict
observation space (MultiInputPolicy). The "stored" variant reads a' from each env's own column
of the replay buffer, so it works unchanged with any number of envs.

    python examples/vector_envs.py            # 4 CartPole envs for 40k steps, then a Dict-observation env
    python examples/vector_envs.py --smoke    # a few hundred steps each
"""

import argparse

import gymnasium as gym
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import SimpleMultiObsEnv
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import SubprocVecEnv

from deep_sarsa import DeepSARSA
from deep_sarsa.presets import rl_zoo_dqn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few hundred steps only")
    args = parser.parse_args()

    # Several envs: 4 CartPoles in their own processes; every env step adds 4 transitions
    envs = make_vec_env("CartPole-v1", n_envs=4, seed=0, vec_env_cls=SubprocVecEnv)
    hyperparameters = dict(rl_zoo_dqn("CartPole-v1"), train_freq=64, gradient_steps=128)
    model = DeepSARSA("MlpPolicy", envs, next_action="stored", seed=0, **hyperparameters)
    model.learn(2_000 if args.smoke else 40_000)
    envs.close()
    mean, std = evaluate_policy(model, Monitor(gym.make("CartPole-v1")), n_eval_episodes=3 if args.smoke else 20)
    print(f"4 envs, {model.num_timesteps} steps: CartPole mean return {mean:.1f} ± {std:.1f}")

    # A Dict observation space (a grid position as two one-hot vectors and an image)
    dict_env = SimpleMultiObsEnv(random_start=False)
    model = DeepSARSA("MultiInputPolicy", dict_env, learning_starts=100, exploration_fraction=0.5, seed=0)
    model.learn(500 if args.smoke else 20_000)
    mean, std = evaluate_policy(model, Monitor(SimpleMultiObsEnv(random_start=False)), n_eval_episodes=3)
    print(f"Dict observations, {model.num_timesteps} steps: mean return {mean:.2f} ± {std:.2f}")


if __name__ == "__main__":
    main()
