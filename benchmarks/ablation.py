"""
What each piece of the speed layer (``deep_sarsa.fast``) gains in the settings of ``benchmarks/throughput.py``
(docs/speed.md). ``--mode runs``: steps/s of whole runs with every piece on, against runs with one piece on PyTorch's
plain path (``fast.PLAIN``), alternating; the gain is the median ratio - 1, in process CPU time and wall-clock.
``--mode paired``: one run per piece, switched on and off at alternate calls of the phase it speeds up; the time it
saves is a share of the run's time (both halves see the same machine: its drift cancels). Where the time goes:
``python -m cProfile -s tottime benchmarks/throughput.py --settings step --repetitions 1``.

    python benchmarks/ablation.py --mode runs --repetitions 3 --steps 10000 --threads 1
    python benchmarks/ablation.py --mode paired --steps 10000 --threads 1 --output benchmarks/results/ablation.md
"""

import argparse
import contextlib
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import throughput
import torch as th
from throughput import SETTINGS, alternate, cpu_model, write_output

from deep_sarsa import fast

VARIANTS = ["default", *fast.PIECES, "flush_denormal", "all plain"]
#: The pieces switched at every call, and the phases (DeepSARSA methods) whose calls they speed up
PAIRED: dict[str, tuple[str, ...]] = {
    "direct_forward": ("train", "_sample_action"),
    **dict.fromkeys(["optimizer_step", "zero_grad", "clip_grad_norm", "target_batching", "batched_sampling"], ("train",)),
}


@contextlib.contextmanager
def plain(pieces: set[str]) -> Iterator[None]:
    """``fast.PLAIN`` set to ``pieces`` inside the block."""
    saved, fast.PLAIN = fast.PLAIN, pieces
    try:
        yield
    finally:
        fast.PLAIN = saved


def steps_per_second(variant: str, setting: str, seed: int, steps: int, next_action: str = "sampled") -> tuple[float, float]:
    """Env-steps per second (wall-clock, process CPU time) of ``learn(steps)`` with ``variant`` on the plain path."""
    with plain(set(fast.PIECES) if variant == "all plain" else {variant} & set(fast.PIECES)):
        flush = variant not in ("flush_denormal", "all plain")
        return throughput.steps_per_second(f"sarsa-{next_action}", setting, seed, steps, flush_denormal=flush)


def alternating(function: Callable[..., Any], piece: str, times: dict[bool, list[float]]) -> Callable[..., Any]:
    """``function`` with ``piece`` on the plain path at every other call, each duration added to ``times[plain]``."""
    calls = [0]

    def timed(*args: Any, **kwargs: Any) -> Any:
        is_plain = calls[0] % 2 == 1
        calls[0] += 1
        with plain({piece} if is_plain else set()):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                times[is_plain].append(time.perf_counter() - start)

    return timed


def paired_saving(piece: str, setting: str, seed: int, steps: int, next_action: str = "sampled") -> tuple[float, float]:
    """
    The fraction of a run's time that ``piece`` saves, with the piece on and off at alternate calls.

    :return: the saving as a fraction of the run's time with the piece on, and the run's env-steps/s
    """
    model = throughput.make_model(f"sarsa-{next_action}", setting, seed)
    model.learn(int(SETTINGS[setting]["learning_starts"]) + 500)  # warm: past learning_starts, a few updates done
    phases: dict[str, dict[bool, list[float]]] = {phase: {False: [], True: []} for phase in PAIRED[piece]}
    for phase, times in phases.items():
        setattr(model, phase, alternating(getattr(model, phase), piece, times))
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    elapsed = time.perf_counter() - start
    if any(not times[True] or not times[False] for times in phases.values()):
        raise ValueError(f"--steps {steps}: too few for two calls of each phase of {piece} in the {setting!r} setting")
    saved = sum(
        (statistics.median(times[True]) - statistics.median(times[False])) * (len(times[True]) + len(times[False]))
        for times in phases.values()
    )
    with_piece = elapsed - saved / 2  # half the calls ran without the piece
    return saved / with_piece, steps / with_piece


def describe(args: argparse.Namespace, mode: str) -> str:
    """The line above a table: what ran, on which machine."""
    return (
        f"DeepSARSA (`{args.next_action}`), {mode}, {args.steps} steps per run, {args.repetitions} repetitions, "
        f"torch threads: {th.get_num_threads()}; {cpu_model()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {th.__version__}, device cpu."
    )


def main_paired(args: argparse.Namespace) -> str:
    """Run the paired measurement of every call-switched piece; return the markdown table."""
    run = functools.partial(paired_saving, steps=args.steps, next_action=args.next_action)
    results = alternate(args, args.pieces, run, "saves {:+.1%} ({:.0f} steps/s)")
    lines = [
        describe(args, "paired calls"),
        "",
        "| setting | piece | time saved, share of the run (median) | min–max over repetitions |",
        "|---|---|---:|---:|",
    ]
    for setting in args.settings:
        for piece in args.pieces:
            savings = [saving for saving, _ in results[(setting, piece)]]
            spread = f"{min(savings):+.1%} – {max(savings):+.1%}"
            lines.append(f"| {setting} | `{piece}` | {statistics.median(savings):+.1%} | {spread} |")
    return "\n".join(lines) + "\n"


def main_runs(args: argparse.Namespace) -> str:
    """Run the whole-run measurement of every piece; return the markdown table."""
    run = functools.partial(steps_per_second, steps=args.steps, next_action=args.next_action)
    results = alternate(args, VARIANTS, run, "{:6.0f} steps/s wall, {:6.0f} CPU")
    lines = [
        describe(args, "whole runs"),
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
            cpu_rate = statistics.median(rate[1] for rate in rates)
            lines.append(f"| {setting} | {name} | {cpu_rate:.0f} | {gains[0]} | {gains[1]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["runs", "paired"], default="runs")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--pieces", nargs="+", default=list(PAIRED), choices=list(PAIRED), help="--mode paired: these only")
    parser.add_argument("--next-action", default="sampled", choices=["sampled", "expected", "stored"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--output", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args()
    if args.threads is not None:
        th.set_num_threads(args.threads)
    write_output(args.output, main_runs(args) if args.mode == "runs" else main_paired(args))


if __name__ == "__main__":
    main()
