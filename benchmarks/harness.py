"""
Learning-quality benchmark: DeepSARSA (each ``next_action`` variant) beside SB3's DQN, one Dask task per (task,
algorithm, seed), each result written as ``benchmarks/runs/TASK/ALGORITHM/seedN.json`` (a job whose file exists is
skipped: the same command resumes). Details: docs/benchmarks.md.

    python benchmarks/harness.py grid --tasks CartPole-v1 --seeds 5                  # a local cluster
    python benchmarks/harness.py grid --tasks CartPole-v1 --seeds 5 --scheduler tcp://HOST:8786
    python benchmarks/harness.py report                                              # RESULTS table + plots
"""

import argparse
import contextlib
import copy
import functools
import io
import itertools
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

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
from stable_baselines3.common.utils import polyak_update

from deep_sarsa import DeepSARSA
from deep_sarsa.atomic import atomic_path
from deep_sarsa.buffers import NextState, sample_with_indices
from deep_sarsa.masking import toy_text_action_mask
from deep_sarsa.presets import LECTURE_MOUNTAIN_CAR, NEXT_ACTIONS, RL_ZOO_DQN, preset, rl_zoo_dqn
from deep_sarsa.wrappers import TimeLimitAsTermination

sys.path.insert(0, str(Path(__file__).parent))
from throughput import cpu_model

RUNS = Path(__file__).parent / "runs"
ALGORITHMS = ["dqn", "sarsa-sampled", "sarsa-expected", "sarsa-stored"]
#: also runnable: DeepSARSA with DQN's Huber loss, the package's presets, and #31's diagnosis (``DIAGNOSIS``, below)
EXTRA_ALGORITHMS = [*(f"sarsa-{v}-huber" for v in NEXT_ACTIONS), "sarsa-preset", *(f"sarsa-preset-{v}" for v in NEXT_ACTIONS)]
#: the lecture's own setting (its DeepSARSA only, one seed, the models kept for examples/mountain_car_lecture.py), the
#: second with the 200-step limit taken as termination
LECTURE_TASKS = ["MountainCar-v0-lecture", "MountainCar-v0-lecture-timeout-terminal"]
_LECTURE = dict(steps=500_000, eval_freq=50_000, reference="lecture's notebook", algorithms=["sarsa-sampled"], save_model=True)
#: Each task's budget, evaluation frequency and reference (classic control: rl-zoo's DQN budgets and results)
TASKS: dict[str, dict[str, Any]] = {
    "CartPole-v1": dict(steps=50_000, eval_freq=5_000, reference="rl-zoo DQN 500"),
    "Acrobot-v1": dict(steps=100_000, eval_freq=10_000, reference="rl-zoo DQN -76.6"),
    "MountainCar-v0": dict(steps=120_000, eval_freq=10_000, reference="rl-zoo DQN -100.8"),
    "LunarLander-v3": dict(steps=100_000, eval_freq=10_000, reference="rl-zoo DQN 154"),
    "Taxi-v4": dict(steps=60_000, eval_freq=6_000, reference="optimal policy 7.93 (threshold 8)"),
    "CliffWalking-v1": dict(steps=60_000, eval_freq=6_000, reference="greedy path: -13 along the edge, -15/-17 safe"),
    **dict.fromkeys(LECTURE_TASKS, _LECTURE),
}
#: Taxi and CliffWalking have no rl-zoo DQN entry: both algorithms get these Q-table entries (the package's first
#: presets of the two tasks), fixed here so that tuning a preset leaves DQN's and the grid's runs as they were.
_Q_TABLE: dict[str, Any] = dict(buffer_size=50_000, learning_starts=1000, gamma=0.99, target_update_interval=500)
_Q_TABLE.update(train_freq=1, gradient_steps=1, exploration_fraction=0.5, policy_kwargs=dict(net_arch=[]))
HAND_SET: dict[str, dict[str, Any]] = {
    "Taxi-v4": dict(_Q_TABLE, learning_rate=1e-2, batch_size=128, exploration_final_eps=0.05),
    "CliffWalking-v1": dict(
        _Q_TABLE, learning_rate=0.05, batch_size=64, exploration_initial_eps=1.0, exploration_final_eps=0.1
    ),
}
Job = tuple[str, str, int, int]
PerSeed = Sequence[float] | np.ndarray  # a value per seed
#: a job function: (task, algorithm, seed, evaluation episodes) -> result (tests give a fast fake one)
JobFunction = Callable[[str, str, int, int], dict[str, Any]]


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
        return {k: v for k, v in LECTURE_MOUNTAIN_CAR.items() if k not in ("next_action", "next_action_net", "loss")}
    if task in RL_ZOO_DQN:
        return rl_zoo_dqn(task)
    return {**HAND_SET[task], "policy_kwargs": dict(HAND_SET[task]["policy_kwargs"])}


class PickByAverage(DeepSARSA):
    """DeepSARSA whose a' comes from a slowly moving average of the online network (``average_tau`` per gradient step)."""

    def __init__(self, *args: Any, average_tau: float = 0.005, **kwargs: Any) -> None:
        self.average_tau = average_tau
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        self.q_net_average = copy.deepcopy(self.q_net)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        super().train(gradient_steps, batch_size)
        tau = 1 - (1 - self.average_tau) ** gradient_steps  # as many averaging steps as gradient steps, at the call's end
        polyak_update(self.q_net.parameters(), self.q_net_average.parameters(), tau)

    def _policy_q_values(self, replay_data: Any, next_q_target: th.Tensor) -> th.Tensor:
        return self.q_net_average(replay_data.next_observations)


class PickWithMemoryEpsilon(DeepSARSA):
    """DeepSARSA whose a' is drawn with the mean ε of the steps its replay memory holds, not the acting ε."""

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        held = range(max(0, self.num_timesteps - self.buffer_size), self.num_timesteps, max(1, self.buffer_size // 1000))
        acting, total = self.exploration_rate, self._total_timesteps
        self.exploration_rate = float(np.mean([self.exploration_schedule(1.0 - step / total) for step in held]))
        super().train(gradient_steps, batch_size)
        self.exploration_rate = acting  # the acting policy's again (logged, and what rollouts use)


class HalfStored(DeepSARSA):
    """DeepSARSA (``next_action="stored"``) whose a' is the stored one on a random half of the rows, sampled elsewhere."""

    def _sample(self, batch_size: int) -> tuple[Any, Any]:
        samples, next_state = super()._sample(batch_size)
        stored = cast(th.Tensor, next_state.stored_actions)  # next_action="stored": every row has one (-1: none)
        kept = th.where(th.rand(stored.shape, device=stored.device) < 0.5, stored, -1)  # -1: drawn from the policy
        return samples, next_state._replace(stored_actions=kept, all_stored=False)


class PickWithRowEpsilon(DeepSARSA):
    """DeepSARSA whose a' is drawn with the ε its row's step was taken with (one env), not the acting ε."""

    def _sample(self, batch_size: int) -> tuple[Any, Any]:
        assert self.replay_buffer is not None
        samples, rows, _ = sample_with_indices(self.replay_buffer, batch_size, self._vec_normalize_env)
        steps = self.num_timesteps - (self.replay_buffer.pos - rows - 1) % self.buffer_size - 1  # row pos - 1: the newest
        epsilon = [self.exploration_schedule(1.0 - step / self._total_timesteps) for step in steps]  # as when acting
        explore = np.random.rand(batch_size) < np.where(steps < self.learning_starts, 1.0, epsilon)  # a' drawn here (as
        # "stored" a', which is why its next_action is "stored"); -1: the online network's greedy pick at update time
        actions = np.where(explore, np.random.randint(self.action_space.n, size=batch_size), -1)  # type: ignore[attr-defined]
        return samples, NextState(stored_actions=th.as_tensor(actions.reshape(-1, 1), device=self.device))

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        acting, self.exploration_rate = self.exploration_rate, 0.0  # where _sample drew no a', the greedy pick
        super().train(gradient_steps, batch_size)
        self.exploration_rate = acting  # the acting policy's again (logged, and what rollouts use)


#: #31's diagnosis on rl-zoo's DQN entries (docs/diagnosis.md): DeepSARSA variants by name, (class, keywords); the
#: others ("sarsa-NEXT_ACTION[-huber]") pick a' with the online network, DeepSARSA's only choice before next_action_net
DIAGNOSIS: dict[str, tuple[type[DeepSARSA], dict[str, Any]]] = {
    "sarsa-sampled-targetpick": (DeepSARSA, dict(next_action_net="target")),  # a' picked by the target network
    "sarsa-expected-targetpick": (DeepSARSA, dict(next_action_net="target")),  # DeepSARSA's defaults since 0.3.0
    "sarsa-sampled-sync1000": (DeepSARSA, dict(target_update_interval=1000)),  # the target synced every 1000 steps
    "sarsa-sampled-clip1": (DeepSARSA, dict(max_grad_norm=1.0)),  # gradients clipped at norm 1, not 10
    "sarsa-sampled-averagepick": (PickByAverage, {}),  # a' picked by a slowly moving average of the online network
    "sarsa-sampled-slowpick": (PickByAverage, dict(average_tau=1e-4)),  # lagging ~10k gradient steps: as old as stored a'
    "sarsa-sampled-memoryeps": (PickWithMemoryEpsilon, {}),  # a' drawn with the mean ε of the steps in the memory
    "sarsa-stored-half": (HalfStored, {}),  # a' stored on a random half of the rows, drawn from the policy elsewhere
    "sarsa-sampled-roweps": (PickWithRowEpsilon, dict(next_action="stored")),  # a' drawn with its row's ε
}
EXTRA_ALGORITHMS += list(DIAGNOSIS)


class Evaluate(BaseCallback):
    """Evaluates the deterministic policy every ``eval_freq`` steps; keeps its own time apart."""

    def __init__(self, task: str, eval_freq: int, episodes: int, seed: int) -> None:
        super().__init__()
        self.env = make_env(task)
        self.env.reset(seed=seed)
        self.eval_freq, self.episodes = eval_freq, episodes
        self.curve: list[tuple[int, float, float]] = []
        self.curve_seconds: list[float] = []  # the training seconds (evaluations left out) at each evaluation
        self.seconds, self.started = 0.0, time.perf_counter()

    def _on_training_start(self) -> None:
        self.started = time.perf_counter()

    def _on_step(self) -> bool:
        if self.num_timesteps % self.eval_freq == 0:
            start = time.perf_counter()
            self.curve_seconds.append(start - self.started - self.seconds)
            # A masked DeepSARSA acts among valid actions (sb3-contrib's evaluation passes the masks)
            masked = isinstance(self.model, DeepSARSA) and self.model._masking
            evaluate = evaluate_masked_policy if masked else evaluate_policy
            returns, _ = evaluate(self.model, self.env, self.episodes, deterministic=True, return_episode_rewards=True)  # type: ignore[arg-type]
            self.curve.append((self.num_timesteps, float(np.mean(returns)), float(np.std(returns))))
            self.seconds += time.perf_counter() - start
        return True


def job_path(runs: Path, task: str, algorithm: str, seed: int) -> Path:
    return runs / task / algorithm / f"seed{seed}.json"


def train_job(task: str, algorithm: str, seed: int, episodes: int) -> dict[str, Any]:
    """Train and evaluate one (task, algorithm, seed); its result (with ``model_zip``, bytes, where the task keeps it)."""
    th.set_num_threads(1)  # one job per core
    settings, hyperparameters = TASKS[task], hyperparameters_of(task)
    if algorithm == "dqn":
        model: DQN | DeepSARSA = DQN("MlpPolicy", make_env(task), seed=seed, device="cpu", **hyperparameters)
    elif algorithm.startswith("sarsa-preset"):
        variant = algorithm.removeprefix("sarsa-preset").removeprefix("-") or None
        hyperparameters = preset(task, next_action=variant).hyperparameters
        model = DeepSARSA("MlpPolicy", make_env(task), seed=seed, device="cpu", **hyperparameters)
    else:
        next_action, _, loss = algorithm.removeprefix("sarsa-").partition("-")
        kind, changed = DIAGNOSIS.get(algorithm, (DeepSARSA, {}))
        keywords: dict[str, Any] = dict(next_action=next_action, loss="huber" if loss == "huber" else "mse", **hyperparameters)
        keywords["next_action_net"] = "online"
        keywords.update(changed)
        model = kind("MlpPolicy", make_env(task), seed=seed, device="cpu", **keywords)
    evaluate = Evaluate(task, settings["eval_freq"], episodes, seed=10_000 + seed)
    start = time.perf_counter()
    model.learn(settings["steps"], callback=evaluate)
    train_seconds = time.perf_counter() - start - evaluate.seconds
    result: dict[str, Any] = dict(task=task, algorithm=algorithm, seed=seed, episodes=episodes, steps=model.num_timesteps)
    result |= dict(curve=evaluate.curve, curve_seconds=evaluate.curve_seconds, train_seconds=train_seconds)
    result |= dict(steps_per_second=model.num_timesteps / train_seconds, cpu=cpu_model(), commit=CODE_COMMIT)
    result["hyperparameters"] = {k: str(v) for k, v in hyperparameters.items()}
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, torch {th.__version__}, one torch thread per job"
    if settings.get("save_model"):  # the model travels back with the result: the worker may be another machine
        buffer = io.BytesIO()
        model.save(buffer)
        result["model_zip"] = buffer.getvalue()
    return result


def write_result(runs: Path, result: dict[str, Any]) -> Path:
    """Write a job's result as its JSON file in ``runs`` (whole or not at all), its model beside it; return the path."""
    path = job_path(runs, result["task"], result["algorithm"], result["seed"])
    if (model_zip := result.pop("model_zip", None)) is not None:
        with atomic_path(path.with_suffix(".zip")) as temporary:
            temporary.write_bytes(model_zip)
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(result, indent=1))
    return path


def _commit(folder: Path = Path(__file__).parent) -> str:
    """This checkout's commit, ``+changes`` where the package's or the benchmarks' tracked Python files differ from it."""
    git = ["git", "-C", str(folder)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout
        status = [*git, "status", "--porcelain", "--untracked-files=no", "--", "../deep_sarsa", "*.py"]
        changed = subprocess.run(status, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.strip() + ("+changes" if changed else "")


CODE_COMMIT = _commit()  # read at import: a worker records the code it runs


def jobs_of(args: argparse.Namespace) -> list[Job]:
    """The (task, algorithm, seed, evaluation episodes) jobs of a grid, in order."""
    return [
        (task, algorithm, seed, args.episodes)
        for task in args.tasks
        for seed in range(args.seeds)
        for algorithm in args.algorithms
        if algorithm in TASKS[task].get("algorithms", ALGORITHMS + EXTRA_ALGORITHMS)
    ]


def positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: a positive ``kind`` (int or float)."""

    def parse(text: str) -> Any:
        with contextlib.suppress(ValueError):
            if 0 < (value := kind(text)) < float("inf"):
                return value
        raise argparse.ArgumentTypeError(f"expected a positive {'whole number' if kind is int else 'number'}, got {text!r}")

    return parse


def finished_here(runs: Path, jobs: Sequence[Job]) -> set[Job]:
    """The jobs whose result is a JSON file in the runs folder (from an earlier run, or copied from elsewhere)."""
    finished = set()
    for job in jobs:
        if not (path := job_path(runs, *job[:3])).exists():
            continue
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable result ({error}); delete it to run the job again") from None
        if not isinstance(result, dict) or [result.get(k) for k in ("task", "algorithm", "seed")] != list(job[:3]):
            raise ValueError(f"{path}: not the result of {describe(job)} (its task, algorithm and seed); delete or move it")
        finished.add(job)
    return finished


def describe(job: Job) -> str:
    return f"{job[0]} {job[1]} seed {job[2]}"


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's type and message on one line, at most ``limit`` characters of message."""
    return f"{type(error).__name__}: {' '.join(str(error).split())[:limit]}"


@contextlib.contextmanager
def cluster(scheduler: str | None, workers: int | None) -> Iterator[Any]:
    """A Dask client of ``scheduler``, or of a local cluster on 127.0.0.1 (``workers`` one-thread processes)."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler)
        except (OSError, ValueError, TypeError) as error:
            raise ConnectionError(f"cannot reach the Dask scheduler at {scheduler}: {' '.join(str(error).split())}") from None
        with client:
            yield client
        return
    options = dict(
        threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None, env={"OMP_NUM_THREADS": "1"}
    )
    # the scheduler's HTTP server (no dashboard) on a free loopback port
    local = LocalCluster(
        n_workers=workers or os.cpu_count() or 1, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}, **options
    )
    try:
        with Client(local) as client:
            yield client
    finally:  # a worker slow to exit on a loaded machine times the close out (seen 2026-12-07); results are written
        with contextlib.suppress(TimeoutError):
            local.close()


def grid(args: argparse.Namespace, job: JobFunction | None = None) -> int:
    """Run the grid's jobs that have no result in ``--runs`` on the cluster, writing each as it arrives; 1 if one failed."""
    from distributed import as_completed

    jobs = jobs_of(args)
    finished = finished_here(args.runs, jobs)
    todo = [item for item in jobs if item not in finished]
    where = args.scheduler or f"a local cluster of {args.workers or os.cpu_count()} worker processes"
    print(f"{len(jobs)} jobs in this grid, {len(finished)} done already, {len(todo)} to run on {where}", flush=True)
    failed: list[str] = []
    if todo:
        with cluster(args.scheduler, args.workers) as client:
            submit = functools.partial(client.submit, job or train_job, retries=args.retries)
            futures = {submit(*item, key=f"{describe(item)} {uuid.uuid4().hex[:8]}"): item for item in todo}
            for count, future in enumerate(as_completed(futures), 1):
                try:
                    result = future.result()
                except Exception as error:  # raised --retries + 1 times, its workers died, or the scheduler went away
                    failed.append(f"{describe(futures[future])}: {one_line(error)}")
                    print(f"[{count}/{len(todo)}] FAILED {failed[-1]}", flush=True)
                    continue
                future.release()
                path = write_result(args.runs, result)
                final = f"final return {result['curve'][-1][1]:.1f}, " if result.get("curve") else ""
                done = f"{final}{result['train_seconds']:.0f} s training: {path}"
                print(f"[{count}/{len(todo)}] {describe(futures[future])}: {done}", flush=True)
    summary = f"{len(jobs) - len(failed)} of {len(jobs)} jobs done ({len(finished)} before, {len(todo) - len(failed)} now)"
    summary += f", {len(failed)} failed (the same command runs them again):" if failed else ""
    print(summary, *(f"\n  {line}" for line in failed), sep="", flush=True)
    return 1 if failed else 0


# The reports' shared parts (harness.py, validate.py)


def load(runs: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The results in ``runs``, by (task, algorithm), seeds in order."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in sorted(runs.glob("*/*/seed*.json")):
        result = json.loads(path.read_text())
        grouped.setdefault((result["task"], result["algorithm"]), []).append(result)
    for results in grouped.values():
        results.sort(key=lambda r: int(r["seed"]))
    return grouped


def quartiles(values: Sequence[float]) -> str:
    """``median [first quartile, third quartile]``, one decimal."""
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return f"{median:.1f} [{q1:.1f}, {q3:.1f}]"


def figure(rows: int, columns: int, width: float) -> tuple[Any, Any]:
    """A matplotlib figure (Agg) of ``rows`` x ``columns`` panels, 3.2 high each, and its axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, columns, figsize=(width, 3.2 * rows), squeeze=False)


def plot_band(axis: Any, x: Sequence[float], curves: Any, label: str, thin: bool = False) -> None:
    """The median of ``curves`` over ``x`` and its IQR band (``thin``: the band in the line's colour, each curve thin)."""
    q1, median, q3 = np.percentile(curves, [25, 50, 75], axis=0)
    (line,) = axis.plot(x, median, label=label)
    axis.fill_between(x, q1, q3, alpha=0.2, **({"color": line.get_color()} if thin else {}))
    for curve in curves if thin else []:
        axis.plot(x, curve, color=line.get_color(), alpha=0.15, linewidth=0.7)


def label(axis: Any, title: str, xlabel: str, ylabel: str) -> None:
    """A panel's title, axis labels and legend."""
    axis.set_title(title, fontsize=9)
    axis.set_xlabel(xlabel, fontsize=8)
    axis.set_ylabel(ylabel, fontsize=8)
    axis.legend(fontsize=7)


def write_report(output: Path, text: str, plot: Any = None, dpi: int = 100) -> None:
    """Write ``text`` to ``output`` (and ``plot``, a figure, as the .png beside it); print it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    if plot is not None:
        plot.tight_layout()
        plot.savefig(output.with_suffix(".png"), dpi=dpi)
    output.write_text(text)
    print(text, end="")


def difference_interval(ours: PerSeed, theirs: PerSeed, statistic: Callable[[Any], Any]) -> str:
    """The 95% bootstrap interval of ``statistic(ours) - statistic(theirs)``, each side's seeds resampled (10,000 draws)."""
    rng = np.random.default_rng(0)
    draws = [np.asarray(values)[rng.integers(0, len(values), (10_000, len(values)))] for values in (ours, theirs)]
    low, high = np.percentile(statistic(draws[0]) - statistic(draws[1]), [2.5, 97.5])
    return f"[{low:.1f}, {high:.1f}]"


#: the grid's names of DeepSARSA's defaults (0.3.0: "expected" over the target network) and of those before (the lecture's)
DEFAULTS = {"sarsa-expected-targetpick": "the default", "sarsa-sampled": "the default before 0.3.0"}


def drop_in(grouped: dict[tuple[str, str], list[dict[str, Any]]]) -> list[str]:
    """Issue #31's check: the defaults (:data:`DEFAULTS`) against DQN where rl-zoo has an entry, by final return."""
    median, iqr = (lambda x: np.median(x, axis=-1)), (lambda x: np.subtract(*np.percentile(x, [75, 25], axis=-1)))
    tables: list[str] = []
    for algorithm, name in DEFAULTS.items():
        lines = ["", f"Drop-in (#31, docs/diagnosis.md): {name}, `{algorithm}`, against DQN, rl-zoo's entry unchanged. "]
        lines[-1] += "In brackets after each bar: the 95% bootstrap interval of the difference (DeepSARSA's - DQN's).\n"
        lines += ["| task | seeds | DQN: final | DeepSARSA: final | median ≥ DQN's | IQR no wider | commits; CPU |"]
        lines += ["|---|---:|---:|---:|---|---|---|"]
        for task in (t for t in RL_ZOO_DQN if (t, "dqn") in grouped and (t, algorithm) in grouped):
            runs = grouped[task, "dqn"] + grouped[task, algorithm]
            dqn, ours = ([r["curve"][-1][1] for r in grouped[task, a]] for a in ("dqn", algorithm))
            bars = ((median(ours) >= median(dqn), median), (iqr(ours) <= iqr(dqn), iqr))
            interval = functools.partial(difference_interval, ours, dqn)
            verdict = " | ".join(f"{'yes' if met else 'no'} ({f(ours):.1f} vs {f(dqn):.1f}; {interval(f)})" for met, f in bars)
            made = "; ".join(", ".join(sorted({str(r.get(key, "not recorded")) for r in runs})) for key in ("commit", "cpu"))
            lines.append(f"| {task} | {len(dqn)}/{len(ours)} | {quartiles(dqn)} | {quartiles(ours)} | {verdict} | {made} |")
            if task == "CartPole-v1":  # and its goal: 9 of 10 seeds at 475 or more at the end
                count = [f"{sum(v >= 475 for v in values)}/{len(values)}" for values in (ours, dqn)]
                lines.insert(2, f"CartPole-v1, seeds ≥ 475 at the last evaluation: DeepSARSA {count[0]}, DQN {count[1]}.\n")
        tables += lines if len(lines) > 4 else []
    return tables


def report(args: argparse.Namespace) -> None:
    """The grid's table (median and IQR of the final return and the area, per task and algorithm) and its curves."""
    grouped = load(args.runs)
    tasks = [task for task in TASKS if any(key[0] == task for key in grouped)]
    algorithms = [a for a in ALGORITHMS + EXTRA_ALGORITHMS if any(key[1] == a for key in grouped)]
    lines = [
        "| task | algorithm | seeds | final return: median [IQR] | area under curve: median [IQR] "
        "| train wall-clock (s) | steps/s | reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for task, algorithm in itertools.product(tasks, algorithms):
        if runs := grouped.get((task, algorithm)):
            finals, areas = [r["curve"][-1][1] for r in runs], [float(np.mean([p[1] for p in r["curve"]])) for r in runs]
            seconds, rates = np.median([r["train_seconds"] for r in runs]), np.median([r["steps_per_second"] for r in runs])
            cells = f"| {task} | {algorithm} | {len(runs)} | {quartiles(finals)} | {quartiles(areas)} | {seconds:.0f}"
            lines.append(f"{cells} | {rates:.0f} | {TASKS[task]['reference']} |")
    # One row of panels per task, one panel per DeepSARSA variant, DQN beside it in each
    variants = [a for a in algorithms if a != "dqn"]
    plot, axes = figure(max(len(tasks), 1), max(len(variants), 1), 4 * max(len(variants), 1))
    for (row, task), (column, variant) in itertools.product(enumerate(tasks), enumerate(variants)):
        if (task, variant) not in grouped:
            axes[row][column].axis("off")  # this variant did not run on this task
            continue
        for algorithm in (a for a in ("dqn", variant) if (task, a) in grouped):
            runs = grouped[task, algorithm]
            steps = [point[0] for point in runs[0]["curve"]]
            curves = np.array([[point[1] for point in r["curve"]] for r in runs if len(r["curve"]) == len(steps)])
            plot_band(axes[row][column], steps, curves, f"{algorithm} (median, {len(curves)} seeds)")
        label(axes[row][column], f"{task}: {variant}", "env steps", "mean return, IQR band")
    lecture, other = [t for t in tasks if t in LECTURE_TASKS], [t for t in tasks if t not in LECTURE_TASKS]
    text = [
        "# Learning quality: DeepSARSA vs SB3 DQN",
        "",
        "rl-zoo's DQN hyperparameters for both (unchanged), rl-zoo's budgets; deterministic evaluation "
        "with `evaluate_policy` on a separate env; median and interquartile range over seeds. "
        "Final = the last evaluation; area under curve = the mean of all evaluations.",
        "",
        *lines,
        *drop_in(grouped),
        "",
        f"![learning curves]({args.output.with_suffix('.png').name})",
        "",
        f"Machine: {next(iter(grouped.values()))[0]['machine'] if grouped else ''}.",
        "",
        f"Reproduce: `python benchmarks/harness.py grid --tasks {' '.join(other)} --seeds 10 --workers 2` (5: 5-seed rows), "
        f"`python benchmarks/harness.py grid --tasks {' '.join(lecture)} --seeds 1` (20 minutes a run), "
        "then `python benchmarks/harness.py report`.",
    ]
    write_report(args.output, "\n".join(text) + "\n", plot)


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """``--workers`` (a local cluster) or ``--scheduler`` (a running one)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive(int), help="worker processes of the local cluster (default: one per core)")
    where.add_argument("--scheduler", help="the address of a running Dask scheduler, e.g. tcp://HOST:8786, instead")


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace, command: Callable[[], int | None]) -> int:
    """Run ``command``: a ValueError exits with status 2, a ConnectionError 1, both with a one-line message; Ctrl-C 130."""
    try:
        return command() or 0
    except (ValueError, ConnectionError) as error:
        parser.exit(2 if isinstance(error, ValueError) else 1, f"{parser.prog} {args.command}: error: {error}\n")
    except KeyboardInterrupt:
        return 130


def fell_after_reaching(curve: Sequence[float], bar: float) -> bool:
    """Whether ``curve`` reached ``bar`` and was below it at a later evaluation."""
    first = next((i for i, value in enumerate(curve) if value >= bar), None)
    return first is not None and min(curve[first:]) < bar


def curves(args: argparse.Namespace) -> None:
    """Per seed, each algorithm's curve on ``args.task``, and how steady its end is (docs/diagnosis.md)."""
    grouped, last, bar, rng = load(args.runs), args.last, args.bar, np.random.default_rng(0)  # rng: the bootstrap's
    rows = [
        f"# Per-seed curves on {args.task}\n",
        f"Evaluations of the greedy policy (mean of 20 episodes) at each step; *end*: the last {last}.\n",
        f"| algorithm | seeds | final: median [IQR] | seeds ≥ {bar:g} at the end | end evaluations ≥ {bar:g} "
        f"| mean at the end [95% bootstrap over seeds] | minus DQN's [95% bootstrap] | seeds that reached {bar:g} and fell "
        "below later |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    shown = [a for a in ALGORITHMS + EXTRA_ALGORITHMS if (args.task, a) in grouped and a in args.algorithms]
    dqn = np.array([np.mean([p[1] for p in r["curve"][-last:]]) for r in grouped.get((args.task, "dqn"), [])])
    for algorithm in shown:
        values = [[point[1] for point in result["curve"]] for result in grouped[args.task, algorithm]]
        finals, ends = [curve[-1] for curve in values], np.array([curve[-last:] for curve in values])
        fell, means = sum(fell_after_reaching(curve, bar) for curve in values), ends.mean(axis=1)
        low, high = np.percentile(rng.choice(means, (10_000, len(means))).mean(axis=1), [2.5, 97.5])  # seeds resampled
        shift = difference_interval(means, dqn, lambda x: x.mean(axis=-1)) if dqn.size and algorithm != "dqn" else ""
        rows.append(
            f"| {algorithm} | {len(values)} | {quartiles(finals)} | {sum(v >= bar for v in finals)}/{len(values)} | "
            f"{(ends >= bar).sum()}/{ends.size} | {means.mean():.0f} [{low:.0f}, {high:.0f}] | "
            f"{f'{means.mean() - dqn.mean():.0f} {shift}' if shift else '—'} | {fell}/{len(values)} |"
        )
    for algorithm in shown:
        results = grouped[args.task, algorithm]
        steps = [f"{point[0] // 1000}k" for point in results[0]["curve"]]
        rows += [f"\n{algorithm}:\n", f"| seed | {' | '.join(steps)} |", "|---" * (len(steps) + 1) + "|"]
        rows += [f"| {r['seed']} | {' | '.join(f'{point[1]:.0f}' for point in r['curve'])} |" for r in results]
    command = f"python benchmarks/harness.py curves --task {args.task} --algorithms {' '.join(args.algorithms)}"
    command += "" if args.runs == RUNS else f" --runs {args.runs} --output {args.output}"  # another grid's runs
    write_report(args.output, "\n".join(rows) + f"\n\nReproduce: `{command}` (the runs: `harness.py grid`).\n")


def main(argv: Sequence[str] | None = None, job: JobFunction | None = None) -> int:
    """The command line (``job``: the grid's job function, :func:`train_job` by default)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    grid_parser = commands.add_parser("grid", help="run the grid's jobs that have no result yet, on a Dask cluster")
    grid_parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    grid_parser.add_argument("--algorithms", nargs="+", default=ALGORITHMS, choices=ALGORITHMS + EXTRA_ALGORITHMS)
    grid_parser.add_argument("--seeds", type=positive(int), default=5)
    grid_parser.add_argument("--episodes", type=positive(int), default=20, help="evaluation episodes")
    add_cluster_options(grid_parser)
    grid_parser.add_argument("--retries", type=int, default=1, help="runs again of a job that raised (default 1)")
    report_parser = commands.add_parser("report", help="aggregate the results into a table and plots")
    report_parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "learning.md")
    curves_parser = commands.add_parser("curves", help="per-seed curves of one task, and how steady each end is")
    curves_parser.add_argument("--task", default="CartPole-v1", choices=list(TASKS))
    curves_parser.add_argument("--algorithms", nargs="+", default=ALGORITHMS, choices=ALGORITHMS + EXTRA_ALGORITHMS)
    curves_parser.add_argument("--last", type=positive(int), default=5, help="evaluations that make the end")
    curves_parser.add_argument("--bar", type=float, default=475.0, help="the return that counts as solved")
    curves_parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "diagnosis.md")
    for command in (grid_parser, report_parser, curves_parser):
        command.add_argument("--runs", type=Path, default=RUNS)
    args = parser.parse_args(argv)
    commands_of = {"grid": lambda: grid(args, job), "report": lambda: report(args), "curves": lambda: curves(args)}
    return run_command(parser, args, commands_of[args.command])


if __name__ == "__main__":
    import harness  # the jobs' functions by their module's name, which the workers import

    sys.exit(harness.main())
