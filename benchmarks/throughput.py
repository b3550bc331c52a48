"""
Env-steps per second of DeepSARSA (each ``next_action`` variant) and SB3's DQN at identical
hyperparameters, run alternately in one process, several repetitions.

Settings:
  * ``zoo``: rl-zoo's CartPole-v1 DQN entry (train_freq 256, gradient_steps 128, batch 64, [256, 256])
  * ``step``: the same with train_freq 4, gradient_steps 1

    python benchmarks/throughput.py                        # 5 repetitions, 20k steps each
    python benchmarks/throughput.py --repetitions 2 --steps 5000 --threads 1

Each run is timed twice: wall-clock (what a user waits) and the process's CPU time (what it
costs; with one torch thread it is the wall-clock time of a machine with nothing else to do,
so it stays meaningful on a shared machine).
"""

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch as th
from stable_baselines3 import DQN

from deep_sarsa import DeepSARSA
from deep_sarsa.presets import rl_zoo_dqn

ZOO = rl_zoo_dqn("CartPole-v1")
SETTINGS: dict[str, dict[str, Any]] = {"zoo": ZOO, "step": dict(ZOO, train_freq=4, gradient_steps=1)}
ALGORITHMS = ["dqn", "sarsa-sampled", "sarsa-expected", "sarsa-stored"]


def steps_per_second(algorithm: str, setting: str, steps: int, seed: int) -> tuple[float, float]:
    """Env-steps per second of wall-clock time and of process CPU time, for one ``learn(steps)``."""
    kwargs = dict(SETTINGS[setting], seed=seed, device="cpu")
    if algorithm == "dqn":
        model: DQN | DeepSARSA = DQN("MlpPolicy", "CartPole-v1", **kwargs)
    else:
        model = DeepSARSA("MlpPolicy", "CartPole-v1", next_action=algorithm.split("-")[1], **kwargs)  # type: ignore[arg-type]
    start, start_cpu = time.perf_counter(), time.process_time()
    model.learn(steps)
    return model.num_timesteps / (time.perf_counter() - start), model.num_timesteps / (time.process_time() - start_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--output", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args()
    if args.threads is not None:
        th.set_num_threads(args.threads)

    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for repetition in range(args.repetitions):
        for setting in args.settings:
            for algorithm in ALGORITHMS:  # alternate, so that drifts in machine speed hit every row alike
                wall, cpu = steps_per_second(algorithm, setting, args.steps, seed=repetition)
                results.setdefault((setting, algorithm), []).append((wall, cpu))
                print(f"rep {repetition} {setting:>5} {algorithm:>15}: {wall:6.0f} steps/s wall, {cpu:6.0f} CPU", flush=True)

    lines = [
        f"{args.steps} steps per run, {args.repetitions} repetitions, torch threads: {th.get_num_threads()}; "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {th.__version__}, device cpu.",
        "",
        "| setting | algorithm | steps/s wall (median) | min–max | ratio to DQN, wall | steps/s CPU time (median) "
        "| ratio to DQN, CPU time |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for setting in args.settings:
        dqn = results[(setting, "dqn")]
        for algorithm in ALGORITHMS:
            rates = results[(setting, algorithm)]
            # median of the per-repetition ratios (each against the DQN run next to it)
            wall_ratio = statistics.median(rate[0] / base[0] for rate, base in zip(rates, dqn, strict=True))
            cpu_ratio = statistics.median(rate[1] / base[1] for rate, base in zip(rates, dqn, strict=True))
            walls = [rate[0] for rate in rates]
            lines.append(
                f"| {setting} | {algorithm} | {statistics.median(walls):.0f} | {min(walls):.0f}–{max(walls):.0f} "
                f"| {wall_ratio:.2f} | {statistics.median(rate[1] for rate in rates):.0f} | {cpu_ratio:.2f} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


if __name__ == "__main__":
    main()
