"""
Validate the presets on fresh seeds (``0 .. N-1``; tuning uses ``1000 ..``): each task's preset (``--variants``: the
per-variant presets) beside SB3's DQN in the harness's grid, and a report that checks the preset against DQN (median
final return, IQR, time to solve; CartPole: 9 of 10 seeds at 500); and which ``next_action`` per task, from the results
already kept (nothing is trained): the learning grid's final returns and every finished trial of the task's studies, by
the ``next_action`` it sampled. Details: docs/benchmarks.md.

    python benchmarks/validate.py run --tasks CartPole-v1 --seeds 10               # jobs in benchmarks/validation/
    python benchmarks/validate.py run --tasks CartPole-v1 --variants expected     # and a per-variant preset
    python benchmarks/validate.py report                                          # results/validation.md + .png
    python benchmarks/validate.py variants                                        # results/variants.md
"""

import argparse
import itertools
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import harness
from tune import FINISHED, STUDIES, area_under_curve, last_fraction_mean

from deep_sarsa.presets import NEXT_ACTIONS, Preset, load_presets, preset, variant_presets

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
            count = len(grouped[task, algorithm])
            command = f"run --tasks {task} --variants {algorithm.removeprefix('sarsa-preset-')} --seeds {count}"
            reproduce_variants += f" {algorithm}: `python benchmarks/validate.py {command} --workers 2`."
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


class Best(NamedTuple):
    """A variant's best complete trial: its study, number, worst seed's last 20% and area, mean area (the tie-breaks)."""

    study: str
    number: int
    worst_last: float
    worst_area: float
    mean_area: float


def by_variant(trials: Iterable[tuple[str, Any]]) -> dict[str, tuple[int, int, Best | None]]:
    """(study name, finished trial) pairs by ``next_action``: (finished trials, complete trials, the best or None)."""
    counts: dict[str, list[int]] = {}
    best: dict[str, Best] = {}
    for study, trial in trials:
        variant = str(trial.params.get("next_action", "sampled"))
        counts.setdefault(variant, [0, 0])[0] += 1
        if trial.state.name != "COMPLETE":
            continue
        counts[variant][1] += 1
        if not trial.user_attrs.get("curves"):
            raise ValueError(f"study {study!r}, trial {trial.number}: complete, but no seed's curve (user attribute 'curves')")
        curves, areas = trial.user_attrs["curves"], [area_under_curve(curve) for curve in trial.user_attrs["curves"]]
        candidate = Best(study, trial.number, min(map(last_fraction_mean, curves)), min(areas), float(np.mean(areas)))
        if variant not in best or candidate[2:] > best[variant][2:]:
            best[variant] = candidate
    return {variant: (total, complete, best.get(variant)) for variant, (total, complete) in counts.items()}


def study_trials(task: str, studies: Path = STUDIES) -> list[tuple[str, Any]]:
    """Every finished trial of every study kept for ``task`` (none if its file is missing)."""
    import optuna

    path = studies / f"{task}.db"
    if not path.is_file():
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{path}"
    pairs = []
    for summary in optuna.get_all_study_summaries(url):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        pairs += [(summary.study_name, trial) for trial in study.get_trials(deepcopy=False, states=FINISHED)]
    return pairs


def table(
    task: str, grid: dict[tuple[str, str], list[dict[str, Any]]], presets: dict[str, Preset], studies: Path = STUDIES,
    per_variant: dict[str, dict[str, Preset]] | None = None,
) -> list[str]:  # fmt: skip
    """The markdown lines of one task (``grid``: ``validate.load``'s; ``per_variant``: ``variant_presets`` by variant)."""
    tuned = by_variant(study_trials(task, studies))
    lines = [
        f"## {task}",
        "",
        "| next_action | grid: final, median [IQR] (seeds) | tuning trials (complete) | best trial by the worst seed's "
        "last 20% | its worst seed: last 20% / area |",
        "|---|---:|---:|---|---:|",
    ]
    for variant in [*NEXT_ACTIONS, "dqn"]:
        algorithm = "dqn" if variant == "dqn" else f"sarsa-{variant}"
        finals = [float(result["curve"][-1][1]) for result in grid.get((task, algorithm), [])]
        cell = f"{harness.quartiles(finals)} ({len(finals)})" if finals else "not run"
        if variant == "dqn":
            lines.append(f"| DQN | {cell} | n/a | n/a | n/a |")
            continue
        total, complete, best = tuned.get(variant, (0, 0, None))
        named = f"{best.study} #{best.number}" if best else "none"
        scores = f"{best.worst_last:.1f} / {best.worst_area:.1f}" if best else "n/a"
        lines.append(f'| `"{variant}"` | {cell} | {total} ({complete}) | {named} | {scores} |')
    if task in presets:
        variant = presets[task].hyperparameters.get("next_action", "sampled")
        lines += [
            "",
            f'The preset (`deep_sarsa/hyperparams/deep_sarsa.yml`) uses `"{variant}"` (10 fresh seeds: validation.md).',
        ]
    for variant, entries in (per_variant or {}).items():
        if task in entries:
            lines.append(
                f'A per-variant preset for `"{variant}"`: `deep_sarsa/hyperparams/deep_sarsa_{variant}.yml`, '
                f'`preset("{task}", next_action="{variant}")` (10 fresh seeds: validation.md).'
            )
    return [*lines, ""]


def variants_report(args: argparse.Namespace) -> int:
    """``variants``: a table per task that has grid results or studies, in ``--output``."""
    kept = [task for task in harness.TASKS if (args.runs / task).is_dir() or (args.studies / f"{task}.db").is_file()]
    lines = [
        "# Which next_action: every variant per task",
        "",
        "Built by `python benchmarks/validate.py variants` from results already kept; nothing is trained. *Grid*: "
        "`benchmarks/runs` (harness.py), every variant and DQN with the same hyperparameters (rl-zoo's DQN entry; "
        "Taxi and CliffWalking: harness.HAND_SET), its budget, 5 or 10 seeds (each cell gives the count), the final "
        "evaluation (20 episodes). *Tuning*: every finished trial of the task's studies "
        "(`benchmarks/studies/TASK.db`, tune.py), by the `next_action` it sampled (or its study fixed: "
        "`--next-action`); a variant's best complete trial is the one whose worst tuning seed (of 3) scores highest "
        "over the last 20% of its evaluations, ties broken by the worst seed's area under the curve (the mean of all "
        "its evaluations), then by the mean of the seeds' areas (tune.py's order). Few trials per variant: a "
        "variant's best trial also differs from the others in every other hyperparameter, so a gap between variants "
        "is evidence, not proof.",
        "",
    ]
    grid, presets = harness.load(args.runs), load_presets()
    per_variant = {variant: variant_presets(variant) for variant in NEXT_ACTIONS}
    for task in (task for task in kept if task not in harness.LECTURE_TASKS):
        lines += table(task, grid, presets, args.studies, per_variant)
    harness.write_report(args.output, "\n".join(lines))
    return 0


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
    variants_parser = commands.add_parser("variants", help="each next_action per task, from the grid and the studies")
    variants_parser.add_argument("--runs", type=Path, default=harness.RUNS, help="the grid's (default benchmarks/runs)")
    variants_parser.add_argument("--studies", type=Path, default=STUDIES, help="default benchmarks/studies")
    variants_parser.add_argument("--output", type=Path, default=OUTPUT.with_name("variants.md"))
    args = parser.parse_args(argv)
    commands_of = {"run": lambda: run(args), "report": lambda: report(args), "variants": lambda: variants_report(args)}
    return harness.run_command(parser, args, commands_of[args.command])


if __name__ == "__main__":
    sys.exit(main())
