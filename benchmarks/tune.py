"""
Tune DeepSARSA for every seed: an Optuna study whose objective is the worst of several tuning seeds' scores (a seed's
mean over its last 20% of evaluations, or ``--objective area``), trained and evaluated as the harness does; the study in
``benchmarks/studies/TASK.db`` or ``--storage``, its workers local or on a Dask cluster. Details: docs/tuning.md.

    python benchmarks/tune.py study --task CartPole-v1 --trials 100 --workers 2   # or --scheduler tcp://HOST:8786
    python benchmarks/tune.py export --task CartPole-v1                          # benchmarks/results/tuning_TASK.md

Read a study with Optuna's own command line: ``optuna trials`` / ``optuna best-trial --study-name NAME --storage URL``.
"""

import argparse
import datetime
import json
import math
import os
import socket
import sys
import warnings
from collections.abc import Callable, Sequence
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
import harness
from harness import TASKS, Evaluate, hyperparameters_of, make_env, positive

STUDIES = Path(__file__).parent / "studies"
RESULTS = Path(__file__).parent / "results"
TUNABLE_TASKS = [task for task in TASKS if task not in harness.LECTURE_TASKS]  # the lecture's settings are fixed
#: tuning seeds are TUNING_SEED_BASE + 0, 1, ...: the grid and the validation use seeds 0, 1, ...
TUNING_SEED_BASE = 1000
LAST_FRACTION = 0.2
OBJECTIVE = "worst seed's mean of its last 20% of evaluations"
#: ``--objective``: a seed's score (the study keeps the description: it is not resumed with another)
OBJECTIVES = {"last-20%": OBJECTIVE, "area": "worst seed's area under the curve (the mean of all its evaluations)"}
PRUNE_STARTUP_TRIALS, FINISHED = 5, (TrialState.COMPLETE, TrialState.PRUNED)
#: a study's ``next_action`` where its trials sample the variant (every study from before ``--next-action``)
ANY_NEXT_ACTION = "any"
#: ``--next-action-net``'s default: the presets' (they keep the network of every kept study, from before the option)
STUDY_NEXT_ACTION_NET = "online"
#: failed trials that stop a worker (a broken env would fail forever); retries of a trial whose worker died
FAILURES, RETRIES = 3, 2


def last_fraction_mean(curve: Sequence[Sequence[float]], fraction: float = LAST_FRACTION) -> float:
    """A seed's score: the mean return of the last ``fraction`` of its ``(step, mean return, std)`` evaluations (>= 1)."""
    if not curve:
        raise ValueError("curve must hold at least one evaluation (the budget is shorter than eval_freq?)")
    count = max(1, math.ceil(len(curve) * fraction - 1e-9))
    return float(np.mean([point[1] for point in curve[-count:]]))


def area_under_curve(curve: Sequence[Sequence[float]]) -> float:
    """The mean of a curve's mean returns (the harness's "area under curve")."""
    return float(np.mean([point[1] for point in curve]))


def seed_score(curve: Sequence[Sequence[float]], objective: str = OBJECTIVE) -> float:
    """A seed's score under ``objective`` (a description of :data:`OBJECTIVES`)."""
    if objective not in OBJECTIVES.values():
        raise ValueError(f"objective: {objective!r} is none of {list(OBJECTIVES.values())}")
    return area_under_curve(curve) if objective == OBJECTIVES["area"] else last_fraction_mean(curve)


def train_seed(
    task: str, hyperparameters: dict[str, Any], seed: int, steps: int, eval_freq: int, episodes: int
) -> list[tuple[int, float, float]]:
    """Train DeepSARSA with ``hyperparameters`` on one seed, evaluated as the harness does; its curve."""
    th.set_num_threads(1)
    model = DeepSARSA("MlpPolicy", make_env(task), seed=seed, device="cpu", **hyperparameters)
    evaluate = Evaluate(task, eval_freq, episodes, seed=10_000 + seed)
    model.learn(steps, callback=evaluate)
    return evaluate.curve


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The study's settings (budget, evaluation, objective, space), kept as its user attributes."""
    task = TASKS[args.task]
    settings: dict[str, Any] = dict(task=args.task, steps=int(args.steps or task["steps"]))
    settings |= dict(eval_freq=int(args.eval_freq or task["eval_freq"]), episodes=int(args.eval_episodes))
    settings["seeds"] = [TUNING_SEED_BASE + i for i in range(args.seeds)]
    settings |= dict(objective=OBJECTIVES[getattr(args, "objective", "last-20%")], space=str(getattr(args, "space", "zoo")))
    settings["next_action"] = str(getattr(args, "next_action", None) or ANY_NEXT_ACTION)
    settings["next_action_net"] = str(getattr(args, "next_action_net", None) or STUDY_NEXT_ACTION_NET)
    if settings["next_action"] != ANY_NEXT_ACTION and settings["space"] != "near-preset":
        raise ValueError("--next-action needs --space near-preset (rl-zoo3's space samples next_action itself)")
    if settings["eval_freq"] > settings["steps"]:
        raise ValueError(f"--eval-freq ({settings['eval_freq']}) must be at most the budget --steps ({settings['steps']})")
    return settings


def variant_of(settings: dict[str, Any]) -> str | None:
    """The ``next_action`` a study fixes (``--next-action``), or None where its trials sample it."""
    variant = settings.get("next_action", ANY_NEXT_ACTION)
    return None if variant == ANY_NEXT_ACTION else str(variant)


def make_objective(settings: dict[str, Any], prune: bool) -> Callable[[optuna.Trial], float]:
    """The objective of one trial (``prune``: a hopeless trial stops after the seed that shows it)."""
    task, steps = settings["task"], settings["steps"]
    base = {**hyperparameters_of(task), "next_action_net": settings.get("next_action_net", STUDY_NEXT_ACTION_NET)}
    env = make_env(task)
    n_actions = int(getattr(env.action_space, "n", 0))
    env.close()

    def objective(trial: optuna.Trial) -> float:
        if settings.get("space", "zoo") == "near-preset":
            sampled = sample_near_preset(trial, task, variant_of(settings))
        else:
            with experiment_settings(base, steps):
                sampled = sample_deep_sarsa_params(trial, n_actions, 1, {})
        hyperparameters = {**base, **sampled}
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        scores: list[float] = []
        areas: list[float] = []
        curves: list[list[tuple[int, float, float]]] = []
        for index, seed in enumerate(settings["seeds"]):
            curve = train_seed(task, hyperparameters, seed, steps, settings["eval_freq"], settings["episodes"])
            curves.append([(int(s), float(m), float(d)) for s, m, d in curve])
            scores.append(seed_score(curve, settings["objective"]))
            areas.append(area_under_curve(curve))
            for key, value in (("seed_scores", scores), ("seed_areas", areas), ("curves", curves)):
                trial.set_user_attr(key, value)  # kept by a pruned trial too
            trial.report(min(scores), index)
            if prune and index + 1 < len(settings["seeds"]) and trial.should_prune():
                raise optuna.TrialPruned(f"worst seed so far {min(scores):.1f} after {index + 1} seeds")
        return min(scores)

    return objective


#: ``--space near-preset`` around CartPole's preset (rl-zoo's space gave most CartPole trials a policy stuck on one
#: action): ``(low, high)`` ranges (learning rate and target update interval log-uniform), the rest choices;
#: gradient_steps = train_freq * gradient_ratio (>= 1)
NEAR_PRESET: dict[str, Any] = {
    "next_action": ["sampled", "expected", "stored"],
    **{"learning_rate": (2e-4, 4e-3), "batch_size": [64, 128, 256], "train_freq": [4, 16, 64, 256]},
    **{"gradient_ratio": [0.25, 0.5, 1.0], "target_update_interval": (10, 5000), "gamma": [0.98, 0.99, 0.995]},
    **{"exploration_fraction": (0.05, 0.3), "exploration_final_eps": (0.0, 0.06), "net_arch": ["small", "medium"]},
}
#: Each task's ranges that differ from :data:`NEAR_PRESET`, around its preset (Taxi and CliffWalking: the hand-set
#: Q-tables of ``harness.HAND_SET``). ``buffer_size`` is sampled by ``--next-action stored`` studies only ("stored"
#: bootstraps on the action taken when a transition was collected). docs/tuning.md says why Taxi is tuned with
#: ``--objective area`` and CliffWalking only per variant.
NEAR_PRESET_OF: dict[str, dict[str, Any]] = {
    "Acrobot-v1": {
        **{"learning_rate": (1e-4, 3e-3), "train_freq": [1, 4, 16], "gradient_ratio": [0.5, 1.0]},
        **{"target_update_interval": (50, 2000), "exploration_final_eps": (0.01, 0.15), "net_arch": ["small", "medium"]},
    },
    "LunarLander-v3": {
        **{"learning_rate": (1e-4, 3e-3), "train_freq": [1, 4, 16], "gradient_ratio": [0.5, 1.0]},
        **{"target_update_interval": (50, 2000), "gamma": [0.98, 0.99, 0.995, 0.999], "exploration_final_eps": (0.01, 0.15)},
        **{"net_arch": ["medium", "big"], "buffer_size": [10_000, 50_000, 100_000]},
    },
    "MountainCar-v0": {
        **{"learning_rate": (1e-3, 1e-2), "train_freq": [4, 16, 64], "target_update_interval": (100, 3000)},
        **{"gamma": [0.98, 0.99], "exploration_fraction": (0.1, 0.4), "exploration_final_eps": (0.02, 0.15)},
    },
    "Taxi-v4": {
        **{"learning_rate": (2e-3, 5e-2), "train_freq": [1, 2, 4], "gradient_ratio": [0.5, 1.0]},
        **{"target_update_interval": (50, 3000), "exploration_fraction": (0.1, 0.6), "exploration_final_eps": (0.0, 0.1)},
        **{"net_arch": ["table", "small"]},
    },
    "CliffWalking-v1": {
        **{"learning_rate": (1e-2, 2e-1), "train_freq": [1, 2, 4], "gradient_ratio": [0.5, 1.0]},
        **{"target_update_interval": (50, 3000), "exploration_fraction": (0.2, 0.8), "exploration_final_eps": (0.02, 0.2)},
        **{"net_arch": ["table", "small"], "buffer_size": [2_000, 10_000, 50_000]},
    },
}
#: the networks a near-preset space may name: the zoo sampler's, and a Q-table (one linear layer on one-hot states)
ARCHS: dict[str, list[int]] = {**NET_ARCHS, "table": []}


def near_preset_space(task: str) -> dict[str, Any]:
    """The task's ``--space near-preset``: :data:`NEAR_PRESET` with the task's ranges of :data:`NEAR_PRESET_OF`."""
    return {**NEAR_PRESET, **NEAR_PRESET_OF.get(task, {})}


def sample_near_preset(
    trial: optuna.trial.BaseTrial, task: str = "CartPole-v1", next_action: str | None = None
) -> dict[str, Any]:
    """``--space near-preset``: the keywords of a trial (MSE loss; ``next_action``: the variant a study fixes, or None)."""
    space = near_preset_space(task)
    if next_action is not None:
        if next_action not in space["next_action"]:
            raise ValueError(f"--next-action must be one of {space['next_action']}, got {next_action!r}")
        space["next_action"] = [next_action]
    train_freq = trial.suggest_categorical("train_freq", space["train_freq"])
    ratio = trial.suggest_categorical("gradient_ratio", space["gradient_ratio"])
    keywords = {"next_action": trial.suggest_categorical("next_action", space["next_action"]), "loss": "mse"}
    keywords["learning_rate"] = trial.suggest_float("learning_rate", *space["learning_rate"], log=True)
    keywords["batch_size"] = trial.suggest_categorical("batch_size", space["batch_size"])
    keywords |= {"train_freq": train_freq, "gradient_steps": max(1, int(train_freq * ratio))}
    interval = trial.suggest_int("target_update_interval", *space["target_update_interval"], log=True)
    keywords |= {"target_update_interval": interval, "gamma": trial.suggest_categorical("gamma", space["gamma"])}
    for key in ("exploration_fraction", "exploration_final_eps"):
        keywords[key] = trial.suggest_float(key, *space[key])
    keywords["policy_kwargs"] = {"net_arch": ARCHS[trial.suggest_categorical("net_arch", space["net_arch"])]}
    if next_action == "stored" and "buffer_size" in space:  # the memory's age is part of "stored"'s target
        keywords["buffer_size"] = trial.suggest_categorical("buffer_size", space["buffer_size"])
    return keywords


def near_preset_params(task: str, next_action: str | None = None) -> dict[str, Any]:
    """The task's preset (with ``next_action``) as parameters of ``--space near-preset``; a ValueError if outside it."""
    keywords = preset(task).hyperparameters
    train_freq = int(keywords.get("train_freq", 4))
    if keywords.get("gradient_steps", 1) == -1:  # one per env step: the ratio 1
        keywords["gradient_steps"] = train_freq
    if next_action is not None:
        keywords["next_action"] = next_action
    defaults: dict[str, Any] = dict(next_action="sampled", learning_rate=1e-3, batch_size=64, target_update_interval=10)
    defaults |= dict(gamma=0.99, exploration_fraction=0.1, exploration_final_eps=0.05)
    params = {key: type(default)(keywords.get(key, default)) for key, default in defaults.items()}
    params |= {"train_freq": train_freq, "gradient_ratio": float(keywords.get("gradient_steps", 1)) / float(train_freq)}
    arch = list(keywords.get("policy_kwargs", {}).get("net_arch", [64, 64]))
    params["net_arch"] = next((name for name, value in ARCHS.items() if value == arch), "medium")
    if next_action == "stored" and "buffer_size" in near_preset_space(task):
        params["buffer_size"] = int(keywords.get("buffer_size", 1_000_000))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Optuna warns of a value outside a range
            back = sample_near_preset(optuna.trial.FixedTrial(params), task, next_action)
    except (ValueError, Warning) as error:  # or raises for one that is none of a categorical's choices
        raise ValueError(f"--space near-preset: the preset of {task} is outside the space ({error})") from None
    if differ := {key: keywords[key] for key, value in back.items() if key in keywords and keywords[key] != value}:
        raise ValueError(f"--space near-preset: the preset of {task} is outside the space (its {differ}): see NEAR_PRESET_OF")
    return params


def storage_url(args: argparse.Namespace) -> str:
    """``--storage``, or the SQLite file ``benchmarks/studies/TASK.db``."""
    return str(args.storage) if args.storage else f"sqlite:///{STUDIES / (args.task + '.db')}"


def shown(url: str) -> str:
    """``url`` with its password hidden (``***``), to print."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def open_storage(url: str, heartbeat: int | None = None, must_exist: bool = False) -> optuna.storages.RDBStorage:
    """
    The study storage of ``--storage``.

    :param heartbeat: for the workers: seconds between a running trial's heartbeats (a dead worker's trial is retried)
    :param must_exist: refuse a missing SQLite file (reading a study)
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
    with warnings.catch_warnings():  # the heartbeat and its retry are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat is not None:
            # Optuna 4.9 renamed RetryFailedTrialCallback and failed_trial_callback (the old names warn)
            retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
            name = "heartbeat_stale_trial_callback" if retry else "failed_trial_callback"
            kwargs = {"heartbeat_interval": heartbeat, "grace_period": 2 * heartbeat}
            kwargs[name] = (retry or optuna.storages.RetryFailedTrialCallback)(max_retry=RETRIES)
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except ImportError as error:
            raise ValueError(f"--storage {shown(url)!r}: the database driver is missing: {error}") from error


def study_name(args: argparse.Namespace) -> str:
    """``--study-name``, or ``TASK-worst-of-K``, then ``-SPACE`` unless zoo, ``-area`` for that objective, ``-VARIANT``."""
    space, objective = getattr(args, "space", "zoo"), getattr(args, "objective", "last-20%")
    name = f"{args.task}-worst-of-{args.seeds}" + ("" if space == "zoo" else f"-{space}")
    name += "" if objective == "last-20%" else f"-{objective}"
    next_action = getattr(args, "next_action", None)
    return str(args.study_name or name + ("" if next_action is None else f"-{next_action}"))


def load(args: argparse.Namespace, storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """The existing study of ``--task``/``--storage``/``--study-name`` (read from ``storage`` where given)."""
    storage = storage or open_storage(storage_url(args), must_exist=True)
    name = study_name(args)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
        raise ValueError(f"--study-name: no study {name!r} in {shown(storage_url(args))} (it has {names})") from None


def create_or_load(storage: optuna.storages.BaseStorage, name: str, settings: dict[str, Any]) -> optuna.Study:
    """Create the study (its settings as user attributes) unless it exists; an existing one must have the same settings."""
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)
    if not study.user_attrs:
        for key, value in settings.items():
            study.set_user_attr(key, value)
    options = {"task": "--task", "steps": "--steps", "eval_freq": "--eval-freq", "episodes": "--eval-episodes"}
    options |= {"seeds": "--seeds", "objective": "(the objective)", "space": "--space", "next_action": "--next-action"}
    options["next_action_net"] = "--next-action-net"
    # a study from before an option ran with its default
    defaults = {"space": "zoo", "next_action": ANY_NEXT_ACTION, "next_action_net": STUDY_NEXT_ACTION_NET}
    for key, option in options.items():
        stored = study.user_attrs.get(key, defaults.get(key))
        if stored is not None and stored != settings[key]:
            hint = "give the same settings, or another --study-name"
            raise ValueError(f"{option}: study {name!r} was run with {key}={stored!r}, not {settings[key]!r}; {hint}")
    return study


def optimize(args: argparse.Namespace) -> int:
    """
    One worker, in this process or as a Dask task: ``study.optimize`` until the study has ``--trials`` finished trials,
    ``--minutes`` have passed or :data:`FAILURES` of its trials failed (status 1).
    """
    os.environ["OMP_NUM_THREADS"] = "1"
    th.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load(args, open_storage(storage_url(args), heartbeat=args.heartbeat))
    study.pruner = optuna.pruners.MedianPruner(PRUNE_STARTUP_TRIALS) if not args.no_prune else optuna.pruners.NopPruner()
    failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [
        optuna.study.MaxTrialsCallback(args.trials, states=FINISHED),
        optuna.study.MaxTrialsCallback(failed + FAILURES, states=(TrialState.FAIL,)),
        _log,
    ]
    if len(study.get_trials(deepcopy=False, states=FINISHED)) < args.trials:
        study.optimize(
            make_objective(settings_of(args), prune=not args.no_prune),
            timeout=None if args.minutes is None else 60.0 * args.minutes,
            callbacks=callbacks,
            catch=(ValueError,),  # a trial that fails on its values (it should not) leaves the study going
            gc_after_trial=True,
        )
    if len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))) >= failed + FAILURES:
        print(f"{FAILURES} trials failed since this worker started (Optuna logged each error); it stops", flush=True)
        return 1
    return 0


def run_study(args: argparse.Namespace) -> int:
    """Create or check the study, queue the preset, then run the workers; print where the study stands."""
    settings = settings_of(args)
    name, url = study_name(args), storage_url(args)
    if args.scheduler and url.startswith("sqlite") and not args.scheduler.startswith(("tcp://127.0.0.1:", "tcp://localhost:")):
        raise ValueError("--storage: a SQLite file is on this machine only; workers elsewhere need postgresql+psycopg://...")
    # near-preset: the preset itself is a trial (checked before the study is created), unless one measured it or will
    first = near_preset_params(args.task, variant_of(settings)) if settings["space"] == "near-preset" else None
    study = create_or_load(open_storage(url), name, settings)
    alive = [trial for trial in study.get_trials(deepcopy=False) if trial.state != TrialState.FAIL]
    if first is not None and not any(trial.system_attrs.get("fixed_params", trial.params) == first for trial in alive):
        study.enqueue_trial(first)
    if args.scheduler is None and (args.workers or 1) == 1:
        status = optimize(args)
    else:
        from distributed import as_completed

        with harness.cluster(args.scheduler, args.workers) as client:
            workers = args.workers or sum(client.nthreads().values())
            print(f"study {name!r}: {workers} workers on {args.scheduler or 'a local cluster'}", flush=True)
            status = 0
            for future in as_completed([client.submit(optimize, args, pure=False) for _ in range(workers)]):
                try:
                    status = max(status, future.result())
                except Exception as error:  # its process died too often (KilledWorker), its storage failed, ...
                    print(f"a worker failed: {harness.one_line(error)}", flush=True)
                    status = 1
    states = [trial.state for trial in study.get_trials(deepcopy=False)]
    best = f"; best {study.best_value:.2f} (trial {study.best_trial.number})" if TrialState.COMPLETE in states else ""
    count = {state: states.count(state) for state in TrialState}
    summary = f"{count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} pruned, {count[TrialState.FAIL]} failed"
    print(f"study {name!r}: {summary}, {count[TrialState.RUNNING]} running{best}", flush=True)
    return status


def _log(study: optuna.Study, trial: FrozenTrial) -> None:
    value = f"{trial.value:.2f}" if trial.value is not None else "-"
    print(f"trial {trial.number} {trial.state.name.lower()}: {value} (seeds {_seeds(trial)}) {trial.params}", flush=True)


def best_trials(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """The ``top`` complete trials, best first (ties: the larger mean area under the curve)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(complete, key=lambda t: (-(t.value or 0.0), -float(np.mean(t.user_attrs.get("seed_areas", [0.0])))))[:top]


def _seeds(trial: FrozenTrial, key: str = "seed_scores") -> str:
    return ", ".join(f"{score:.1f}" for score in trial.user_attrs.get(key, []))


def export(args: argparse.Namespace) -> None:
    """Write the study as a markdown table (every trial, best first), with the command, the CPU and the date."""
    study = load(args)
    trials, attrs, name = study.get_trials(deepcopy=False), study.user_attrs, study.study_name
    task = attrs.get("task")
    keys = sorted({key for trial in trials for key in trial.params})
    ranked = {trial.number: rank for rank, trial in enumerate(best_trials(study, len(trials)))}
    storage = f" --storage '{shown(storage_url(args))}'" if args.storage else ""
    objective = next((key for key, text in OBJECTIVES.items() if text == attrs.get("objective")), "last-20%")
    options = f" --steps {attrs.get('steps')} --eval-freq {attrs.get('eval_freq')} --eval-episodes {attrs.get('episodes')}"
    options += "" if attrs.get("space", "zoo") == "zoo" else f" --space {attrs['space']}"
    options += "" if objective == "last-20%" else f" --objective {objective}"
    options += "" if variant_of(attrs) is None else f" --next-action {variant_of(attrs)}"
    scored = "area under the curve" if objective == "area" else "mean of its last 20% of evaluations"
    lines = [
        f"# Tuning DeepSARSA on {task}: study `{name}`",
        "",
        f"Objective: the {attrs.get('objective')} (maximized). Budget: {attrs.get('steps')} steps, an evaluation every "
        f"{attrs.get('eval_freq')} steps ({attrs.get('episodes')} episodes), tuning seeds {attrs.get('seeds')}.",
        f"{len(trials)} trials; best first. Seed scores: each tuning seed's {scored}; area: the mean of all its evaluations.",
        "",
        "| trial | state | objective | seed scores | seed areas | " + " | ".join(keys) + " |",
        "|---:|---|---:|---|---|" + "---|" * len(keys),
    ]
    for trial in sorted(trials, key=lambda t: (ranked.get(t.number, len(trials)), t.number)):
        value = f"{trial.value:.2f}" if trial.value is not None else "-"
        params = " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in (trial.params.get(k, "") for k in keys))
        cells = [str(trial.number), trial.state.name.lower(), value, _seeds(trial), _seeds(trial, "seed_areas"), params]
        lines.append("| " + " | ".join(cells) + " |")
    for best in best_trials(study, 1):
        lines += ["", f"Best: trial {best.number}, objective {best.value:.2f}, `{json.dumps(best.params, sort_keys=True)}`."]
    lines += [
        "",
        f"Reproduce (resume or extend): `python benchmarks/tune.py study --task {task}{storage} --study-name {name} "
        f"--trials {len(trials)} --seeds {len(attrs.get('seeds', []))}{options}`; "
        f"this table: `python benchmarks/tune.py export --task {task}{storage} --study-name {name}`.",
        "",
        f"Machine: {harness.cpu_model()}, {os.cpu_count()} cores, torch {th.__version__}. "
        f"Exported {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
    ]
    out = args.out or RESULTS / f"tuning_{args.task}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out} ({len(trials)} trials)")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    storage_help = "the study storage: sqlite:///FILE.db (one machine) or postgresql+psycopg://USER:PASSWORD@HOST/DB"
    parsers = {}
    for name in ("study", "export"):  # work on the study; a markdown table
        parsers[name] = command = commands.add_parser(name)
        command.add_argument("--task", required=True, choices=TUNABLE_TASKS)
        command.add_argument("--storage", help=storage_help + " (default: sqlite:///benchmarks/studies/TASK.db)")
        command.add_argument("--study-name", help="default: TASK-worst-of-SEEDS[-SPACE unless zoo][-area][-VARIANT]")
        command.add_argument("--seeds", type=positive(int), default=3, help="tuning seeds per trial (default 3)")
        command.add_argument("--space", choices=["zoo", "near-preset"], default="zoo", help="rl-zoo3's, or around the preset")
        command.add_argument("--objective", choices=list(OBJECTIVES), default="last-20%", help="a seed's score")
        command.add_argument("--next-action", choices=NEXT_ACTIONS, help="fix next_action (needs --space near-preset)")
        command.add_argument("--next-action-net", choices=["target", "online"], help="default online (the presets')")
    study = parsers["study"]
    study.add_argument("--trials", type=positive(int), required=True, help="finished trials the study should have")
    study.add_argument("--steps", type=positive(int), help="budget per seed (default: the harness's for the task)")
    study.add_argument("--eval-freq", type=positive(int), help="steps between evaluations (default: the harness's)")
    study.add_argument("--eval-episodes", type=positive(int), default=20, help="episodes per evaluation (default 20)")
    study.add_argument("--no-prune", action="store_true", help="never stop a trial before its last seed")
    study.add_argument("--minutes", type=positive(float), help="start no new trial after this many minutes")
    study.add_argument("--heartbeat", type=positive(int), default=60, help="seconds; a trial silent twice as long is retried")
    where = study.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive(int), help="worker processes (a local Dask cluster; default 1: this one)")
    where.add_argument("--scheduler", help="a Dask scheduler's address: one worker per thread of its cluster")
    parsers["export"].add_argument("--out", type=Path, help="default: benchmarks/results/tuning_TASK.md")
    args = parser.parse_args(argv)
    return harness.run_command(parser, args, lambda: storage_errors(args))


def storage_errors(args: argparse.Namespace) -> int | None:
    """Run ``args.command``; a failed storage (a full disk, a lost connection) is raised as a one-line ConnectionError."""
    try:
        return {"study": run_study, "export": export}[args.command](args)
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
        # Optuna wraps a failed commit in StorageInternalError: show the cause
        cause = error.__cause__ if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__ else error
        message = " ".join(str(cause).split())[:500]
        raise ConnectionError(f"the storage failed ({message}); the same command resumes") from None


if __name__ == "__main__":
    import tune  # the workers' function by its module's name, which Dask workers import

    sys.exit(tune.main())
