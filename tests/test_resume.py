"""
A run of N steps equals the same run stopped near N/2, checkpointed, and resumed in a fresh
process: parameters equal bit for bit (CPU), with a decaying ε, several envs, each variant.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from deep_sarsa import DeepSARSA
from deep_sarsa.checkpoint import save_checkpoint

TOTAL = 800


class RequestStopAt(BaseCallback):
    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def _on_step(self) -> bool:
        if self.num_timesteps == self.at:
            self.model.request_stop()  # type: ignore[attr-defined]
        return True


def make_model(next_action: str) -> DeepSARSA:
    env = make_vec_env("CartPole-v1", n_envs=2, seed=5, env_kwargs=dict(max_episode_steps=40))
    return DeepSARSA(
        "MlpPolicy",
        env,
        next_action=next_action,  # type: ignore[arg-type]
        learning_starts=60,
        buffer_size=300,  # wraps around before the stop
        batch_size=16,
        train_freq=4,
        target_update_interval=(3, "episode"),
        exploration_fraction=0.8,  # ε still decaying across the stop
        seed=5,
    )


def parameters(model: DeepSARSA) -> list[np.ndarray]:
    return [p.detach().cpu().numpy() for p in model.policy.parameters()]


@pytest.mark.parametrize("next_action", ["sampled", "expected", "stored"])
def test_resume_in_a_fresh_process_is_bit_for_bit(next_action: str, tmp_path: Path) -> None:
    th.set_num_threads(1)
    continuous = make_model(next_action).learn(TOTAL)

    interrupted = make_model(next_action).learn(TOTAL, callback=RequestStopAt(TOTAL // 2))
    assert TOTAL // 2 <= interrupted.num_timesteps < TOTAL
    save_checkpoint(interrupted, tmp_path / "checkpoint")
    script = (
        "import numpy as np, torch as th\n"
        "from deep_sarsa.checkpoint import resume\n"
        "th.set_num_threads(1)\n"
        f"model = resume(r'{tmp_path / 'checkpoint'}')\n"
        f"np.savez(r'{tmp_path / 'resumed.npz'}', *[p.detach().numpy() for p in model.policy.parameters()])\n"
        "print(model.num_timesteps, model._n_updates, model._episode_num, model.exploration_rate)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    resumed = np.load(tmp_path / "resumed.npz")
    for i, expected in enumerate(parameters(continuous)):
        np.testing.assert_array_equal(resumed[f"arr_{i}"], expected)
    counters = out.stdout.split()
    assert counters[:3] == [str(continuous.num_timesteps), str(continuous._n_updates), str(continuous._episode_num)]
    assert float(counters[3]) == continuous.exploration_rate
