"""
Which ``next_action``: each variant per task, from the results already kept (nothing is trained): the learning grid's
final returns and every finished trial of the task's studies, by the ``next_action`` it sampled.

    python benchmarks/variants.py          # benchmarks/results/variants.md
"""

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from harness import LECTURE_TASKS, RUNS, TASKS, load, quartiles, write_report
from tune import FINISHED, STUDIES, area_under_curve, last_fraction_mean

from deep_sarsa.presets import NEXT_ACTIONS, Preset, load_presets, variant_presets

VARIANTS = list(NEXT_ACTIONS)
OUTPUT = Path(__file__).parent / "results" / "variants.md"


class Best(NamedTuple):
    """A variant's best complete trial: its study, number, worst seed's last 20% and area, mean area (the tie-breaks)."""

    study: str
    number: int
    worst_last: float
    worst_area: float
    mean_area: float


def worst_scores(curves: Sequence[Sequence[Sequence[float]]]) -> tuple[float, float]:
    """The worst seed's mean of its last 20% of evaluations, and the worst seed's area under the curve."""
    if not curves:
        raise ValueError("a trial needs at least one seed's curve")
    return min(last_fraction_mean(curve) for curve in curves), min(area_under_curve(curve) for curve in curves)


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
        curves = trial.user_attrs["curves"]
        mean_area = float(np.mean([area_under_curve(curve) for curve in curves]))
        candidate = Best(study, trial.number, *worst_scores(curves), mean_area)
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
    for variant in [*VARIANTS, "dqn"]:
        algorithm = "dqn" if variant == "dqn" else f"sarsa-{variant}"
        finals = [float(result["curve"][-1][1]) for result in grid.get((task, algorithm), [])]
        cell = f"{quartiles(finals)} ({len(finals)})" if finals else "not run"
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


def report(args: argparse.Namespace) -> int:
    """``--output``: a table per task that has grid results or studies."""
    kept = [task for task in TASKS if (args.runs / task).is_dir() or (args.studies / f"{task}.db").is_file()]
    lines = [
        "# Which next_action: every variant per task",
        "",
        "Built by `python benchmarks/variants.py` from results already kept; nothing is trained. *Grid*: `benchmarks/runs` "
        "(harness.py), every variant and DQN with the same hyperparameters (rl-zoo's DQN entry; Taxi and CliffWalking: "
        "harness.HAND_SET), its budget, 5 or 10 seeds (each cell gives the count), the final evaluation (20 episodes). "
        "*Tuning*: every finished trial of the task's studies (`benchmarks/studies/TASK.db`, tune.py), by the `next_action` "
        "it sampled (or its study fixed: `--next-action`); a variant's best complete trial is the one whose worst tuning "
        "seed (of 3) scores highest over the last 20% of its evaluations, ties broken by the worst seed's area under the "
        "curve (the mean of all its evaluations), then by the mean of the seeds' areas (tune.py's order). Few trials per "
        "variant: a variant's best trial also differs from the others in every other hyperparameter, so a gap between "
        "variants is evidence, not proof.",
        "",
    ]
    grid, presets = load(args.runs), load_presets()
    per_variant = {variant: variant_presets(variant) for variant in NEXT_ACTIONS}
    for task in (task for task in kept if task not in LECTURE_TASKS):
        lines += table(task, grid, presets, args.studies, per_variant)
    write_report(args.output, "\n".join(lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=RUNS, help="the grid's results (default benchmarks/runs)")
    parser.add_argument("--studies", type=Path, default=STUDIES, help="the studies' folder (default benchmarks/studies)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="default benchmarks/results/variants.md")
    return report(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
