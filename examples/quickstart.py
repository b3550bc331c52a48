"""
Train Deep SARSA on CartPole with the package's preset and a progress bar, save it, load it back, and
evaluate it on a seeded env: it prints whether CartPole-v1 is solved (a mean return of at least 475,
the env's ``reward_threshold``).

    python examples/quickstart.py            # the preset's 50k steps: about a minute on 2 cores
    python examples/quickstart.py --smoke    # a few hundred steps, to check that everything runs

The preset (``deep_sarsa/hyperparams/deep_sarsa.yml``) solved CartPole on every one of 10 fresh seeds
(benchmarks/results/validation.md); training seed 0 and evaluation seed 10000 are the demo's defaults.
"""

import argparse
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from deep_sarsa import DeepSARSA
from deep_sarsa.presets import preset

ENV_ID = "CartPole-v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, help="training steps (default: the preset's, 50000)")
    parser.add_argument("--seed", type=int, default=0, help="the training seed (default 0)")
    parser.add_argument("--eval-seed", type=int, default=10_000, help="the evaluation env's seed (default 10000)")
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes (default 20)")
    parser.add_argument("--smoke", action="store_true", help="a few hundred steps only")
    args = parser.parse_args()
    settings = preset(ENV_ID)
    timesteps = 1_500 if args.smoke else (args.timesteps or settings.n_timesteps)

    start = time.perf_counter()
    model = DeepSARSA(settings.policy, ENV_ID, seed=args.seed, **settings.hyperparameters)
    model.learn(timesteps, progress_bar=True)
    seconds = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sarsa_cartpole.zip"
        model.save(path)
        loaded = DeepSARSA.load(path)

    env = Monitor(gym.make(ENV_ID))
    env.reset(seed=args.eval_seed)  # the episodes that follow are the same on every run
    returns, _ = evaluate_policy(loaded, env, n_eval_episodes=args.episodes, deterministic=True, return_episode_rewards=True)
    mean, std = float(np.mean(returns)), float(np.std(returns))
    threshold = float(gym.spec(ENV_ID).reward_threshold or 0.0)
    verdict = f"solved (>= {threshold:g})" if mean >= threshold else f"not solved (< {threshold:g})"
    print(
        f"DeepSARSA on {ENV_ID} after {timesteps} steps ({seconds:.0f} s of training, seed {args.seed}): "
        f"mean return {mean:.1f} ± {std:.1f} over {args.episodes} episodes (eval seed {args.eval_seed}): {verdict}"
    )


if __name__ == "__main__":
    main()
