"""
Learning-quality benchmark: DeepSARSA (each ``next_action`` variant) beside SB3's DQN.

Every (task, algorithm, seed) is an independent job that writes one JSON file, so a grid can be
resumed (finished jobs are skipped), sharded across processes or machines, and reported later.
Each job evaluates the deterministic policy with SB3's ``evaluate_policy`` every ``eval_freq``
steps (20 episodes by default, on a separate env) and records training wall-clock time (without
the evaluations).

    python benchmarks/harness.py grid --tasks CartPole-v1 --seeds 5 --workers 2
    python benchmarks/harness.py grid --tasks CartPole-v1 Acrobot-v1 --shard 1/2   # half of the jobs
    python benchmarks/harness.py report                                           # RESULTS table + plots
"""

import argparse
import json
import os
import platform
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium.wrappers import TimeLimit
from sb3_contrib.common.maskable.evaluation import evaluate_policy as evaluate_masked_policy
from sb3_contrib.common.wrappers import ActionMasker
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from deep_sarsa import DeepSARSA
from deep_sarsa.masking import toy_text_action_mask
from deep_sarsa.presets import LECTURE_MOUNTAIN_CAR, RL_ZOO_DQN, preset, rl_zoo_dqn
from deep_sarsa.wrappers import TimeLimitAsTermination

RUNS = Path(__file__).parent / "runs"
ALGORITHMS = ["dqn", "sarsa-sampled", "sarsa-expected", "sarsa-stored"]
#: also runnable: DeepSARSA with DQN's Huber loss instead of the default MSE
EXTRA_ALGORITHMS = ["sarsa-sampled-huber", "sarsa-expected-huber", "sarsa-stored-huber"]
#: Each task: budget, evaluation frequency, hyperparameters (the same for DQN and DeepSARSA) and
#: the reference to compare with. Classic control: rl-zoo's DQN entries and budgets, and its DQN
#: results (benchmark.md). Taxi and CliffWalking: the package's presets (``next_action`` aside).
TASKS: dict[str, dict[str, Any]] = {
    "CartPole-v1": dict(steps=50_000, eval_freq=5_000, reference="rl-zoo DQN 500"),
    "Acrobot-v1": dict(steps=100_000, eval_freq=10_000, reference="rl-zoo DQN -76.6"),
    "MountainCar-v0": dict(steps=120_000, eval_freq=10_000, reference="rl-zoo DQN -100.8"),
    "LunarLander-v3": dict(steps=100_000, eval_freq=10_000, reference="rl-zoo DQN 154"),
    "Taxi-v4": dict(steps=60_000, eval_freq=6_000, reference="optimal policy 7.93 (threshold 8)"),
    "CliffWalking-v1": dict(steps=60_000, eval_freq=6_000, reference="greedy path: -13 along the edge, -15/-17 safe"),
    # The lecture's own setting (the notebook's DeepSARSA only: DQN has no episode-based target sync)
    # (its models are kept, for examples/mountain_car_lecture.py --from-model to draw the figures)
    "MountainCar-v0-lecture": dict(
        steps=500_000, eval_freq=50_000, reference="lecture's notebook", algorithms=["sarsa-sampled"], save_model=True
    ),
    # ... and with the notebook's reading of the 200-step limit: truncation taken as termination
    "MountainCar-v0-lecture-timeout-terminal": dict(
        steps=500_000, eval_freq=50_000, reference="lecture's notebook", algorithms=["sarsa-sampled"], save_model=True
    ),
}


#: the lecture's own setting, run with one seed (500k steps each)
LECTURE_TASKS = ["MountainCar-v0-lecture", "MountainCar-v0-lecture-timeout-terminal"]


def make_env(task: str) -> gym.Env:
    """The task's env, with a Monitor: Taxi with its action masks, CliffWalking with a 200-step limit."""
    if task == "MountainCar-v0-lecture-timeout-terminal":
        return Monitor(TimeLimitAsTermination(gym.make("MountainCar-v0")))
    if task == "Taxi-v4":
        return ActionMasker(Monitor(gym.make("Taxi-v4")), toy_text_action_mask)
    if task == "CliffWalking-v1":
        return Monitor(TimeLimit(gym.make("CliffWalking-v1"), max_episode_steps=200))
    return Monitor(gym.make(task.removesuffix("-lecture")))


def hyperparameters_of(task: str) -> dict[str, Any]:
    """The keywords both algorithms get on ``task`` (DeepSARSA's ``next_action`` comes from the algorithm's name)."""
    if task.startswith("MountainCar-v0-lecture"):
        return {key: value for key, value in LECTURE_MOUNTAIN_CAR.items() if key not in ("next_action", "loss")}
    if task in RL_ZOO_DQN:
        return rl_zoo_dqn(task)
    hyperparameters = preset(task).hyperparameters
    del hyperparameters["next_action"]
    return hyperparameters


class Evaluate(BaseCallback):
    """Evaluates the deterministic policy every ``eval_freq`` steps; keeps its own time apart."""

    def __init__(self, task: str, eval_freq: int, episodes: int, seed: int) -> None:
        super().__init__()
        self.env = make_env(task)
        self.env.reset(seed=seed)
        self.eval_freq, self.episodes = eval_freq, episodes
        self.curve: list[tuple[int, float, float]] = []
        self.seconds = 0.0

    def _on_step(self) -> bool:
        if self.num_timesteps % self.eval_freq == 0:
            start = time.perf_counter()
            # A masked DeepSARSA acts among valid actions (sb3-contrib's evaluation passes the masks)
            masked = isinstance(self.model, DeepSARSA) and self.model._masking
            evaluate = evaluate_masked_policy if masked else evaluate_policy
            returns, _ = evaluate(
                self.model,  # type: ignore[arg-type]
                self.env,
                n_eval_episodes=self.episodes,
                deterministic=True,
                return_episode_rewards=True,
            )
            self.curve.append((self.num_timesteps, float(np.mean(returns)), float(np.std(returns))))
            self.seconds += time.perf_counter() - start
        return True


def job_path(runs: Path, task: str, algorithm: str, seed: int) -> Path:
    return runs / task / algorithm / f"seed{seed}.json"


def run_job(job: tuple[str, str, int, int, Path]) -> Path:
    """Train and evaluate one (task, algorithm, seed); write its JSON file; return the path."""
    task, algorithm, seed, episodes, runs = job
    th.set_num_threads(1)  # one job per core
    settings = TASKS[task]
    hyperparameters = hyperparameters_of(task)
    if algorithm == "dqn":
        model: DQN | DeepSARSA = DQN("MlpPolicy", make_env(task), seed=seed, device="cpu", **hyperparameters)
    else:
        next_action, _, loss = algorithm.removeprefix("sarsa-").partition("-")
        model = DeepSARSA(
            "MlpPolicy",
            make_env(task),
            seed=seed,
            device="cpu",
            next_action=next_action,  # type: ignore[arg-type]
            loss=loss or "mse",  # type: ignore[arg-type]
            **hyperparameters,
        )
    evaluate = Evaluate(task, settings["eval_freq"], episodes, seed=10_000 + seed)
    start = time.perf_counter()
    model.learn(settings["steps"], callback=evaluate)
    train_seconds = time.perf_counter() - start - evaluate.seconds
    result = {
        "task": task,
        "algorithm": algorithm,
        "seed": seed,
        "steps": model.num_timesteps,
        "curve": evaluate.curve,
        "train_seconds": train_seconds,
        "steps_per_second": model.num_timesteps / train_seconds,
        "hyperparameters": {k: str(v) for k, v in hyperparameters.items()},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {th.__version__}, one torch thread per job",
        "commit": _commit(),
    }
    path = job_path(runs, task, algorithm, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if settings.get("save_model"):
        model.save(path.with_suffix(".zip"))
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(result, indent=1))
    temporary.replace(path)
    return path


def _commit() -> str:
    """The git commit of this checkout (``unknown`` outside git), recorded with each result."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def jobs_of(args: argparse.Namespace) -> list[tuple[str, str, int, int, Path]]:
    """The (task, algorithm, seed, evaluation episodes, runs folder) jobs of a grid, in order."""
    return [
        (task, algorithm, seed, args.episodes, args.runs)
        for task in args.tasks
        for seed in range(args.seeds)
        for algorithm in args.algorithms
        if algorithm in TASKS[task].get("algorithms", ALGORITHMS + EXTRA_ALGORITHMS)
    ]


def grid(args: argparse.Namespace) -> None:
    jobs = jobs_of(args)
    index, count = (int(part) for part in args.shard.split("/"))
    jobs = [job for i, job in enumerate(jobs) if i % count == index - 1]
    todo = [job for job in jobs if not job_path(args.runs, job[0], job[1], job[2]).exists()]
    print(f"{len(jobs)} jobs in this shard, {len(jobs) - len(todo)} done already, {len(todo)} to run", flush=True)
    os.environ["OMP_NUM_THREADS"] = "1"
    with ProcessPoolExecutor(args.workers) as pool:
        for path in pool.map(run_job, todo):
            print(f"wrote {path}", flush=True)


def quartiles(values: list[float]) -> str:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return f"{median:.1f} [{q1:.1f}, {q3:.1f}]"


def report(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [json.loads(path.read_text()) for path in sorted(args.runs.glob("*/*/seed*.json"))]
    tasks = [task for task in TASKS if any(r["task"] == task for r in results)]
    lines = [
        "| task | algorithm | seeds | final return: median [IQR] | area under curve: median [IQR] "
        "| train wall-clock (s) | steps/s | reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def runs_of(task: str, algorithm: str) -> list[dict[str, Any]]:
        return [r for r in results if r["task"] == task and r["algorithm"] == algorithm]

    for task in tasks:
        for algorithm in ALGORITHMS + EXTRA_ALGORITHMS:
            runs = runs_of(task, algorithm)
            if runs:
                finals = [r["curve"][-1][1] for r in runs]
                areas = [float(np.mean([point[1] for point in r["curve"]])) for r in runs]
                lines.append(
                    f"| {task} | {algorithm} | {len(runs)} | {quartiles(finals)} | {quartiles(areas)} "
                    f"| {np.median([r['train_seconds'] for r in runs]):.0f} "
                    f"| {np.median([r['steps_per_second'] for r in runs]):.0f} "
                    f"| {TASKS[task]['reference']} |"
                )

    # One row of panels per task, one panel per DeepSARSA variant, DQN beside it in each
    variants = [a for a in ALGORITHMS + EXTRA_ALGORITHMS if a != "dqn" and any(r["algorithm"] == a for r in results)]
    figure, axes = plt.subplots(
        max(len(tasks), 1), max(len(variants), 1), figsize=(4 * max(len(variants), 1), 3.2 * max(len(tasks), 1)), squeeze=False
    )
    for row, task in enumerate(tasks):
        for column, variant in enumerate(variants):
            axis = axes[row][column]
            if not runs_of(task, variant):
                axis.axis("off")  # this variant did not run on this task
                continue
            for algorithm in ("dqn", variant):
                runs = runs_of(task, algorithm)
                if not runs:
                    continue
                steps = [point[0] for point in runs[0]["curve"]]
                curves = np.array([[point[1] for point in r["curve"]] for r in runs if len(r["curve"]) == len(steps)])
                q1, median, q3 = np.percentile(curves, [25, 50, 75], axis=0)
                axis.plot(steps, median, label=f"{algorithm} (median, {len(curves)} seeds)")
                axis.fill_between(steps, q1, q3, alpha=0.2)
            axis.set_title(f"{task}: {variant}", fontsize=9)
            axis.set_xlabel("env steps", fontsize=8)
            axis.set_ylabel("mean return, IQR band", fontsize=8)
            axis.legend(fontsize=7)
    figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output.with_suffix(".png"), dpi=100)
    machine = results[0]["machine"] if results else ""
    text = "\n".join(
        [
            "# Learning quality: DeepSARSA vs SB3 DQN",
            "",
            "rl-zoo's DQN hyperparameters for both (unchanged), rl-zoo's budgets; deterministic evaluation "
            "with `evaluate_policy` on a separate env; median and interquartile range over seeds. "
            "Final = the last evaluation; area under curve = the mean of all evaluations.",
            "",
            *lines,
            "",
            f"![learning curves]({args.output.with_suffix('.png').name})",
            "",
            f"Machine: {machine}.",
            "",
            "Reproduce: `python benchmarks/harness.py grid --tasks "
            + " ".join(task for task in tasks if task not in LECTURE_TASKS)
            + " --seeds 5 --workers 2`, `python benchmarks/harness.py grid --tasks "
            + " ".join(task for task in tasks if task in LECTURE_TASKS)
            + " --seeds 1` (20 minutes a run), then `python benchmarks/harness.py report`.",
        ]
    )
    args.output.write_text(text + "\n")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    grid_parser = commands.add_parser("grid", help="run (the missing) jobs of a grid")
    grid_parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    grid_parser.add_argument("--algorithms", nargs="+", default=ALGORITHMS, choices=ALGORITHMS + EXTRA_ALGORITHMS)
    grid_parser.add_argument("--seeds", type=int, default=5)
    grid_parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes")
    grid_parser.add_argument("--workers", type=int, default=2)
    grid_parser.add_argument("--shard", default="1/1", help="i/n: run every n-th job starting at the i-th")
    grid_parser.add_argument("--runs", type=Path, default=RUNS)
    report_parser = commands.add_parser("report", help="aggregate the JSON files into a table and plots")
    report_parser.add_argument("--runs", type=Path, default=RUNS)
    report_parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "learning.md")
    args = parser.parse_args()
    grid(args) if args.command == "grid" else report(args)


if __name__ == "__main__":
    main()
