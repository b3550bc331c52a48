"""
Env-steps per second of DeepSARSA (each ``next_action`` variant) and SB3's DQN at identical hyperparameters, run
alternately in one process, several repetitions; each run timed in wall-clock (what a user waits) and process CPU time
(what it costs: with one torch thread, the wall-clock of an idle machine, so it stays meaningful on a shared one).
Settings: ``zoo``, rl-zoo's CartPole-v1 DQN entry (train_freq 256, gradient_steps 128, batch 64, [256, 256]); ``step``,
the same with train_freq 4, gradient_steps 1. tests/test_fast.py checks that no speed-up changes a bit of training.

    python benchmarks/throughput.py                        # 5 repetitions, 20k steps each
    python benchmarks/throughput.py --repetitions 2 --steps 5000 --threads 1
"""

import argparse
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch as th
from stable_baselines3 import DQN

from deep_sarsa import DeepSARSA
from deep_sarsa.presets import rl_zoo_dqn

ZOO = rl_zoo_dqn("CartPole-v1")
SETTINGS: dict[str, dict[str, Any]] = {"zoo": ZOO, "step": dict(ZOO, train_freq=4, gradient_steps=1)}
ALGORITHMS = ["dqn", "sarsa-sampled", "sarsa-expected", "sarsa-stored"]
Rates = dict[tuple[str, str], list[tuple[float, float]]]


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_output(output: Path | None, text: str) -> None:
    """Print ``text``; write it to ``output`` too, where given."""
    print(text)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)


def make_model(algorithm: str, setting: str, seed: int, **keywords: Any) -> DQN | DeepSARSA:
    """DQN (``"dqn"``) or DeepSARSA (``"sarsa-VARIANT"``, with ``keywords``) on CartPole-v1 in ``setting``."""
    kwargs = dict(SETTINGS[setting], seed=seed, device="cpu")
    if algorithm == "dqn":
        return DQN("MlpPolicy", "CartPole-v1", **kwargs)
    return DeepSARSA("MlpPolicy", "CartPole-v1", next_action=algorithm.split("-")[1], **kwargs, **keywords)  # type: ignore[arg-type]


def steps_per_second(algorithm: str, setting: str, seed: int, steps: int, **keywords: Any) -> tuple[float, float]:
    """Env-steps per second of wall-clock time and of process CPU time, for one ``learn(steps)``."""
    model = make_model(algorithm, setting, seed, **keywords)
    start, start_cpu = time.perf_counter(), time.process_time()
    model.learn(steps)
    return model.num_timesteps / (time.perf_counter() - start), model.num_timesteps / (time.process_time() - start_cpu)


def alternate(
    args: argparse.Namespace, names: Sequence[str], run: Callable[[str, str, int], tuple[float, float]], shown: str
) -> Rates:
    """
    ``run(name, setting, seed)`` for every repetition, setting and name, alternating so that drifts in the machine's
    speed hit every row alike; each result printed with ``shown`` (a format of its two numbers).
    """
    results: Rates = {}
    for repetition in range(args.repetitions):
        for setting in args.settings:
            for name in names:
                results.setdefault((setting, name), []).append(result := run(name, setting, repetition))
                print(f"rep {repetition} {setting:>5} {name:>16}: {shown.format(*result)}", flush=True)
    return results


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
    run = functools.partial(steps_per_second, steps=args.steps)
    results = alternate(args, ALGORITHMS, run, "{:6.0f} steps/s wall, {:6.0f} CPU")
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
    write_output(args.output, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
