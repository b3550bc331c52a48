"""
DeepSARSA on an Atari game from pixels: ``CnnPolicy`` (the Nature-DQN network), SB3's Atari
preprocessing (``make_atari_env``: no-op starts, 4-frame skip with max-pooling, a life lost ends
a training episode, fire on reset, 84 × 84 grey frames, rewards clipped to their sign) and a stack
of the last 4 frames (``VecFrameStack``).

The defaults are rl-baselines3-zoo's DQN settings for Atari, used unchanged: buffer 100k,
learning rate 1e-4, batch 32, learning starts after 100k steps, target network synced every
1000 steps, one gradient step every 4 env steps, ε from 1 to 0.01 over the first 10% of the run.
rl-zoo trains for 10M steps: that is a job for a GPU (``device="auto"`` picks it up), not for a
laptop CPU. The replay buffer of 100k stacked frames takes about 5.6 GB of memory.

The games come from ``ale-py``, whose wheels ship the ROMs (``pip install ale-py``, in the
``atari`` and ``dev`` extras); nothing is downloaded at run time. Env ids: the ``NoFrameskip-v4``
ones as rl-zoo uses them (default ``BreakoutNoFrameskip-v4``), or ``ALE/<Game>-v5``, made here with
``frameskip=1`` so that the Atari wrapper does the frame skipping (v5 keeps its sticky actions).

    python examples/atari.py                                  # BreakoutNoFrameskip-v4, 10M steps
    python examples/atari.py --env ALE/Pong-v5 --timesteps 2000000 --save pong.zip
    python examples/atari.py --smoke                          # 600 steps, a tiny buffer, a few gradient steps
"""

import argparse
from pathlib import Path
from typing import Any

import ale_py
import gymnasium as gym
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecFrameStack

from deep_sarsa import DeepSARSA

gym.register_envs(ale_py)

#: rl-baselines3-zoo's DQN entry for Atari games
RL_ZOO_ATARI: dict[str, Any] = dict(
    buffer_size=100_000,
    learning_rate=1e-4,
    batch_size=32,
    learning_starts=100_000,
    target_update_interval=1000,
    train_freq=4,
    gradient_steps=1,
    exploration_fraction=0.1,
    exploration_final_eps=0.01,
    optimize_memory_usage=False,
)


def make_env(env_id: str, n_envs: int, seed: int) -> VecEnv:
    """
    An Atari game with SB3's preprocessing and a stack of 4 frames.

    :param env_id: e.g. ``BreakoutNoFrameskip-v4`` or ``ALE/Breakout-v5``
    :param n_envs: number of envs
    :param seed: random seed
    :return: the vectorized env
    """
    # v5 ids skip 4 frames themselves; the Atari wrapper skips (and max-pools) instead
    env_kwargs = dict(frameskip=1) if env_id.startswith("ALE/") else None
    return VecFrameStack(make_atari_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs), n_stack=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="BreakoutNoFrameskip-v4", help="an Atari env id")
    parser.add_argument("--timesteps", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--next-action", choices=["sampled", "expected", "stored"], default="sampled")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--save", type=Path, default=None, help="save the trained model to this zip")
    parser.add_argument("--smoke", action="store_true", help="600 steps, a 1000-transition buffer")
    args = parser.parse_args()

    hyperparameters = dict(RL_ZOO_ATARI)
    timesteps, episodes = args.timesteps, args.eval_episodes
    if args.smoke:
        hyperparameters.update(buffer_size=1_000, learning_starts=200, target_update_interval=100)
        timesteps, episodes = 600, 1
    model = DeepSARSA(
        "CnnPolicy", make_env(args.env, 1, args.seed), next_action=args.next_action, seed=args.seed, **hyperparameters
    )
    model.learn(timesteps, progress_bar=True)
    print(f"{model.num_timesteps} steps, {model._n_updates} gradient steps on {model.device}")
    if args.save is not None:
        model.save(args.save)
        print(f"saved {args.save}")

    # Whole games (all lives), ε-greedy with the final ε = 0.01: a purely greedy agent can stall
    mean, std = evaluate_policy(model, make_env(args.env, 1, args.seed + 1000), n_eval_episodes=episodes, deterministic=False)
    print(f"{args.env}: mean score {mean:.1f} ± {std:.1f} over {episodes} games (unclipped)")


if __name__ == "__main__":
    main()
