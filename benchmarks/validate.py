"""
Validate the presets on fresh seeds (``0 .. N-1``; tuning uses ``1000 ..``): each task's preset (``--variants``: the
per-variant presets) beside SB3's DQN in the harness's grid, and a report that checks the preset against DQN (median
final return, IQR, time to solve; CartPole: 9 of 10 seeds at 500). Details: docs/benchmarks.md.

    python benchmarks/validate.py run --tasks CartPole-v1 --seeds 10               # jobs in benchmarks/validation/
    python benchmarks/validate.py run --tasks CartPole-v1 --variants expected     # and a per-variant preset
    python benchmarks/validate.py report                                          # results/validation.md + .png
"""

import argparse
import itertools
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import harness
from tune import last_fraction_mean

from deep_sarsa.presets import NEXT_ACTIONS, preset

RUNS = Path(__file__).parent / "validation"
OUTPUT = Path(__file__).parent / "results" / "validation.md"
ALGORITHMS = ["dqn", "sarsa-preset"]
#: the per-variant presets (``run --variants``), reported where their results exist
VARIANT_ALGORITHMS = [f"sarsa-preset-{variant}" for variant in NEXT_ACTIONS]
TASKS = ["CartPole-v1", "Acrobot-v1", "MountainCar-v0", "LunarLander-v3", "Taxi-v4", "CliffWalking-v1"]
#: CartPole's extra bars: 9 of 10 seeds at the maximum return at the end, and at 475 or more over the last 20%
CARTPOLE_MAX, CARTPOLE_LAST = 500.0, 475.0
#: Where gymnasium's ``reward_threshold`` cannot serve as "solved" for a 20-episode evaluation: (threshold, why).
#: Taxi: the optimal policy's 20-episode mean (7.93, standard error 0.58) passes 6.5 about 99% of the time.
THRESHOLDS: dict[str, tuple[float, str]] = {
    "Taxi-v4": (6.5, "gymnasium's 8 is above the optimum's mean 7.93; 6.5 = 7.93 - 2.5 standard errors of 20 episodes"),
    "CliffWalking-v1": (-17.0, "gymnasium has none; -17 = at the goal by a shortest path along any row, no fall"),
}


def threshold_of(task: str) -> float | None:
    """The return that counts as solved: ``THRESHOLDS`` where listed, else the env's ``reward_threshold``."""
    if task in THRESHOLDS:
        return THRESHOLDS[task][0]
    value = gym.spec(task).reward_threshold
    return None if value is None else float(value)


def time_to_solve(result: dict[str, Any], threshold: float | None) -> float:
    """Training seconds to the evaluation from which every one is at or above ``threshold`` (``inf``: not at the end)."""
    solved_since = math.inf
    for (_, mean, _), seconds in zip(result["curve"], result["curve_seconds"], strict=True):
        if threshold is None or mean < threshold:
            solved_since = math.inf
        elif math.isinf(solved_since):
            solved_since = float(seconds)
    return solved_since


def summary(results: list[dict[str, Any]], task: str) -> dict[str, Any]:
    """The numbers of one (task, algorithm) over its seeds."""
    threshold = threshold_of(task)
    finals = [float(r["curve"][-1][1]) for r in results]
    lasts = [last_fraction_mean(r["curve"]) for r in results]
    q1, median, q3 = (float(v) for v in np.percentile(finals, [25, 50, 75]))
    return {
        "seeds": len(results),
        "final_median": median,
        "final_iqr": (q1, q3),
        "last_scores": lasts,
        "solved_last": sum(score >= threshold for score in lasts) if threshold is not None else None,
        "at_max_end": sum(final >= CARTPOLE_MAX for final in finals) if task == "CartPole-v1" else None,
        "time_median": float(np.median([time_to_solve(r, threshold) for r in results])),
        "train_seconds": float(np.median([r["train_seconds"] for r in results])),
    }


def seconds(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.0f} s"


def checks(task: str, ours: dict[str, Any], dqn: dict[str, Any]) -> list[tuple[str, bool]]:
    """The preset's bars against DQN's numbers on ``task``: (what, met)."""
    width, dqn_width = ours["final_iqr"][1] - ours["final_iqr"][0], dqn["final_iqr"][1] - dqn["final_iqr"][0]
    median = f"median final {ours['final_median']:.1f} >= DQN's {dqn['final_median']:.1f}"
    bars = [(median, ours["final_median"] >= dqn["final_median"])]
    bars.append((f"IQR width {width:.1f} <= DQN's {dqn_width:.1f}", width <= dqn_width))
    if threshold_of(task) is not None:
        what = f"median time to solve {seconds(ours['time_median'])} <= half DQN's {seconds(dqn['time_median'])}"
        bars.append((what, ours["time_median"] <= dqn["time_median"] / 2 and math.isfinite(ours["time_median"])))
    if task == "CartPole-v1":
        n, need = ours["seeds"], math.ceil(0.9 * ours["seeds"])
        bars.append((f"{ours['at_max_end']}/{n} seeds at 500 at the end (>= {need})", ours["at_max_end"] >= need))
        last_ok = sum(score >= CARTPOLE_LAST for score in ours["last_scores"])
        bars.append((f"{last_ok}/{n} seeds >= 475 over the last 20% (>= {need})", last_ok >= need))
    return bars


def commits_of(grouped: dict[tuple[str, str], list[dict[str, Any]]], tasks: Sequence[str]) -> str:
    """The commits the results were trained at: one, or per task where they differ."""
    by_task = {task: sorted({str(r["commit"]) for a in ALGORITHMS for r in grouped[task, a]}) for task in tasks}
    if len({tuple(commits) for commits in by_task.values()}) == 1:
        return ", ".join(next(iter(by_task.values())))
    return "; ".join(f"{', '.join(commits)} ({task})" for task, commits in by_task.items())


def verdict(bars: list[tuple[str, bool]], no: str) -> str:
    """The bars as ``what: yes`` or ``what: NO`` (``no``), joined."""
    return "; ".join(f"{what}: {'yes' if met else no}" for what, met in bars)


def row(task: str, algorithm: str, n: dict[str, Any]) -> str:
    """One (task, algorithm)'s line of the table, from its :func:`summary`."""
    solved = "n/a" if n["solved_last"] is None else f"{n['solved_last']}/{n['seeds']} (>= {threshold_of(task):g})"
    at_max = "n/a" if n["at_max_end"] is None else f"{n['at_max_end']}/{n['seeds']}"
    final = f"{n['final_median']:.1f} [{n['final_iqr'][0]:.1f}, {n['final_iqr'][1]:.1f}]"
    lasts = f"{min(n['last_scores']):.1f} / {np.median(n['last_scores']):.1f}"
    times = f"{seconds(n['time_median'])} | {n['train_seconds']:.0f}"
    return f"| {task} | {algorithm} | {n['seeds']} | {final} | {lasts} | {solved} | {at_max} | {times} |"


def report(args: argparse.Namespace) -> None:
    """The table, the checks against DQN and the curves: ``--output`` and its .png."""
    grouped = harness.load(args.runs)
    tasks = [task for task in TASKS if all((task, a) in grouped for a in ALGORITHMS)]
    if not tasks:
        raise ValueError(f"--runs {args.runs}: no task has results of both {ALGORITHMS}; run `validate.py run` first")
    rows = [
        "| task | algorithm | seeds | final: median [IQR] | last 20%: min / median | solved (last 20% >= threshold) "
        "| at 500 at the end (CartPole) | median time to solve | train s (median) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts, variant_lines, reproduce_variants = [], [], ""
    plot, axes = harness.figure(len(tasks), 2, 10)
    for axis_row, task in zip(axes, tasks, strict=True):
        algorithms = ALGORITHMS + [a for a in VARIANT_ALGORITHMS if (task, a) in grouped]
        numbers = {a: summary(grouped[task, a], task) for a in algorithms}
        rows += [row(task, algorithm, numbers[algorithm]) for algorithm in algorithms]
        seeds = min(numbers[a]["seeds"] for a in ALGORITHMS)
        partial = f" (only {seeds} seeds so far: the goals are set on 10)" if seeds < 10 else ""
        verdicts.append(f"- **{task}**{partial}: " + verdict(checks(task, numbers["sarsa-preset"], numbers["dqn"]), "NO"))
        for algorithm in algorithms[len(ALGORITHMS) :]:
            bars = checks(task, numbers[algorithm], numbers["dqn"])
            variant_lines.append(f"- **{task}**, `{algorithm}`: " + verdict(bars, "no"))
            reproduce_variants += f" {algorithm}: `python benchmarks/validate.py run --tasks {task} --variants "
            reproduce_variants += (
                f"{algorithm.removeprefix('sarsa-preset-')} --seeds {len(grouped[task, algorithm])} --workers 2`."
            )
        for algorithm in algorithms:
            results = grouped[task, algorithm]
            curves = np.array([[point[1] for point in r["curve"]] for r in results])
            times = np.median(np.array([r["curve_seconds"] for r in results]), axis=0)
            for axis, x in zip(axis_row, ([point[0] for point in results[0]["curve"]], times), strict=True):
                harness.plot_band(axis, x, curves, f"{algorithm} (median, {len(results)} seeds)", thin=True)
        for axis, xlabel in zip(axis_row, ("env steps", "training wall-clock (s, median over seeds)"), strict=True):
            if threshold_of(task) is not None:
                axis.axhline(threshold_of(task), color="grey", linestyle=":", linewidth=1)
            harness.label(axis, task, xlabel, "mean return (IQR band, seeds thin)")
    variants_text = [
        "The per-variant presets (`deep_sarsa/hyperparams/deep_sarsa_VARIANT.yml`, `preset(task, next_action=VARIANT)`) "
        "against DQN, the same bars (they are not the goals: those are the task preset's):",
        "",
        *variant_lines,
        "",
    ]
    first = grouped[tasks[0], ALGORITHMS[0]][0]
    text = [
        "# Presets on fresh seeds, beside DQN",
        "",
        "Each task's DeepSARSA preset (`deep_sarsa/hyperparams/deep_sarsa.yml`) and SB3's DQN with rl-zoo's entry, in the "
        "benchmark harness (same env, budget, evaluation: the deterministic policy every `eval_freq` steps, 20 episodes on "
        "a separate env), validation seeds 0.. (never the tuning seeds). Time to solve: training seconds (evaluations left "
        "out) before the first evaluation at or above the task's threshold (the env's `reward_threshold`, or the one given "
        "below) after which every evaluation stays there; never = not so at the end of the budget.",
        *(f"{task}'s threshold: {THRESHOLDS[task][0]:g} ({THRESHOLDS[task][1]})." for task in tasks if task in THRESHOLDS),
        "",
        *rows,
        "",
        "The preset against DQN:",
        "",
        *verdicts,
        "",
        *(variants_text if variant_lines else []),
        f"![curves]({args.output.with_suffix('.png').name})",
        "",
        f"Machine: {first.get('cpu', 'CPU model not recorded')}, {first['machine']} (two jobs at a time, one per core), "
        f"commit {commits_of(grouped, tasks)}; each result file (`benchmarks/validation/TASK/ALGORITHM/seedN.json`) keeps "
        "the hyperparameters it trained with.",
        "",
        f"Reproduce: `python benchmarks/validate.py run --tasks {' '.join(tasks)} --seeds "
        f"{max(len(grouped[t, a]) for t in tasks for a in ALGORITHMS)} --workers 2`, then "
        f"`python benchmarks/validate.py report`.{reproduce_variants}",
    ]
    harness.write_report(args.output, "\n".join(text) + "\n", plot, dpi=90)


def run(args: argparse.Namespace) -> int:
    """The validation grid: the harness's ``grid`` with DQN, the preset and ``--variants``' presets, results in ``--runs``."""
    for variant, task in itertools.product(args.variants, args.tasks):
        preset(task, next_action=variant)  # a task without that variant's preset: the error names it, before any job
    algorithms = [*ALGORITHMS, *(f"sarsa-preset-{variant}" for variant in args.variants)]
    return harness.grid(argparse.Namespace(**vars(args), algorithms=algorithms, episodes=20, retries=1))


def main(argv: Sequence[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="train DQN and the preset on the validation seeds")
    run_parser.add_argument("--tasks", nargs="+", default=TASKS[:4], choices=TASKS)
    run_parser.add_argument("--seeds", type=harness.positive(int), default=10)
    run_parser.add_argument("--variants", nargs="+", default=[], choices=NEXT_ACTIONS, help="also these per-variant presets")
    harness.add_cluster_options(run_parser)
    report_parser = commands.add_parser("report", help="the table, the checks against DQN and the curves")
    report_parser.add_argument("--output", type=Path, default=OUTPUT)
    for command in (run_parser, report_parser):
        command.add_argument("--runs", type=Path, default=RUNS)
    args = parser.parse_args(argv)
    return harness.run_command(parser, args, lambda: run(args) if args.command == "run" else report(args))


if __name__ == "__main__":
    sys.exit(main())
