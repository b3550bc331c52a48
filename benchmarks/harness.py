"""
Learning-quality benchmark: DeepSARSA (each ``next_action`` variant) beside SB3's DQN.

Every (task, algorithm, seed) is an independent job. Workers claim the jobs of a grid from a shared
store (``benchmarks/jobstore.py``: a table in a SQLite file on one machine, the default
``benchmarks/runs/grid.db``, or in a PostgreSQL database for several machines), so any number of
processes on any number of machines run one grid once, and running the same command again resumes it
after a crash (a job whose worker died is claimed again once its lease expires; finished jobs never
rerun). Each job evaluates the deterministic policy with SB3's ``evaluate_policy`` every ``eval_freq``
steps (20 episodes by default, on a separate env) and records training wall-clock time (without the
evaluations). Its result goes into the store and into one JSON file on the machine that ran it
(``benchmarks/runs/TASK/ALGORITHM/seedN.json``); JSON files already in the runs folder count as done.

    python benchmarks/harness.py grid --tasks CartPole-v1 --seeds 5 --workers 2        # store: benchmarks/runs/grid.db
    python benchmarks/harness.py grid --store postgresql+psycopg://bench:secret@db-host/bench --workers 8   # on each machine
    python benchmarks/harness.py status --store postgresql+psycopg://bench:secret@db-host/bench
    python benchmarks/harness.py export --store postgresql+psycopg://bench:secret@db-host/bench   # every result as JSON here
    python benchmarks/harness.py report                                                 # RESULTS table + plots
"""

import argparse
import json
import multiprocessing
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium.wrappers import TimeLimit
from sb3_contrib.common.maskable.evaluation import evaluate_policy as evaluate_masked_policy
from sb3_contrib.common.wrappers import ActionMasker
from sqlalchemy.exc import SQLAlchemyError
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from deep_sarsa import DeepSARSA
from deep_sarsa.files import atomic_path
from deep_sarsa.masking import toy_text_action_mask
from deep_sarsa.presets import LECTURE_MOUNTAIN_CAR, NEXT_ACTIONS, RL_ZOO_DQN, preset, rl_zoo_dqn
from deep_sarsa.wrappers import TimeLimitAsTermination

sys.path.insert(0, str(Path(__file__).parent))
from ablation import cpu_model
from jobstore import DONE, FAILED, Job, JobStore, StoreError, iterate_status, work

RUNS = Path(__file__).parent / "runs"
ALGORITHMS = ["dqn", "sarsa-sampled", "sarsa-expected", "sarsa-stored"]
#: also runnable: DeepSARSA with DQN's Huber loss instead of the default MSE, the package's preset
#: (``deep_sarsa.presets.preset(task)``: its own hyperparameters, ``next_action`` and ``loss``) and its per-variant
#: presets (``sarsa-preset-VARIANT``: ``preset(task, next_action=VARIANT)``)
EXTRA_ALGORITHMS = [
    "sarsa-sampled-huber",
    "sarsa-expected-huber",
    "sarsa-stored-huber",
    "sarsa-preset",
    *(f"sarsa-preset-{variant}" for variant in NEXT_ACTIONS),
]
#: Each task: budget, evaluation frequency, hyperparameters (the same for DQN and DeepSARSA) and
#: the reference to compare with. Classic control: rl-zoo's DQN entries and budgets, and its DQN
#: results (benchmark.md). Taxi and CliffWalking: :data:`HAND_SET`.
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


#: Taxi and CliffWalking have no rl-zoo DQN entry: DQN and the grid's DeepSARSA variants get these hand-set
#: hyperparameters (Taxi: one-hot states and a Q-table, examples/masked_taxi.py; CliffWalking: a Q-table and the
#: exploration of docs/cliff_walking.md), the package's first presets of the two tasks. They are fixed here rather
#: than read from the presets file, so that tuning a preset leaves DQN's and the grid's runs as they were.
_Q_TABLE: dict[str, Any] = dict(
    buffer_size=50_000,
    learning_starts=1000,
    gamma=0.99,
    target_update_interval=500,
    train_freq=1,
    gradient_steps=1,
    exploration_fraction=0.5,
    policy_kwargs=dict(net_arch=[]),
)
HAND_SET: dict[str, dict[str, Any]] = {
    "Taxi-v4": dict(_Q_TABLE, learning_rate=1e-2, batch_size=128, exploration_final_eps=0.05),
    "CliffWalking-v1": dict(
        _Q_TABLE, learning_rate=0.05, batch_size=64, exploration_initial_eps=1.0, exploration_final_eps=0.1
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
    entry = HAND_SET[task]
    return {**entry, "policy_kwargs": dict(entry["policy_kwargs"])}


class Evaluate(BaseCallback):
    """Evaluates the deterministic policy every ``eval_freq`` steps; keeps its own time apart."""

    def __init__(self, task: str, eval_freq: int, episodes: int, seed: int) -> None:
        super().__init__()
        self.env = make_env(task)
        self.env.reset(seed=seed)
        self.eval_freq, self.episodes = eval_freq, episodes
        self.curve: list[tuple[int, float, float]] = []
        #: the training wall-clock seconds (evaluations left out) at each evaluation of ``curve``
        self.curve_seconds: list[float] = []
        self.seconds = 0.0
        self.started = time.perf_counter()

    def _on_training_start(self) -> None:
        self.started = time.perf_counter()

    def _on_step(self) -> bool:
        if self.num_timesteps % self.eval_freq == 0:
            start = time.perf_counter()
            self.curve_seconds.append(start - self.started - self.seconds)
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


def train_job(job: Job, runs: Path) -> dict[str, Any]:
    """Train and evaluate one (task, algorithm, seed); return its result (a task that keeps its model saves it in ``runs``)."""
    task, algorithm, seed, episodes = job
    th.set_num_threads(1)  # one job per core
    settings = TASKS[task]
    hyperparameters = hyperparameters_of(task)
    if algorithm == "dqn":
        model: DQN | DeepSARSA = DQN("MlpPolicy", make_env(task), seed=seed, device="cpu", **hyperparameters)
    elif algorithm.startswith("sarsa-preset"):
        variant = algorithm.removeprefix("sarsa-preset").removeprefix("-") or None
        hyperparameters = preset(task, next_action=variant).hyperparameters
        model = DeepSARSA("MlpPolicy", make_env(task), seed=seed, device="cpu", **hyperparameters)
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
    if settings.get("save_model"):
        model.save(job_path(runs, task, algorithm, seed).with_suffix(".zip"))
    return {
        "task": task,
        "algorithm": algorithm,
        "seed": seed,
        "episodes": episodes,
        "steps": model.num_timesteps,
        "curve": evaluate.curve,
        "curve_seconds": evaluate.curve_seconds,
        "train_seconds": train_seconds,
        "steps_per_second": model.num_timesteps / train_seconds,
        "hyperparameters": {k: str(v) for k, v in hyperparameters.items()},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {th.__version__}, one torch thread per job",
        "cpu": cpu_model(),
        "commit": CODE_COMMIT,
    }


def write_result(runs: Path, result: dict[str, Any]) -> Path:
    """Write a job's result as its JSON file in ``runs`` (whole or not at all); return the path."""
    path = job_path(runs, result["task"], result["algorithm"], result["seed"])
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(result, indent=1))
    return path


def run_job(job: tuple[str, str, int, int, Path]) -> Path:
    """Train and evaluate one (task, algorithm, seed, evaluation episodes, runs folder) without a store; write its JSON."""
    task, algorithm, seed, episodes, runs = job
    return write_result(runs, train_job(Job(task, algorithm, seed, episodes), runs))


def _commit(folder: Path = Path(__file__).parent) -> str:
    """
    The git commit of this checkout (``unknown`` outside git), with ``+changes`` where the package's tracked files or the
    benchmarks' tracked Python files differ from it. Read when this module is imported (:data:`CODE_COMMIT`): a worker
    runs the code it imported, whatever is committed later.

    :param folder: the benchmarks folder (beside the package's ``deep_sarsa`` folder)
    """
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "../deep_sarsa", "*.py"],
            cwd=folder,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if changed else "")


#: the commit of the code this process runs (:func:`_commit`, at import)
CODE_COMMIT = _commit()


def jobs_of(args: argparse.Namespace) -> list[Job]:
    """The (task, algorithm, seed, evaluation episodes) jobs of a grid, in order."""
    return [
        Job(task, algorithm, seed, args.episodes)
        for task in args.tasks
        for seed in range(args.seeds)
        for algorithm in args.algorithms
        if algorithm in TASKS[task].get("algorithms", ALGORITHMS + EXTRA_ALGORITHMS)
    ]


def shard(text: str) -> tuple[int, int]:
    """``--shard i/n``: the i-th of n parts of a grid (1 <= i <= n); an ``argparse`` type."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise argparse.ArgumentTypeError(
            f"expected i/n with whole numbers 1 <= i <= n (e.g. 1/2 and 2/2 for two halves), got {text!r}"
        )
    return int(match[1]), int(match[2])


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(
                f"expected a positive {'whole number' if kind is int else 'number'}, got {text!r}"
            )
        return value

    return parse


def store_url(args: argparse.Namespace) -> str:
    """``--store``, or the SQLite file ``grid.db`` in the runs folder."""
    if getattr(args, "store", None):
        return str(args.store)
    return f"sqlite:///{args.runs / 'grid.db'}"


def finished_here(runs: Path, jobs: Sequence[Job]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """The results of ``jobs`` that the runs folder has as JSON files (from earlier runs, or copied from elsewhere)."""
    finished = {}
    for job in jobs:
        path = job_path(runs, job.task, job.algorithm, job.seed)
        if not path.exists():
            continue
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable result ({error}); delete it to run the job again") from None
        if not isinstance(result, dict) or [result.get(k) for k in ("task", "algorithm", "seed")] != list(job.key):
            raise ValueError(f"{path}: not the result of {job} (expected its task, algorithm and seed); delete or move it")
        finished[job.key] = result
    return finished


JobFunction = Callable[[Job, Path], dict[str, Any]]


def _worker(url: str, lease: float, jobs: list[Job], runs: Path, job: JobFunction) -> None:
    """One worker process: claim and run jobs until the grid is done; a SIGTERM or Ctrl-C gives the running job back."""

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C reaches the workers too
    os.environ["OMP_NUM_THREADS"] = "1"
    store = JobStore(url, lease=lease)

    def on_result(done: Job, result: dict[str, Any]) -> None:
        try:
            print(f"wrote {write_result(runs, result)}", flush=True)
        except OSError as error:  # a full disk: the result is safe in the store all the same
            path = job_path(runs, done.task, done.algorithm, done.seed)
            print(f"could not write {path} ({error}); its result is in the store: `harness.py export` writes it", flush=True)

    try:
        work(store, jobs, lambda claimed: job(claimed, runs), on_result=on_result, log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(f"worker {os.getpid()}: interrupted, its job given back", flush=True)
        sys.exit(130)
    except SQLAlchemyError as error:
        message = " ".join(str(error).split())[:500]
        print(f"worker {os.getpid()}: the store {store.shown_url} failed ({message}); running the grid again resumes it")
        sys.exit(1)
    finally:
        store.close()


def grid(args: argparse.Namespace, job: JobFunction = train_job) -> int:
    """
    Add the grid's jobs to the store, then run ``--workers`` worker processes on it until it is done.

    :param args: the ``grid`` command's arguments
    :param job: the job function (tests give a fast fake one; it must be importable by name)
    :return: the exit status: 0 if every job of the grid is done
    """
    jobs = jobs_of(args)
    index, count = args.shard
    jobs = [item for i, item in enumerate(jobs) if i % count == index - 1]
    if not getattr(args, "store", None):
        args.runs.mkdir(parents=True, exist_ok=True)
    store = JobStore(store_url(args), lease=args.lease)
    try:
        added = store.add(jobs, finished_here(args.runs, jobs))
        retried = store.retry_failed(jobs) if args.retry_failed else 0
        counts = store.counts(jobs)
        print(
            f"{len(jobs)} jobs in this grid ({added} new to {store.shown_url}), {counts[DONE]} done already, "
            f"{counts[FAILED]} failed{f' ({retried} made pending again)' if retried else ''}",
            flush=True,
        )
        left = len(jobs) - counts[DONE] - counts[FAILED]
        if left:
            url = store.url.render_as_string(hide_password=False)  # the workers need the password
            _run_workers(min(args.workers, left), url, args.lease, jobs, args.runs, job)
        counts = store.counts(jobs)
        print(f"{counts[DONE]} of {len(jobs)} jobs done, {counts[FAILED]} failed", flush=True)
        for line in iterate_status(store, jobs):
            if line.startswith("  failed"):
                print(line, flush=True)
        return 0 if counts[DONE] == len(jobs) else 1
    finally:
        store.close()


def _run_workers(workers: int, url: str, lease: float, jobs: list[Job], runs: Path, job: JobFunction) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each: no forked database connections or torch state
    processes = [
        context.Process(target=_worker, args=(url, lease, jobs, runs, job), name=f"grid worker {n}") for n in range(workers)
    ]

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        # The workers give their jobs back (a Ctrl-C reached them too; a SIGTERM to this process did not)
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(30)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    for process in processes:
        if process.exitcode:
            print(f"{process.name} (pid {process.pid}) ended with exit code {process.exitcode}", file=sys.stderr, flush=True)


def status(args: argparse.Namespace) -> int:
    """Print how far the store's grid is: counts, running jobs (by whom, lease left), failed jobs (why)."""
    store = JobStore(store_url(args), create=False)
    try:
        for line in iterate_status(store):
            print(line)
    finally:
        store.close()
    return 0


def export(args: argparse.Namespace) -> int:
    """Write every result of the store as its JSON file in the runs folder (collects what other machines ran)."""
    store = JobStore(store_url(args), create=False)
    try:
        results = store.results()
    finally:
        store.close()
    written = 0
    for result in results:
        path = job_path(args.runs, result["task"], result["algorithm"], result["seed"])
        if not path.exists() or json.loads(path.read_text()) != result:
            write_result(args.runs, result)
            written += 1
    print(f"{len(results)} results in the store, {written} JSON files written in {args.runs}")
    return 0


def quartiles(values: list[float]) -> str:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return f"{median:.1f} [{q1:.1f}, {q3:.1f}]"


def report(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if getattr(args, "store", None):
        store = JobStore(args.store, create=False)
        try:
            results = store.results()
        finally:
            store.close()
    else:
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    store_help = "the job store: a SQLAlchemy URL, sqlite:///FILE (one machine) or postgresql+psycopg://USER:PASSWORD@HOST/DB"
    grid_parser = commands.add_parser("grid", help="run the grid's jobs that nobody ran yet, with the store's other workers")
    grid_parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    grid_parser.add_argument("--algorithms", nargs="+", default=ALGORITHMS, choices=ALGORITHMS + EXTRA_ALGORITHMS)
    grid_parser.add_argument("--seeds", type=_positive(int), default=5)
    grid_parser.add_argument("--episodes", type=_positive(int), default=20, help="evaluation episodes")
    grid_parser.add_argument("--workers", type=_positive(int), default=2, help="worker processes on this machine")
    grid_parser.add_argument("--store", help=store_help + " (default: sqlite:///RUNS/grid.db)")
    grid_parser.add_argument(
        "--lease", type=_positive(float), default=60.0, help="seconds after which a silent worker's job is claimed again"
    )
    grid_parser.add_argument("--retry-failed", action="store_true", help="run the grid's failed jobs again")
    grid_parser.add_argument(
        "--shard", type=shard, default=(1, 1), help="i/n: only every n-th job starting at the i-th (without a shared store)"
    )
    grid_parser.add_argument("--runs", type=Path, default=RUNS)
    for name, text in (("status", "how far the store's grid is"), ("export", "write the store's results as JSON files")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--store", help=store_help + " (default: sqlite:///RUNS/grid.db)")
        command.add_argument("--runs", type=Path, default=RUNS)
    report_parser = commands.add_parser("report", help="aggregate the results into a table and plots")
    report_parser.add_argument("--runs", type=Path, default=RUNS)
    report_parser.add_argument("--store", help="read the results from this store instead of the runs folder's JSON files")
    report_parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "learning.md")
    args = parser.parse_args(argv)
    try:
        if args.command == "grid":
            return grid(args)
        if args.command == "status":
            return status(args)
        if args.command == "export":
            return export(args)
        report(args)
        return 0
    except (StoreError, ValueError) as error:
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")
    except SQLAlchemyError as error:  # the database went away while the command ran
        parser.exit(1, f"{parser.prog} {args.command}: error: the store failed: {' '.join(str(error).split())[:500]}\n")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
