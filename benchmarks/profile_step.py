"""
Where the time goes in the ``step`` setting of ``benchmarks/throughput.py``, timed inside ``learn()`` (each phase's
method wrapped in a timer, about 1 µs a call): microseconds per env step (rollout) and per gradient step (``train()``).

    python benchmarks/profile_step.py                      # DeepSARSA ("sampled") and DQN, one thread
    python benchmarks/profile_step.py --next-action stored --steps 20000
"""

import argparse
import functools
import time
from collections.abc import Callable
from typing import Any

import torch as th
from stable_baselines3 import DQN
from stable_baselines3.common.vec_env import DummyVecEnv
from throughput import SETTINGS

from deep_sarsa import DeepSARSA, fast

STEP = SETTINGS["step"]


def timer(function: Callable[..., Any], totals: dict[str, float], label: str) -> Callable[..., Any]:
    """``function``, adding the time spent in it to ``totals[label]``."""

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - start

    return timed


def profile(algorithm: str, next_action: str, warm_steps: int, steps: int) -> None:
    """Train ``warm_steps`` untimed, then ``steps`` with every phase timed, and print the table."""
    model: DQN | DeepSARSA
    if algorithm == "dqn":
        model = DQN("MlpPolicy", "CartPole-v1", seed=0, device="cpu", **STEP)
    else:
        model = DeepSARSA("MlpPolicy", "CartPole-v1", next_action=next_action, seed=0, device="cpu", **STEP)  # type: ignore[arg-type]
    model.learn(warm_steps)
    totals: dict[str, float] = {}
    rollout = ["collect_rollouts", "_sample_action", "_store_transition", "_on_step"]
    training = ["train", "_sample", "_td_target"] if algorithm != "dqn" else ["train"]
    for name in rollout + training:
        setattr(model, name, timer(getattr(model, name), totals, name))
    assert model.env is not None and isinstance(model.env, DummyVecEnv)
    model.env.step_wait = timer(model.env.step_wait, totals, "env step (DummyVecEnv.step_wait)")  # type: ignore[method-assign]
    optimizer = model.policy.optimizer
    # DeepSARSA calls the optimizer's step and the clipping through deep_sarsa.fast
    step, clip = fast.optimizer_step, fast.clip_grad_norm
    if algorithm == "dqn":
        optimizer.step = timer(optimizer.step, totals, "optimizer step")  # type: ignore[method-assign]
    else:
        fast.optimizer_step = timer(step, totals, "optimizer step")
        fast.clip_grad_norm = timer(clip, totals, "gradient clipping")
    backward = th.Tensor.backward
    th.Tensor.backward = timer(backward, totals, "backward")  # type: ignore[method-assign]
    updates = model._n_updates
    try:
        model.learn(steps, reset_num_timesteps=False)
    finally:
        th.Tensor.backward = backward  # type: ignore[method-assign]
        fast.optimizer_step, fast.clip_grad_norm = step, clip
    gradient_steps = model._n_updates - updates
    name = "SB3 DQN" if algorithm == "dqn" else f"DeepSARSA ({next_action})"
    print(f"\n{name}: {steps} env steps, {gradient_steps} gradient steps")
    for label, seconds in totals.items():
        per, unit = (steps, "env step") if label in rollout or label.startswith("env") else (gradient_steps, "gradient step")
        print(f"  {label:35s} {seconds / per * 1e6:8.1f} µs per {unit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--warm-steps", type=int, default=3000, help="untimed steps first (learning starts at 1000)")
    parser.add_argument("--next-action", default="sampled", choices=["sampled", "expected", "stored"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    th.set_num_threads(args.threads)
    for algorithm in ("deep_sarsa", "dqn"):
        profile(algorithm, args.next_action, args.warm_steps, args.steps)


if __name__ == "__main__":
    main()
