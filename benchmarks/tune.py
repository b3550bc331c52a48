"""
Tune DeepSARSA for every seed: an Optuna study whose objective is the worst of several training seeds.

Each trial samples DeepSARSA's hyperparameters with the zoo's sampler
(:func:`deep_sarsa.zoo.sampler.sample_deep_sarsa_params`: DQN's rl-zoo3 search space plus ``next_action``
and ``loss``, on top of the task's entry in the benchmark harness), trains them on ``--seeds`` K tuning
seeds (``1000 .. 1000 + K - 1``: never the harness's validation seeds ``0 ..``) at the task's budget of
``harness.TASKS``, and evaluates the deterministic policy as the harness does (every ``eval_freq`` steps,
``--eval-episodes`` episodes on a separate env seeded with ``10000 + seed``). The objective is the **worst
seed's score**, a seed's score being the mean of the last 20% of its evaluations (at least one), or with
``--objective area`` its area under the curve (the mean of all its evaluations: for a task every trial solves
in the end, it ranks how fast and how steadily): a preset is only as good as its unluckiest seed. Each trial
records, as user attributes, every seed's score (``seed_scores``), its area under the curve (``seed_areas``),
its curves and the worker (``host:pid``) that ran it. Once a study has 5 finished trials, a trial whose worst seed so
far is below the median of the other trials' at the same point is pruned (``--no-prune`` turns it off).

The study lives in a database: by default the SQLite file ``benchmarks/studies/TASK.db`` (one machine), or
``--storage postgresql+psycopg://USER:PASSWORD@HOST/DB`` (several machines). Any number of processes may run
the same ``study`` command on one storage: they share the study, and each stops once the study has
``--trials`` finished (complete or pruned) trials, or with ``--minutes M`` after the first trial it ends past
M minutes, so running the command again resumes or, with a larger ``--trials``, extends it. A worker that
dies leaves its trial RUNNING; its heartbeat stops, and the next trial any worker starts marks it FAIL once it
has been silent for twice ``--heartbeat`` seconds (Ctrl-C or SIGTERM marks it FAIL at once).

    python benchmarks/tune.py study --task CartPole-v1 --trials 100              # on each core: the same command
    python benchmarks/tune.py show --task CartPole-v1                            # best trials, per-seed scores
    python benchmarks/tune.py export --task CartPole-v1                          # benchmarks/results/tuning_TASK.md
    python benchmarks/tune.py preset --task CartPole-v1                          # the best trial as a yml entry
"""

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch as th
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from deep_sarsa import DeepSARSA
from deep_sarsa.presets import NEXT_ACTIONS, preset
from deep_sarsa.zoo.sampler import NET_ARCHS, experiment_settings, sample_deep_sarsa_params

sys.path.insert(0, str(Path(__file__).parent))
from harness import LECTURE_TASKS, TASKS, Evaluate, _positive, hyperparameters_of, make_env

STUDIES = Path(__file__).parent / "studies"
RESULTS = Path(__file__).parent / "results"
#: the tasks a study can tune (the lecture's settings are fixed: not tuned)
TUNABLE_TASKS = [task for task in TASKS if task not in LECTURE_TASKS]
#: tuning seeds are TUNING_SEED_BASE + 0, 1, ...: the harness's grid (the validation) uses seeds 0, 1, ...
TUNING_SEED_BASE = 1000
#: a seed's score: the mean of this last fraction of its evaluations
LAST_FRACTION = 0.2
OBJECTIVE = "worst seed's mean of its last 20% of evaluations"
#: ``--objective``: what a seed's score is (the study keeps the description, so a study is not resumed with another)
OBJECTIVES = {
    "last-20%": OBJECTIVE,
    # for a task that every reasonable trial solves by the end (Taxi: the optimum 7.93 within the evaluation's
    # noise), the area tells the fast and steady trials from the ones that get there late or dip on the way
    "area": "worst seed's area under the curve (the mean of all its evaluations)",
}
#: trials finished before pruning starts
PRUNE_STARTUP_TRIALS = 5
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: ``--next-action``'s value in a study's settings where its trials sample the variant (every study before the option)
ANY_NEXT_ACTION = "any"


def last_fraction_mean(curve: Sequence[Sequence[float]], fraction: float = LAST_FRACTION) -> float:
    """
    A seed's score: the mean return of the last ``fraction`` of its evaluations (at least one).

    :param curve: the evaluations, ``(step, mean return, std)`` each, in order
    :param fraction: the fraction of the evaluations, from the end
    :return: the mean of their mean returns
    """
    if not curve:
        raise ValueError("curve must hold at least one evaluation (the budget is shorter than eval_freq?)")
    count = max(1, math.ceil(len(curve) * fraction - 1e-9))
    return float(np.mean([point[1] for point in curve[-count:]]))


def area_under_curve(curve: Sequence[Sequence[float]]) -> float:
    """
    :param curve: the evaluations, ``(step, mean return, std)`` each
    :return: the mean of all its mean returns (the harness's "area under curve")
    """
    return float(np.mean([point[1] for point in curve]))


def seed_score(curve: Sequence[Sequence[float]], objective: str = OBJECTIVE) -> float:
    """
    :param curve: one seed's evaluations
    :param objective: one of the descriptions of :data:`OBJECTIVES`
    :return: the seed's score: :func:`last_fraction_mean`, or :func:`area_under_curve` for ``"area"``
    """
    if objective == OBJECTIVES["area"]:
        return area_under_curve(curve)
    if objective == OBJECTIVE:
        return last_fraction_mean(curve)
    raise ValueError(f"objective: {objective!r} is none of {list(OBJECTIVES.values())}")


def objective_of(curves: Sequence[Sequence[Sequence[float]]], objective: str = OBJECTIVE) -> float:
    """
    The study's objective: the worst seed's score (:func:`seed_score`).

    :param curves: one curve per seed
    :param objective: one of the descriptions of :data:`OBJECTIVES`
    :return: the lowest score
    """
    return min(seed_score(curve, objective) for curve in curves)


def tuning_seeds(count: int) -> list[int]:
    """
    :param count: how many seeds
    :return: the tuning seeds, ``TUNING_SEED_BASE + 0 .. count - 1``
    """
    return [TUNING_SEED_BASE + i for i in range(count)]


def train_seed(
    task: str, hyperparameters: dict[str, Any], seed: int, steps: int, eval_freq: int, episodes: int
) -> list[tuple[int, float, float]]:
    """
    Train DeepSARSA with ``hyperparameters`` on one seed, evaluating it as the harness does.

    :param task: a harness task
    :param hyperparameters: DeepSARSA's keywords (``next_action`` and ``loss`` included)
    :param seed: the training seed (the evaluation env's is ``10000 + seed``)
    :param steps: the budget in env steps
    :param eval_freq: steps between evaluations
    :param episodes: evaluation episodes
    :return: the curve: ``(step, mean return, std)`` per evaluation
    """
    th.set_num_threads(1)
    model = DeepSARSA("MlpPolicy", make_env(task), seed=seed, device="cpu", **hyperparameters)
    evaluate = Evaluate(task, eval_freq, episodes, seed=10_000 + seed)
    model.learn(steps, callback=evaluate)
    return evaluate.curve


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The study's settings (its budget and evaluation), stored as the study's user attributes."""
    task = TASKS[args.task]
    settings = {
        "task": args.task,
        "steps": int(args.steps or task["steps"]),
        "eval_freq": int(args.eval_freq or task["eval_freq"]),
        "episodes": int(args.eval_episodes),
        "seeds": tuning_seeds(args.seeds),
        "objective": OBJECTIVES[getattr(args, "objective", "last-20%")],
        "space": str(getattr(args, "space", "zoo")),
        "next_action": str(getattr(args, "next_action", None) or ANY_NEXT_ACTION),
    }
    if settings["next_action"] != ANY_NEXT_ACTION and settings["space"] != "near-preset":
        raise ValueError("--next-action needs --space near-preset (rl-zoo3's space samples next_action itself)")
    if settings["eval_freq"] > settings["steps"]:
        raise ValueError(f"--eval-freq ({settings['eval_freq']}) must be at most the budget --steps ({settings['steps']})")
    return settings


def variant_of(settings: dict[str, Any]) -> str | None:
    """
    :param settings: a study's settings (:func:`settings_of`, or a study's user attributes)
    :return: the ``next_action`` the study fixes (``--next-action``), or None where its trials sample it
    """
    variant = settings.get("next_action", ANY_NEXT_ACTION)
    return None if variant == ANY_NEXT_ACTION else str(variant)


def make_objective(settings: dict[str, Any], prune: bool) -> Any:
    """
    :param settings: the study's settings (:func:`settings_of`)
    :param prune: whether a hopeless trial stops after the seed that shows it
    :return: the objective function of one trial
    """
    task, steps = settings["task"], settings["steps"]
    base = hyperparameters_of(task)
    env = make_env(task)
    n_actions = int(getattr(env.action_space, "n", 0))
    env.close()
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial) -> float:
        if settings.get("space", "zoo") == "near-preset":
            sampled = sample_near_preset(trial, task, variant_of(settings))
        else:
            with experiment_settings(base, steps):
                sampled = sample_deep_sarsa_params(trial, n_actions, 1, {})
        hyperparameters = {**base, **sampled}
        trial.set_user_attr("worker", worker)
        scores: list[float] = []
        areas: list[float] = []
        curves: list[list[tuple[int, float, float]]] = []
        for index, seed in enumerate(settings["seeds"]):
            with interrupts.at_once():
                curve = train_seed(task, hyperparameters, seed, steps, settings["eval_freq"], settings["episodes"])
            curves.append([(int(s), float(m), float(d)) for s, m, d in curve])
            scores.append(seed_score(curve, settings["objective"]))
            areas.append(area_under_curve(curve))
            trial.report(min(scores), index)
            if prune and index + 1 < len(settings["seeds"]) and trial.should_prune():
                record(trial, scores, areas, curves)
                raise optuna.TrialPruned(f"worst seed so far {min(scores):.1f} after {index + 1} seeds")
        record(trial, scores, areas, curves)
        return min(scores)

    return objective


#: ``--space near-preset``: the values each keyword may take around CartPole's preset (``sample_near_preset``)
NEAR_PRESET: dict[str, Any] = {
    "next_action": ["sampled", "expected", "stored"],
    "learning_rate": (2e-4, 4e-3),  # log-uniform
    "batch_size": [64, 128, 256],
    "train_freq": [4, 16, 64, 256],
    "gradient_ratio": [0.25, 0.5, 1.0],  # gradient_steps = train_freq * gradient_ratio (at least 1)
    "target_update_interval": (10, 5000),  # log-uniform integers
    "gamma": [0.98, 0.99, 0.995],
    "exploration_fraction": (0.05, 0.3),
    "exploration_final_eps": (0.0, 0.06),
    "net_arch": ["small", "medium"],
}

#: Per task, the ranges of ``--space near-preset`` that differ from :data:`NEAR_PRESET`'s, centred on the task's
#: preset (rl-zoo's DQN entry): each keyword within a few times the entry's value, the entry itself a point of it.
#: CartPole's space is :data:`NEAR_PRESET` (its study's trials were sampled from it).
NEAR_PRESET_OF: dict[str, dict[str, Any]] = {
    # rl-zoo: lr 6.3e-4, batch 128, train_freq 4 with gradient_steps -1 (one per step), target every 250, gamma
    # 0.99, exploration over 12% down to 0.1, [256, 256]
    "Acrobot-v1": {
        "learning_rate": (1e-4, 3e-3),
        "train_freq": [1, 4, 16],
        "gradient_ratio": [0.5, 1.0],
        "target_update_interval": (50, 2000),
        "exploration_final_eps": (0.01, 0.15),
        "net_arch": ["small", "medium"],
    },
    "LunarLander-v3": {
        "learning_rate": (1e-4, 3e-3),
        "train_freq": [1, 4, 16],
        "gradient_ratio": [0.5, 1.0],
        "target_update_interval": (50, 2000),
        "gamma": [0.98, 0.99, 0.995, 0.999],
        "exploration_final_eps": (0.01, 0.15),
        "net_arch": ["medium", "big"],
        "buffer_size": [10_000, 50_000, 100_000],  # --next-action stored only (sample_near_preset)
    },
    # rl-zoo: lr 4e-3, batch 128, train_freq 16 with 8 gradient steps, target every 600, gamma 0.98, exploration
    # over 20% down to 0.07, [256, 256]
    "MountainCar-v0": {
        "learning_rate": (1e-3, 1e-2),
        "train_freq": [4, 16, 64],
        "target_update_interval": (100, 3000),
        "gamma": [0.98, 0.99],
        "exploration_fraction": (0.1, 0.4),
        "exploration_final_eps": (0.02, 0.15),
    },
    # around the hand-set entry (harness.HAND_SET, the first preset; one-hot states, masks): a Q-table (no hidden
    # layer), lr 1e-2, batch 128, one gradient step per env step, target every 500, gamma 0.99, exploration over 50%
    # down to 0.05. Tune it with --objective area: every trial near it ends at the optimum (7.93, within the
    # evaluation's noise); its curves reach it at 24k steps on 10 validation seeds of 10, then dip at 30k on 7. The
    # tuned preset (trial 6 of the area study, [64, 64]) is a point of this space too
    "Taxi-v4": {
        "learning_rate": (2e-3, 5e-2),
        "train_freq": [1, 2, 4],
        "gradient_ratio": [0.5, 1.0],
        "target_update_interval": (50, 3000),
        "exploration_fraction": (0.1, 0.6),
        "exploration_final_eps": (0.0, 0.1),
        "net_arch": ["table", "small"],
    },
    # around the hand-set entry (harness.HAND_SET, the preset): a Q-table, lr 5e-2, batch 64, one gradient step per
    # env step, target every 500, exploration from 1.0 over 50% down to 0.1. No study without --next-action: the
    # evaluation is greedy, so a sweep would trade the safe path (-15) for the cliff's edge (-13), docs/cliff_walking.md
    "CliffWalking-v1": {
        "learning_rate": (1e-2, 2e-1),
        "train_freq": [1, 2, 4],
        "gradient_ratio": [0.5, 1.0],
        "target_update_interval": (50, 3000),
        "exploration_fraction": (0.2, 0.8),
        "exploration_final_eps": (0.02, 0.2),
        "net_arch": ["table", "small"],
        "buffer_size": [2_000, 10_000, 50_000],  # --next-action stored only (sample_near_preset)
    },
}


#: the networks a near-preset space may name: the zoo sampler's, and a Q-table (one linear layer on one-hot states)
ARCHS: dict[str, list[int]] = {**NET_ARCHS, "table": []}


def near_preset_space(task: str) -> dict[str, Any]:
    """
    :param task: the study's task
    :return: its ``--space near-preset``: :data:`NEAR_PRESET` with the task's ranges of :data:`NEAR_PRESET_OF`
    """
    return {**NEAR_PRESET, **NEAR_PRESET_OF.get(task, {})}


def sample_near_preset(
    trial: optuna.trial.BaseTrial, task: str = "CartPole-v1", next_action: str | None = None
) -> dict[str, Any]:
    """
    ``--space near-preset``: DeepSARSA keywords from a space narrowed around the task's preset (rl-zoo's DQN
    entry), with the MSE loss. rl-zoo3's DQN space (``--space zoo``) gave most CartPole trials a greedy policy
    stuck on one action (the first study: 4 of 5 trials at 9.3, with learning rates below 1e-4, the Huber loss or
    gamma near 1), so this space keeps each keyword within a factor of a few of the entry's value.

    :param trial: the Optuna trial
    :param task: the study's task (its space: :func:`near_preset_space`)
    :param next_action: the variant a study fixes (``--next-action``: the only choice of ``next_action``), or None
    :return: the keywords
    """
    space = near_preset_space(task)
    if next_action is not None:
        if next_action not in space["next_action"]:
            raise ValueError(f"--next-action must be one of {space['next_action']}, got {next_action!r}")
        space["next_action"] = [next_action]
    train_freq = trial.suggest_categorical("train_freq", space["train_freq"])
    ratio = trial.suggest_categorical("gradient_ratio", space["gradient_ratio"])
    keywords = {
        "next_action": trial.suggest_categorical("next_action", space["next_action"]),
        "loss": "mse",
        "learning_rate": trial.suggest_float("learning_rate", *space["learning_rate"], log=True),
        "batch_size": trial.suggest_categorical("batch_size", space["batch_size"]),
        "train_freq": train_freq,
        "gradient_steps": max(1, int(train_freq * ratio)),
        "target_update_interval": trial.suggest_int("target_update_interval", *space["target_update_interval"], log=True),
        "gamma": trial.suggest_categorical("gamma", space["gamma"]),
        "exploration_fraction": trial.suggest_float("exploration_fraction", *space["exploration_fraction"]),
        "exploration_final_eps": trial.suggest_float("exploration_final_eps", *space["exploration_final_eps"]),
        "policy_kwargs": {"net_arch": ARCHS[trial.suggest_categorical("net_arch", space["net_arch"])]},
    }
    if next_action == "stored" and "buffer_size" in space:
        # "stored" bootstraps on the action the policy took when the transition was collected, so the memory's age
        # (how far its policies lag the current one) is part of the target: a study of the variant samples it
        keywords["buffer_size"] = trial.suggest_categorical("buffer_size", space["buffer_size"])
    return keywords


def near_preset_params(task: str, next_action: str | None = None) -> dict[str, Any]:
    """
    The task's preset as parameters of ``--space near-preset`` (the study's first trial). ``gradient_steps=-1``
    (as many gradient steps as env steps; the tuning env is a single one) is the ratio 1.

    :param task: a task with a preset
    :param next_action: the variant a study fixes (``--next-action``): the preset with its ``next_action`` replaced
    :return: the parameters
    :raise ValueError: where the preset is not a point of the task's space
    """
    keywords = preset(task).hyperparameters
    space = near_preset_space(task)
    arch = keywords.get("policy_kwargs", {}).get("net_arch", [64, 64])
    train_freq = int(keywords.get("train_freq", 4))
    if keywords.get("gradient_steps", 1) == -1:
        keywords["gradient_steps"] = train_freq
    params = {
        "next_action": keywords.get("next_action", "sampled"),
        "learning_rate": float(keywords.get("learning_rate", 1e-3)),
        "batch_size": int(keywords.get("batch_size", 64)),
        "train_freq": train_freq,
        "gradient_ratio": float(keywords.get("gradient_steps", 1)) / float(train_freq),
        "target_update_interval": int(keywords.get("target_update_interval", 10)),
        "gamma": float(keywords.get("gamma", 0.99)),
        "exploration_fraction": float(keywords.get("exploration_fraction", 0.1)),
        "exploration_final_eps": float(keywords.get("exploration_final_eps", 0.05)),
        "net_arch": next((name for name, value in ARCHS.items() if value == list(arch)), "medium"),
    }
    if next_action is not None:
        keywords["next_action"] = params["next_action"] = next_action
    if next_action == "stored" and "buffer_size" in space:
        params["buffer_size"] = int(keywords.get("buffer_size", 1_000_000))
    outside = {
        key: params[key]
        for key in ("learning_rate", "target_update_interval", "exploration_fraction", "exploration_final_eps")
        if not space[key][0] <= params[key] <= space[key][1]
    }
    try:
        keywords_back = sample_near_preset(optuna.trial.FixedTrial(params), task, next_action)
    except ValueError as error:  # a value that is not one of a categorical's choices
        raise ValueError(f"--space near-preset: the preset of {task} is outside the space ({error})") from None
    outside |= {key: keywords[key] for key, value in keywords_back.items() if key in keywords and keywords[key] != value}
    if outside:
        raise ValueError(
            f"--space near-preset: the preset of {task} is outside the space (its {outside}): add the task's ranges "
            "to tune.NEAR_PRESET_OF"
        )
    return params


def record(trial: optuna.Trial, scores: list[float], areas: list[float], curves: list[Any]) -> None:
    """Keep a trial's per-seed scores, areas under the curve and curves as its user attributes."""
    trial.set_user_attr("seed_scores", scores)
    trial.set_user_attr("seed_areas", areas)
    trial.set_user_attr("curves", curves)


def storage_url(args: argparse.Namespace) -> str:
    """``--storage``, or the SQLite file ``benchmarks/studies/TASK.db``."""
    if args.storage:
        return str(args.storage)
    return f"sqlite:///{STUDIES / (args.task + '.db')}"


def shown(url: str) -> str:
    """``url`` with its password hidden (``***``), to print."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def open_storage(url: str, heartbeat: int | None = None, must_exist: bool = False) -> optuna.storages.RDBStorage:
    """
    The study storage of ``--storage`` (with a heartbeat, for the workers).

    :param url: a database URL
    :param heartbeat: seconds between a running trial's heartbeats (None: none, for reading)
    :param must_exist: refuse a SQLite file that does not exist (instead of creating it)
    :return: the storage
    """
    if url.endswith(".log"):
        raise ValueError(f"--storage: journal files have no heartbeat for dead workers; use sqlite:///FILE.db, got {url!r}")
    if url.startswith("postgresql://"):
        raise ValueError("--storage: write postgresql+psycopg://... (psycopg 3); plain postgresql:// needs psycopg2")
    if "://" not in url:
        raise ValueError(f"--storage must be a database URL (sqlite:///FILE.db or postgresql+psycopg://...), got {url!r}")
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if must_exist and not path.exists():
            raise ValueError(f"--storage: no study file {path} (run `tune.py study` first)")
        path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if heartbeat is not None:
        kwargs = dict(heartbeat_interval=heartbeat, grace_period=2 * heartbeat)
    for attempt in range(10):  # workers started together on a fresh database race to create Optuna's tables
        try:
            with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **kwargs)
        except ImportError as error:
            raise ValueError(f"--storage {shown(url)!r}: the database driver is missing: {error}") from error
        except SQLAlchemyError:
            if attempt == 9:
                raise
            time.sleep(0.2 + 0.3 * attempt)
    raise AssertionError("unreachable")


def study_name(args: argparse.Namespace) -> str:
    """
    ``--study-name``, or ``TASK-worst-of-K``, then ``-SPACE`` unless it is zoo, then ``-area`` for that objective, then
    ``-VARIANT`` for ``--next-action``.
    """
    space, objective = getattr(args, "space", "zoo"), getattr(args, "objective", "last-20%")
    name = f"{args.task}-worst-of-{args.seeds}" + ("" if space == "zoo" else f"-{space}")
    name += "" if objective == "last-20%" else f"-{objective}"
    next_action = getattr(args, "next_action", None)
    return str(args.study_name or name + ("" if next_action is None else f"-{next_action}"))


def load(args: argparse.Namespace) -> optuna.Study:
    """The existing study of ``--task``/``--storage``/``--study-name``, for reading."""
    storage = open_storage(storage_url(args), must_exist=True)
    name = study_name(args)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
        raise ValueError(f"--study-name: no study {name!r} in {shown(storage_url(args))} (it has {names})") from None


def create_or_load(storage: optuna.storages.RDBStorage, name: str, settings: dict[str, Any], prune: bool) -> optuna.Study:
    """
    Create the study (its settings as user attributes) unless it exists; an existing one must have the same settings.

    :param storage: the storage
    :param name: the study's name
    :param settings: the study's settings (:func:`settings_of`)
    :param prune: whether to prune hopeless trials
    :return: the study
    """
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP_TRIALS) if prune else optuna.pruners.NopPruner()
    )
    for attempt in range(10):  # workers started together on a fresh file race to create it
        try:
            study = optuna.create_study(
                storage=storage, study_name=name, direction="maximize", load_if_exists=True, pruner=pruner
            )
            if not study.user_attrs:
                for key, value in settings.items():
                    study.set_user_attr(key, value)
            break
        except SQLAlchemyError:
            if attempt == 9:
                raise
            time.sleep(0.2 + 0.3 * attempt)
    options = {"task": "--task", "steps": "--steps", "eval_freq": "--eval-freq", "episodes": "--eval-episodes"}
    options |= {"seeds": "--seeds", "objective": "(the objective)", "space": "--space", "next_action": "--next-action"}
    # a study created before an option existed was run with the option's default
    defaults = {"space": "zoo", "next_action": ANY_NEXT_ACTION}
    for key, option in options.items():
        stored = study.user_attrs.get(key, defaults.get(key) if study.user_attrs else None)
        if stored is not None and stored != settings[key]:
            raise ValueError(
                f"{option}: study {name!r} was run with {key}={stored!r}, not {settings[key]!r}; "
                "give the same settings, or another --study-name"
            )
    return study


def measure_the_preset(study: optuna.Study, first: dict[str, Any]) -> None:
    """
    A near-preset study's baseline: enqueue the preset when no trial has measured it, or is about to (a new study;
    or its first trial failed: a worker killed or stopped while it trained), so that every candidate is compared
    with the preset under the same objective. A sampled trial with the preset's parameters counts (the preset
    became a study's best trial: the study resumed does not train it again).

    :param study: the study (its stale trials already failed)
    :param first: the preset as parameters of the study's space
    """
    alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    trials = study.get_trials(deepcopy=False, states=alive)
    if not any(trial.system_attrs.get("fixed_params", trial.params) == first for trial in trials):
        study.enqueue_trial(first)


class Interrupts:
    """
    Ctrl-C and SIGTERM as KeyboardInterrupt, raised only where no storage call is under way.

    A KeyboardInterrupt raised in the middle of a storage call (a trial's ``suggest_*`` or ``report``, Optuna's
    bookkeeping between trials) can leave SQLite's lock held by a half-closed connection, and the worker then
    fails to mark its trial FAIL ("database is locked", seen in CI). So a signal that comes while a seed trains
    raises at once; any other one is kept and raised at the next safe point: before a seed trains, after a trial
    was told (an Optuna callback), or when the study is done.
    """

    def __init__(self) -> None:
        self.pending = False
        self.raise_now = False

    def handle(self, *_: object) -> None:
        """The signal handler."""
        if self.raise_now:
            self.raise_now = False
            raise KeyboardInterrupt
        self.pending = True

    def check(self, *_: object) -> None:
        """Raise a kept signal (also an Optuna callback: it takes ``study, trial``)."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def at_once(self) -> Iterator[None]:
        """A block (training, no storage call) that a signal interrupts at once."""
        self.check()
        self.raise_now = True
        try:
            yield
        finally:
            self.raise_now = False
        self.check()


interrupts = Interrupts()


def finished(study: optuna.Study) -> int:
    """The study's complete or pruned trials."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_study(args: argparse.Namespace) -> int:
    """Work on the study until it has ``--trials`` finished trials (with any other worker on the storage)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    th.set_num_threads(1)
    # Ctrl-C and SIGTERM: Optuna marks the running trial FAIL and the worker exits 130
    interrupts.pending = interrupts.raise_now = False
    previous = {number: signal.signal(number, interrupts.handle) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _work_on(args)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _work_on(args: argparse.Namespace) -> int:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = settings_of(args)
    storage = open_storage(storage_url(args), heartbeat=args.heartbeat)
    name = study_name(args)
    # near-preset: the preset itself is the study's first trial (checked before the study is created)
    first = near_preset_params(settings["task"], variant_of(settings)) if settings["space"] == "near-preset" else None
    study = create_or_load(storage, name, settings, prune=not args.no_prune)
    with warnings.catch_warnings():  # fail_stale_trials is "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # study.optimize does it again before each trial
    if first is not None:
        measure_the_preset(study, first)
    interrupts.check()
    if finished(study) < args.trials:
        callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [
            optuna.study.MaxTrialsCallback(args.trials, states=FINISHED),
            _log,
            interrupts.check,
        ]
        if args.minutes is not None:
            callbacks.append(Deadline(args.minutes))
        failures = FailuresInARow()
        callbacks.append(failures)
        study.optimize(
            make_objective(settings, prune=not args.no_prune),
            callbacks=callbacks,
            catch=(ValueError,),  # a trial that fails on its values (it should not) leaves the study going
            gc_after_trial=True,
        )
        if failures.stopped:
            return 1
    interrupts.check()
    states = [trial.state for trial in study.get_trials(deepcopy=False)]
    print(
        f"study {name!r}: {states.count(TrialState.COMPLETE)} complete, {states.count(TrialState.PRUNED)} pruned, "
        f"{states.count(TrialState.FAIL)} failed, {states.count(TrialState.RUNNING)} running"
        + (f"; best {study.best_value:.2f} (trial {study.best_trial.number})" if states.count(TrialState.COMPLETE) else ""),
        flush=True,
    )
    return 0


class FailuresInARow:
    """
    An Optuna callback that stops the worker after :attr:`LIMIT` trials in a row failed on an error: a trial that
    fails on its values leaves the study going (``catch``), but one that fails every time (a study resumed with a
    space it was not created with, a broken env) would otherwise fail forever.
    """

    #: failed trials in a row that stop the worker
    LIMIT = 3

    def __init__(self) -> None:
        self.count = 0
        self.stopped = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.count = self.count + 1 if trial.state == TrialState.FAIL else 0
        if self.count >= self.LIMIT:
            print(f"{self.count} trials in a row failed (Optuna logged each error above); this worker stops", flush=True)
            self.stopped = True
            study.stop()


class Deadline:
    """
    ``--minutes``: an Optuna callback that stops the worker after the first trial to end past the deadline (a
    trial is never cut short: a session with a few hours spends them on whole trials, and the next run resumes).

    :param minutes: minutes from now after which the worker starts no new trial
    """

    def __init__(self, minutes: float) -> None:
        self.stop_at = time.monotonic() + 60.0 * minutes

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if time.monotonic() >= self.stop_at:
            print(f"--minutes: past the deadline after trial {trial.number}; this worker starts no new trial", flush=True)
            study.stop()


def _log(study: optuna.Study, trial: FrozenTrial) -> None:
    scores = ", ".join(f"{score:.1f}" for score in trial.user_attrs.get("seed_scores", []))
    value = f"{trial.value:.2f}" if trial.value is not None else "-"
    print(f"trial {trial.number} {trial.state.name.lower()}: {value} (seeds {scores}) {trial.params}", flush=True)


def best_trials(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """The ``top`` complete trials, best first (ties: the larger mean area under the curve)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(complete, key=lambda t: (-(t.value or 0.0), -float(np.mean(t.user_attrs.get("seed_areas", [0.0])))))[:top]


def _budget(study: optuna.Study) -> str:
    attrs = study.user_attrs
    return (
        f"{attrs.get('steps')} steps, an evaluation every {attrs.get('eval_freq')} steps ({attrs.get('episodes')} episodes), "
        f"tuning seeds {attrs.get('seeds')}"
    )


def show(args: argparse.Namespace) -> int:
    """Print the study's best trials: objective, per-seed scores and areas, parameters."""
    study = load(args)
    states = [trial.state for trial in study.get_trials(deepcopy=False)]
    counts = ", ".join(f"{states.count(state)} {state.name.lower()}" for state in TrialState if states.count(state))
    print(f"study {study.study_name!r}: {len(states)} trials ({counts})")
    print(f"objective: {study.user_attrs.get('objective')}; budget: {_budget(study)}")
    for trial in best_trials(study, args.top):
        scores = ", ".join(f"{s:.1f}" for s in trial.user_attrs.get("seed_scores", []))
        areas = ", ".join(f"{s:.1f}" for s in trial.user_attrs.get("seed_areas", []))
        print(f"trial {trial.number}: {trial.value:.2f}  seed scores [{scores}]  areas [{areas}]")
        print(f"  {json.dumps(trial.params, sort_keys=True)}")
    return 0


def _cpu_model() -> str:
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in output.splitlines():
        if line.startswith("Model name:"):
            return " ".join(line.split(":", 1)[1].split())
    return "unknown CPU"


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def export(args: argparse.Namespace) -> int:
    """Write the study as a markdown table (every trial, best first), with the command, the CPU and the date."""
    study = load(args)
    trials = study.get_trials(deepcopy=False)
    keys = sorted({key for trial in trials for key in trial.params})
    ranked = {trial.number: rank for rank, trial in enumerate(best_trials(study, len(trials)))}
    order = sorted(trials, key=lambda t: (ranked.get(t.number, len(trials)), t.number))
    storage = "" if not args.storage else f" --storage '{shown(storage_url(args))}'"
    attrs = study.user_attrs
    budget = f" --steps {attrs.get('steps')} --eval-freq {attrs.get('eval_freq')} --eval-episodes {attrs.get('episodes')}"
    space = attrs.get("space", "zoo")
    objective = next((key for key, text in OBJECTIVES.items() if text == attrs.get("objective")), "last-20%")
    budget += "" if space == "zoo" else f" --space {space}"
    budget += "" if objective == "last-20%" else f" --objective {objective}"
    variant = variant_of(attrs)
    budget += "" if variant is None else f" --next-action {variant}"
    scored = "area under the curve" if objective == "area" else "mean of its last 20% of evaluations"
    lines = [
        f"# Tuning DeepSARSA on {study.user_attrs.get('task')}: study `{study.study_name}`",
        "",
        f"Objective: the {study.user_attrs.get('objective')} (maximized). Budget: {_budget(study)}.",
        f"{len(trials)} trials; best first. Seed scores: each tuning seed's {scored}; area: the mean of all its evaluations.",
        "",
        "| trial | state | objective | seed scores | seed areas | " + " | ".join(keys) + " |",
        "|---:|---|---:|---|---|" + "---|" * len(keys),
    ]
    for trial in order:
        value = f"{trial.value:.2f}" if trial.value is not None else "-"
        scores = ", ".join(f"{s:.1f}" for s in trial.user_attrs.get("seed_scores", []))
        areas = ", ".join(f"{s:.1f}" for s in trial.user_attrs.get("seed_areas", []))
        params = " | ".join(_cell(trial.params.get(key, "")) for key in keys)
        lines.append(f"| {trial.number} | {trial.state.name.lower()} | {value} | {scores} | {areas} | {params} |")
    best = best_trials(study, 1)
    if best:
        lines += [
            "",
            f"Best: trial {best[0].number}, objective {best[0].value:.2f}, `{json.dumps(best[0].params, sort_keys=True)}`.",
        ]
    lines += [
        "",
        f"Reproduce (resume or extend): `python benchmarks/tune.py study --task {study.user_attrs.get('task')}{storage} "
        f"--study-name {study.study_name} --trials {len(trials)} --seeds {len(study.user_attrs.get('seeds', []))}{budget}`; "
        f"this table: `python benchmarks/tune.py export --task {study.user_attrs.get('task')}{storage} "
        f"--study-name {study.study_name}`.",
        "",
        f"Machine: {_cpu_model()}, {os.cpu_count()} cores, torch {th.__version__}. "
        f"Exported {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
    ]
    out = args.out or RESULTS / f"tuning_{args.task}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out} ({len(trials)} trials)")
    return 0


def _yaml_value(key: str, value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"!!float {value!r}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return repr(value)
    if key == "policy_kwargs" and isinstance(value, dict):
        for item in value.values():
            if not isinstance(item, (int, float, str, list, tuple, dict)):
                raise ValueError(f"policy_kwargs holds {item!r}, which the yml's literal dict(...) cannot write")
        return '"dict(' + ", ".join(f"{k}={v!r}" for k, v in value.items()) + ')"'
    raise ValueError(f"{key}={value!r}: no yml form for it")


def preset_entry(study: optuna.Study, next_action: str | None = None) -> str:
    """
    The best trial of ``study`` as an entry of ``deep_sarsa/hyperparams/deep_sarsa.yml`` (or, for a variant, of
    ``deep_sarsa_VARIANT.yml``), with a note on how it was found.

    :param study: a study of this script
    :param next_action: only the trials of this variant (a study of ``--next-action`` has no other), or None: all
    :return: the entry's text
    """
    ranked = best_trials(study, len(study.trials))
    best = [trial for trial in ranked if next_action is None or trial.params.get("next_action") == next_action]
    if not best:
        variant = "" if next_action is None else f" with next_action {next_action!r}"
        raise ValueError(f"study {study.study_name!r} has no complete trial{variant} yet")
    trial = best[0]
    task = str(study.user_attrs["task"])
    space = str(study.user_attrs.get("space", "zoo"))
    converted = _converted(trial, task, int(study.user_attrs["steps"]), space, variant_of(study.user_attrs))
    hyperparameters = {**hyperparameters_of(task), **converted}
    trials = len(study.get_trials(deepcopy=False, states=FINISHED))
    scores = ", ".join(f"{s:.1f}" for s in trial.user_attrs.get("seed_scores", []))
    which = f"trial {trial.number}"
    if next_action is not None and variant_of(study.user_attrs) is None:
        which += f" (its best of the {len(best)} complete trials with next_action {next_action!r})"
    lines = [
        f"{task}:",
        f"  # found by study {study.study_name!r} (benchmarks/tune.py), {trials} trials, {which}: objective",
        f"  # {study.user_attrs.get('objective')} = {trial.value:.2f} (seeds {scores}); budget {_budget(study)}",
        f"  n_timesteps: !!float {float(study.user_attrs['steps']):.4g}",
        "  policy: 'MlpPolicy'",
    ]
    try:
        entry = preset(task)
        if entry.env_wrapper:
            lines.append(f"  env_wrapper: {entry.env_wrapper}")
        if entry.env_kwargs:
            lines += ["  env_kwargs:", *(f"    {k}: {_yaml_value(k, v)}" for k, v in entry.env_kwargs.items())]
    except ValueError:
        pass
    order = ["next_action", "loss"] + [key for key in hyperparameters if key not in ("next_action", "loss", "policy_kwargs")]
    lines += [f"  {key}: {_yaml_value(key, hyperparameters[key])}" for key in order]
    if "policy_kwargs" in hyperparameters:
        lines.append(f"  policy_kwargs: {_yaml_value('policy_kwargs', hyperparameters['policy_kwargs'])}")
    return "\n".join(lines) + "\n"


def _converted(
    trial: FrozenTrial, task: str, steps: int, space: str = "zoo", next_action: str | None = None
) -> dict[str, Any]:
    """The trial's DeepSARSA keywords, as its objective built them (``next_action``: the study's ``--next-action``)."""
    from deep_sarsa.zoo.sampler import convert_deep_sarsa_params

    if space == "near-preset":
        return sample_near_preset(optuna.trial.FixedTrial(trial.params), task, next_action)
    base = hyperparameters_of(task)
    converted = convert_deep_sarsa_params(trial.params, base.get("policy_kwargs"))
    if "learning_starts" in trial.user_attrs:
        converted["learning_starts"] = int(trial.user_attrs["learning_starts"])
    return converted


def print_preset(args: argparse.Namespace) -> int:
    """Print the best trial (of ``--next-action``'s variant, where given) as a yml entry."""
    print(preset_entry(load(args), getattr(args, "next_action", None)), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    storage_help = "the study storage: sqlite:///FILE.db (one machine) or postgresql+psycopg://USER:PASSWORD@HOST/DB"
    parsers = {}
    for name, text in (
        ("study", "work on the study (create it if missing) until it has --trials finished trials"),
        ("show", "print the best trials, their parameters and per-seed scores"),
        ("export", "write the study as a markdown table"),
        ("preset", "print the best trial as a deep_sarsa.yml entry"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--task", required=True, choices=TUNABLE_TASKS)
        command.add_argument("--storage", help=storage_help + " (default: sqlite:///benchmarks/studies/TASK.db)")
        command.add_argument(
            "--study-name",
            help="default: TASK-worst-of-SEEDS, then -SPACE unless it is zoo, then -area for that objective, then "
            "-VARIANT for --next-action",
        )
        command.add_argument("--seeds", type=_positive(int), default=3, help="tuning seeds per trial (default 3)")
        command.add_argument(
            "--space",
            choices=["zoo", "near-preset"],
            default="zoo",
            help="the search space: rl-zoo3's DQN space (default) or one narrowed around the preset, the preset first",
        )
        command.add_argument(
            "--objective",
            choices=list(OBJECTIVES),
            default="last-20%",
            help="a seed's score: the mean of its last 20%% of evaluations (default) or its area under the curve; "
            "a trial's is its worst seed's",
        )
        command.add_argument(
            "--next-action",
            choices=NEXT_ACTIONS,
            help="fix DeepSARSA's next_action (a per-variant preset; needs --space near-preset): the study's trials "
            "sample every other keyword, and its first trial is the task's preset with this variant",
        )
        parsers[name] = command
    study_parser = parsers["study"]
    study_parser.add_argument("--trials", type=_positive(int), required=True, help="finished trials the study should have")
    study_parser.add_argument("--steps", type=_positive(int), help="budget per seed (default: the harness's for the task)")
    study_parser.add_argument("--eval-freq", type=_positive(int), help="steps between evaluations (default: the harness's)")
    study_parser.add_argument("--eval-episodes", type=_positive(int), default=20, help="episodes per evaluation (default 20)")
    study_parser.add_argument("--no-prune", action="store_true", help="never stop a trial before its last seed")
    study_parser.add_argument(
        "--minutes",
        type=_positive(float),
        help="start no new trial after this many minutes (the running one finishes; run the command again to resume)",
    )
    study_parser.add_argument(
        "--heartbeat", type=_positive(int), default=60, help="seconds between heartbeats; a trial silent 2x as long is failed"
    )
    parsers["show"].add_argument("--top", type=_positive(int), default=5, help="how many trials (default 5)")
    parsers["export"].add_argument("--out", type=Path, help="default: benchmarks/results/tuning_TASK.md")
    args = parser.parse_args(argv)
    try:
        if args.command == "study":
            return run_study(args)
        if args.command == "show":
            return show(args)
        if args.command == "export":
            return export(args)
        return print_preset(args)
    except ValueError as error:
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
        # Optuna wraps a failed commit (a full disk, a lost connection) in StorageInternalError: show the cause
        cause = error.__cause__ if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__ else error
        message = " ".join(str(cause).split())[:500]
        parser.exit(1, f"{parser.prog} {args.command}: error: the storage failed ({message}); the same command resumes\n")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
