"""
Invalid-action masking on Taxi-v4: DeepSARSA with and without masks.

Taxi's own ``action_mask(state)`` says which moves do not hit a wall and when picking up or
dropping off is legal. sb3-contrib's ``ActionMasker`` exposes it as ``action_masks()``, which
DeepSARSA detects and uses: exploration, greedy actions and the targets' a' only ever consider
legal actions, so the agent never pays Taxi's -10 for an illegal pick-up or drop-off.

    python examples/masked_taxi.py            # 60k steps each, masked and unmasked (a few minutes)
    python examples/masked_taxi.py --smoke    # a few hundred steps, to check that everything runs
"""

import argparse

import gymnasium as gym
from sb3_contrib.common.maskable.evaluation import evaluate_policy as evaluate_masked
from sb3_contrib.common.wrappers import ActionMasker
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from deep_sarsa import DeepSARSA
from deep_sarsa.masking import toy_text_action_mask


def make_taxi() -> gym.Env:
    return ActionMasker(Monitor(gym.make("Taxi-v4")), toy_text_action_mask)


def train(use_masking: bool, timesteps: int, seed: int) -> DeepSARSA:
    # One-hot states and no hidden layer: the Q-network is a Q-table (500 states x 6 actions)
    model = DeepSARSA(
        "MlpPolicy",
        make_taxi(),
        learning_rate=1e-2,
        buffer_size=50_000,
        learning_starts=1_000,
        batch_size=128,
        gamma=0.99,
        train_freq=1,
        gradient_steps=1,
        target_update_interval=500,
        exploration_fraction=0.5,
        exploration_final_eps=0.05,
        policy_kwargs=dict(net_arch=[]),
        use_masking=use_masking,
        seed=seed,
    )
    return model.learn(timesteps, progress_bar=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few hundred steps only")
    args = parser.parse_args()
    timesteps = 1_500 if args.smoke else args.timesteps
    episodes = 3 if args.smoke else 50

    masked = train(True, timesteps, args.seed)
    mean, std = evaluate_masked(masked, make_taxi(), n_eval_episodes=episodes)  # type: ignore[arg-type]
    print(f"with masks:    mean return {mean:.2f} ± {std:.2f} over {episodes} episodes (optimal policy: 7.93 on average)")

    unmasked = train(False, timesteps, args.seed)
    mean, std = evaluate_policy(unmasked, Monitor(gym.make("Taxi-v4")), n_eval_episodes=episodes)
    print(f"without masks: mean return {mean:.2f} ± {std:.2f} over {episodes} episodes")


if __name__ == "__main__":
    main()
