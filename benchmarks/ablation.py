"""
What each piece of the speed layer (``deep_sarsa.fast``) gains: env-steps/s of DeepSARSA with every
piece on, against the same run with one piece on PyTorch's plain path (``fast.PLAIN``), in both
settings of ``benchmarks/throughput.py``, alternating, several repetitions. ``flush_denormal`` is
the constructor's flag (off in its row); ``all plain`` runs every piece plainly and the flag off.

    python benchmarks/ablation.py --repetitions 3 --steps 10000 --threads 1 --output benchmarks/results/ablation.md

The gain of a piece is the median over repetitions of (steps/s with it) / (steps/s without it) - 1,
in process CPU time (with one torch thread, the wall-clock time of an otherwise idle machine).
"""

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch as th
from throughput import SETTINGS

from deep_sarsa import DeepSARSA, fast

VARIANTS = ["default", *fast.PIECES, "flush_denormal", "all plain"]


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def steps_per_second(variant: str, setting: str, steps: int, seed: int, next_action: str = "sampled") -> tuple[float, float]:
    """Env-steps per second (wall-clock, process CPU time) of ``learn(steps)`` with ``variant`` on the plain path."""
    plain = set(fast.PIECES) if variant == "all plain" else {variant} & set(fast.PIECES)
    kwargs: dict[str, Any] = dict(SETTINGS[setting], seed=seed, device="cpu")
    kwargs["flush_denormal"] = variant not in ("flush_denormal", "all plain")
    saved = fast.PLAIN
    fast.PLAIN = plain
    try:
        model = DeepSARSA("MlpPolicy", "CartPole-v1", next_action=next_action, **kwargs)  # type: ignore[arg-type]
        start, start_cpu = time.perf_counter(), time.process_time()
        model.learn(steps)
        return model.num_timesteps / (time.perf_counter() - start), model.num_timesteps / (time.process_time() - start_cpu)
    finally:
        fast.PLAIN = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--next-action", default="sampled", choices=["sampled", "expected", "stored"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--output", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args()
    if args.threads is not None:
        th.set_num_threads(args.threads)

    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for repetition in range(args.repetitions):
        for setting in args.settings:
            for variant in VARIANTS:  # alternate, so that drifts in machine speed hit every row alike
                wall, cpu = steps_per_second(variant, setting, args.steps, seed=repetition, next_action=args.next_action)
                results.setdefault((setting, variant), []).append((wall, cpu))
                print(f"rep {repetition} {setting:>5} {variant:>16}: {wall:6.0f} steps/s wall, {cpu:6.0f} CPU", flush=True)

    lines = [
        f"DeepSARSA (`{args.next_action}`), {args.steps} steps per run, {args.repetitions} repetitions, "
        f"torch threads: {th.get_num_threads()}; {cpu_model()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {th.__version__}, device cpu.",
        "",
        "| setting | on the plain path | steps/s CPU time (median) | gain of the piece, CPU time | gain, wall-clock |",
        "|---|---|---:|---:|---:|",
    ]
    for setting in args.settings:
        default = results[(setting, "default")]
        for variant in VARIANTS:
            rates = results[(setting, variant)]
            cpu_gain = statistics.median(base[1] / rate[1] for rate, base in zip(rates, default, strict=True)) - 1
            wall_gain = statistics.median(base[0] / rate[0] for rate, base in zip(rates, default, strict=True)) - 1
            name = "nothing (every piece on)" if variant == "default" else f"`{variant}`"
            gains = ("", "") if variant == "default" else (f"{cpu_gain:+.1%}", f"{wall_gain:+.1%}")
            lines.append(
                f"| {setting} | {name} | {statistics.median(rate[1] for rate in rates):.0f} | {gains[0]} | {gains[1]} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


if __name__ == "__main__":
    main()
