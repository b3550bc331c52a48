"""
SB3 callbacks with DeepSARSA: periodic evaluation, checkpoints, early stop at a reward threshold,
and a custom callback that prints ε and the number of gradient steps.

    python examples/callbacks.py            # up to 50k steps, stops early once CartPole is solved
    python examples/callbacks.py --smoke    # a few hundred steps
"""

import argparse
import tempfile
from pathlib import Path

import gymnasium as gym
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CallbackList,
    CheckpointCallback,
    EvalCallback,
    StopTrainingOnRewardThreshold,
)
from stable_baselines3.common.monitor import Monitor

from deep_sarsa import DeepSARSA
from deep_sarsa.presets import rl_zoo_dqn


class PrintProgress(BaseCallback):
    """A custom callback: every ``every`` steps, print ε and the number of gradient steps so far."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every == 0:
            model = self.model
            print(f"step {self.num_timesteps}: ε = {model.exploration_rate:.3f}, {model._n_updates} gradient steps")  # type: ignore[attr-defined]
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=50_000)
    parser.add_argument("--smoke", action="store_true", help="a few hundred steps only")
    args = parser.parse_args()
    timesteps = 1_500 if args.smoke else args.timesteps

    with tempfile.TemporaryDirectory() as folder:
        stop = StopTrainingOnRewardThreshold(reward_threshold=475, verbose=1)
        evaluation = EvalCallback(
            Monitor(gym.make("CartPole-v1")),
            eval_freq=500 if args.smoke else 5_000,
            n_eval_episodes=5 if args.smoke else 20,
            callback_on_new_best=stop,
            best_model_save_path=folder,
            verbose=1,
        )
        checkpoints = CheckpointCallback(save_freq=max(timesteps // 5, 1), save_path=folder, name_prefix="sarsa")
        model = DeepSARSA("MlpPolicy", "CartPole-v1", next_action="stored", seed=0, **rl_zoo_dqn("CartPole-v1"))
        model.learn(timesteps, callback=CallbackList([evaluation, checkpoints, PrintProgress(every=max(timesteps // 5, 1))]))
        print(f"stopped after {model.num_timesteps} steps; best mean evaluation return {evaluation.best_mean_reward:.1f}")
        print("files:", ", ".join(sorted(path.name for path in Path(folder).iterdir())))


if __name__ == "__main__":
    main()
