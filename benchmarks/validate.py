"""
Validate the presets on fresh seeds: each task's preset (``deep_sarsa/hyperparams/deep_sarsa.yml``) beside
SB3's DQN with rl-zoo's entry for the task, in the harness (``harness.py``: the same env, budget, evaluation and
machine for both), on validation seeds ``0 .. N-1`` (the tuning seeds of ``tune.py`` are ``1000 ..``).

Per task and algorithm it reports, over the seeds: the final return (the last evaluation) as median and
interquartile range, each seed's mean over the last 20% of its evaluations (``tune.py``'s score), how many
seeds reach the env's ``reward_threshold`` (and, on CartPole, the maximum 500 at the end), and the training
wall-clock time to solve: the seconds of training (evaluations left out) before the first evaluation at or
above the threshold after which every evaluation stays there (a seed that is not there at the end counts as
never). Then it checks the preset against DQN: median final return at least DQN's, IQR at most DQN's, median
time to solve at most half DQN's (and on CartPole: at least 9 of the seeds at 500 at the end and at least 475
over the last 20%). A per-variant preset (``preset(task, next_action=VARIANT)``, ``--variants``) gets the same
table row and numbers against DQN; the goals are the task preset's.

    python benchmarks/validate.py run --tasks CartPole-v1 --seeds 10 --workers 2   # jobs in benchmarks/validation/
    python benchmarks/validate.py run --tasks CartPole-v1 --variants expected     # and a per-variant preset
    python benchmarks/validate.py report                                          # results/validation.md + .png
"""

import argparse
import json
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
#: the tasks that have a preset and a DQN entry in the harness
TASKS = ["CartPole-v1", "Acrobot-v1", "MountainCar-v0", "LunarLander-v3", "Taxi-v4", "CliffWalking-v1"]
#: CartPole's extra bar: this many of 10 seeds at the maximum return at the end
CARTPOLE_MAX, CARTPOLE_LAST = 500.0, 475.0


#: Where gymnasium's ``reward_threshold`` cannot serve as "solved" for a 20-episode evaluation: (threshold, why).
THRESHOLDS: dict[str, tuple[float, str]] = {
    # gymnasium says 8, above the optimal policy's mean of 7.93 (exact over the 300 start states,
    # examples/taxi_linear.py): a 20-episode mean of the optimal policy (per-episode std 2.59, standard error
    # 0.58) would pass 8 about half the time. 6.5 is 2.5 standard errors below the optimum: the optimal policy's
    # evaluation stays at or above it with a probability of about 0.99.
    "Taxi-v4": (6.5, "gymnasium's 8 is above the optimum's mean 7.93; 6.5 = 7.93 - 2.5 standard errors of 20 episodes"),
    # gymnasium has none. Every greedy path to the goal without a fall returns -13 (the cliff's edge), -15 or
    # -17 (one or two rows further up); a fall costs -100, a path that never arrives -200 (the 200-step limit).
    "CliffWalking-v1": (-17.0, "gymnasium has none; -17 = at the goal by a shortest path along any row, no fall"),
}


def threshold_of(task: str) -> float | None:
    """The return that counts as solved: ``THRESHOLDS`` where listed, else the env's ``reward_threshold``."""
    if task in THRESHOLDS:
        return THRESHOLDS[task][0]
    value = gym.spec(task).reward_threshold
    return None if value is None else float(value)


def time_to_solve(result: dict[str, Any], threshold: float | None) -> float:
    """
    Training seconds before the first evaluation at or above ``threshold`` after which every evaluation stays
    there (``inf``: never, or not to the end of the budget).
    """
    if threshold is None:
        return math.inf
    solved_since = math.inf
    for (_, mean, _), seconds in zip(result["curve"], result["curve_seconds"], strict=True):
        if mean < threshold:
            solved_since = math.inf
        elif math.isinf(solved_since):
            solved_since = float(seconds)
    return solved_since


def summary(results: list[dict[str, Any]], task: str) -> dict[str, Any]:
    """The numbers of one (task, algorithm) over its seeds."""
    threshold = threshold_of(task)
    finals = [float(r["curve"][-1][1]) for r in results]
    lasts = [last_fraction_mean(r["curve"]) for r in results]
    times = [time_to_solve(r, threshold) for r in results]
    q1, median, q3 = (float(v) for v in np.percentile(finals, [25, 50, 75]))
    return {
        "seeds": len(results),
        "final_median": median,
        "final_iqr": (q1, q3),
        "last_scores": lasts,
        "solved_last": sum(score >= threshold for score in lasts) if threshold is not None else None,
        "at_max_end": sum(final >= CARTPOLE_MAX for final in finals) if task == "CartPole-v1" else None,
        "time_median": float(np.median(times)),
        "train_seconds": float(np.median([r["train_seconds"] for r in results])),
    }


def checks(task: str, ours: dict[str, Any], dqn: dict[str, Any]) -> list[tuple[str, bool]]:
    """The preset's bars against DQN's numbers on ``task``: (what, met)."""
    width, dqn_width = ours["final_iqr"][1] - ours["final_iqr"][0], dqn["final_iqr"][1] - dqn["final_iqr"][0]
    bars = [
        (
            f"median final {ours['final_median']:.1f} >= DQN's {dqn['final_median']:.1f}",
            ours["final_median"] >= dqn["final_median"],
        ),
        (f"IQR width {width:.1f} <= DQN's {dqn_width:.1f}", width <= dqn_width),
    ]
    if threshold_of(task) is not None:
        bars.append(
            (
                f"median time to solve {seconds(ours['time_median'])} <= half DQN's {seconds(dqn['time_median'])}",
                ours["time_median"] <= dqn["time_median"] / 2 and math.isfinite(ours["time_median"]),
            )
        )
    if task == "CartPole-v1":
        n = ours["seeds"]
        need = math.ceil(0.9 * n)
        bars.append((f"{ours['at_max_end']}/{n} seeds at 500 at the end (>= {need})", ours["at_max_end"] >= need))
        last_ok = sum(score >= CARTPOLE_LAST for score in ours["last_scores"])
        bars.append((f"{last_ok}/{n} seeds >= 475 over the last 20% (>= {need})", last_ok >= need))
    return bars


def seconds(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.0f} s"


def load(runs: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The results in ``runs``, by (task, algorithm), seeds in order."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in sorted(runs.glob("*/*/seed*.json")):
        result = json.loads(path.read_text())
        grouped.setdefault((result["task"], result["algorithm"]), []).append(result)
    for results in grouped.values():
        results.sort(key=lambda r: int(r["seed"]))
    return grouped


def commits_of(grouped: dict[tuple[str, str], list[dict[str, Any]]], tasks: Sequence[str]) -> str:
    """The commits the results were trained at: one, or per task where they differ."""
    by_task = {task: sorted({str(r["commit"]) for a in ALGORITHMS for r in grouped[task, a]}) for task in tasks}
    if len({tuple(commits) for commits in by_task.values()}) == 1:
        return ", ".join(next(iter(by_task.values())))
    return "; ".join(f"{', '.join(commits)} ({task})" for task, commits in by_task.items())


def report(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = load(args.runs)
    tasks = [task for task in TASKS if all((task, a) in grouped for a in ALGORITHMS)]
    if not tasks:
        raise ValueError(f"--runs {args.runs}: no task has results of both {ALGORITHMS}; run `validate.py run` first")
    rows = [
        "| task | algorithm | seeds | final: median [IQR] | last 20%: min / median | solved (last 20% >= threshold) "
        "| at 500 at the end (CartPole) | median time to solve | train s (median) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    figure, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.2 * len(tasks)), squeeze=False)
    variant_lines = []
    for row, task in enumerate(tasks):
        algorithms = ALGORITHMS + [a for a in VARIANT_ALGORITHMS if (task, a) in grouped]
        numbers = {a: summary(grouped[task, a], task) for a in algorithms}
        threshold = threshold_of(task)
        for algorithm in algorithms:
            n = numbers[algorithm]
            solved = "n/a" if n["solved_last"] is None else f"{n['solved_last']}/{n['seeds']} (>= {threshold:g})"
            at_max = "n/a" if n["at_max_end"] is None else f"{n['at_max_end']}/{n['seeds']}"
            rows.append(
                f"| {task} | {algorithm} | {n['seeds']} | {n['final_median']:.1f} [{n['final_iqr'][0]:.1f}, "
                f"{n['final_iqr'][1]:.1f}] | {min(n['last_scores']):.1f} / {np.median(n['last_scores']):.1f} | {solved} "
                f"| {at_max} "
                f"| {seconds(n['time_median'])} | {n['train_seconds']:.0f} |"
            )
        bars = checks(task, numbers["sarsa-preset"], numbers["dqn"])
        seeds = min(numbers[a]["seeds"] for a in ALGORITHMS)
        partial = f" (only {seeds} seeds so far: the goals are set on 10)" if seeds < 10 else ""
        verdicts.append(f"- **{task}**{partial}: " + "; ".join(f"{what}: {'yes' if met else 'NO'}" for what, met in bars))
        for algorithm in algorithms[len(ALGORITHMS) :]:
            bars = checks(task, numbers[algorithm], numbers["dqn"])
            variant_lines.append(
                f"- **{task}**, `{algorithm}`: " + "; ".join(f"{what}: {'yes' if met else 'no'}" for what, met in bars)
            )
        for algorithm in algorithms:
            results = grouped[task, algorithm]
            steps = [point[0] for point in results[0]["curve"]]
            curves = np.array([[point[1] for point in r["curve"]] for r in results])
            times = np.median(np.array([r["curve_seconds"] for r in results]), axis=0)
            q1, median, q3 = np.percentile(curves, [25, 50, 75], axis=0)
            for column, x in enumerate((steps, times)):
                axis = axes[row][column]
                (line,) = axis.plot(x, median, label=f"{algorithm} (median, {len(results)} seeds)")
                axis.fill_between(x, q1, q3, alpha=0.2, color=line.get_color())
                for curve in curves:
                    axis.plot(x, curve, color=line.get_color(), alpha=0.15, linewidth=0.7)
        for column, label in enumerate(("env steps", "training wall-clock (s, median over seeds)")):
            axis = axes[row][column]
            if threshold is not None:
                axis.axhline(threshold, color="grey", linestyle=":", linewidth=1)
            axis.set_title(task, fontsize=9)
            axis.set_xlabel(label, fontsize=8)
            axis.set_ylabel("mean return (IQR band, seeds thin)", fontsize=8)
            axis.legend(fontsize=7)
    figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output.with_suffix(".png"), dpi=90)
    first = grouped[tasks[0], ALGORITHMS[0]][0]
    text = "\n".join(
        [
            "# Presets on fresh seeds, beside DQN",
            "",
            "Each task's DeepSARSA preset (`deep_sarsa/hyperparams/deep_sarsa.yml`) and SB3's DQN with rl-zoo's "
            "entry, in the benchmark harness (same env, budget, evaluation: the deterministic policy every "
            "`eval_freq` steps, 20 episodes on a separate env), validation seeds 0.. (never the tuning seeds). "
            "Time to solve: training seconds (evaluations left out) before the first evaluation at or above the "
            "task's threshold (the env's `reward_threshold`, or the one given below) after which every evaluation "
            "stays there; never = not so at the end of the budget.",
            *(f"{task}'s threshold: {THRESHOLDS[task][0]:g} ({THRESHOLDS[task][1]})." for task in tasks if task in THRESHOLDS),
            "",
            *rows,
            "",
            "The preset against DQN:",
            "",
            *verdicts,
            "",
            *(
                [
                    "The per-variant presets (`deep_sarsa/hyperparams/deep_sarsa_VARIANT.yml`, `preset(task, "
                    "next_action=VARIANT)`) against DQN, the same bars (they are not the goals: those are the task "
                    "preset's):",
                    "",
                    *variant_lines,
                    "",
                ]
                if variant_lines
                else []
            ),
            f"![curves]({args.output.with_suffix('.png').name})",
            "",
            f"Machine: {first.get('cpu', 'CPU model not recorded')}, {first['machine']} (two jobs at a time, one per "
            f"core), commit {commits_of(grouped, tasks)}; each "
            "result file (`benchmarks/validation/TASK/ALGORITHM/seedN.json`) keeps the hyperparameters it trained with.",
            "",
            f"Reproduce: `python benchmarks/validate.py run --tasks {' '.join(tasks)} --seeds "
            f"{max(len(grouped[t, a]) for t in tasks for a in ALGORITHMS)} --workers 2`, then "
            "`python benchmarks/validate.py report`."
            + "".join(
                f" {algorithm}: `python benchmarks/validate.py run --tasks {task} --variants "
                f"{algorithm.removeprefix('sarsa-preset-')} --seeds {len(grouped[task, algorithm])} --workers 2`."
                for task in tasks
                for algorithm in VARIANT_ALGORITHMS
                if (task, algorithm) in grouped
            ),
        ]
    )
    args.output.write_text(text + "\n")
    print(text)
    return 0


def run(args: argparse.Namespace) -> int:
    """The validation grid: the harness's ``grid`` with DQN, the preset and ``--variants``' presets, results in ``--runs``."""
    for variant in args.variants:
        for task in args.tasks:
            preset(task, next_action=variant)  # a task without that variant's preset: the error names it, before any job
    return harness.main(
        [
            "grid",
            "--tasks",
            *args.tasks,
            "--algorithms",
            *ALGORITHMS,
            *(f"sarsa-preset-{variant}" for variant in args.variants),
            "--seeds",
            str(args.seeds),
            "--workers",
            str(args.workers),
            "--runs",
            str(args.runs),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="train DQN and the preset on the validation seeds")
    run_parser.add_argument("--tasks", nargs="+", default=TASKS[:4], choices=TASKS)
    run_parser.add_argument("--seeds", type=harness._positive(int), default=10)
    run_parser.add_argument("--workers", type=harness._positive(int), default=2)
    run_parser.add_argument(
        "--variants",
        nargs="+",
        default=[],
        choices=NEXT_ACTIONS,
        help="also the per-variant presets of these next_action variants (preset(task, next_action=VARIANT))",
    )
    report_parser = commands.add_parser("report", help="the table, the checks against DQN and the curves")
    report_parser.add_argument("--output", type=Path, default=OUTPUT)
    for command in (run_parser, report_parser):
        command.add_argument("--runs", type=Path, default=RUNS)
    args = parser.parse_args(argv)
    try:
        return run(args) if args.command == "run" else report(args)
    except ValueError as error:
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
