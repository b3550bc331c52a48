"""
``deep-sarsa train``, and ``deep-sarsa train --resume``: checks a new run's settings and its
``--hyperparams`` (:func:`parse_hyperparameters`), writes the run folder and its ``run.json``, learns
with the periodic evaluations and exact checkpoints (also on Ctrl-C and SIGTERM, with their exit
codes), then saves, evaluates and summarises the final model; a resumed run goes on from its
checkpoint to its planned step count with the settings of its ``run.json``.
"""

import argparse
import ast
import inspect
import pathlib
import signal
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
from rich.markup import escape
from rich.table import Table

from deep_sarsa.callbacks import SaveOnInterrupt
from deep_sarsa.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from deep_sarsa.cli.common import RUN_FILE, RunFailed, UsageError, console, errors, json_value
from deep_sarsa.cli.env_settings import EnvSettings, check_env_settings, make_wrapped_env, vec_env
from deep_sarsa.cli.evaluations import RunEvaluations, eval_callback, evaluate_episodes, plot_curves
from deep_sarsa.cli.run_folder import (
    BEST_MODEL,
    CHECKPOINT_FOLDER,
    FINAL_MODEL,
    check_links,
    clear_run_folder,
    read_run_settings,
    sign_run,
    write_json,
)
from deep_sarsa.deep_sarsa import DeepSARSA
from deep_sarsa.presets import load_presets, parse_policy_kwargs, variant_presets
from deep_sarsa.safe_pickle import UnsafeFileError
from deep_sarsa.validation import check_model_memory

#: what a run without a preset (or whose hyperparameters leave it out) uses
DEFAULT_NEXT_ACTION = str(inspect.signature(DeepSARSA).parameters["next_action"].default)

#: DeepSARSA keywords that ``--hyperparams`` may set (the CLI sets env, seed, verbose, tensorboard itself)
HYPERPARAMETERS = sorted(
    name
    for name in inspect.signature(DeepSARSA.__init__).parameters
    if name not in {"self", "policy", "env", "seed", "verbose", "tensorboard_log", "_init_setup_model"}
)
#: exit codes after an interrupt, by signal (the shell's 128 + signal number)
INTERRUPT_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


def parse_hyperparameters(pairs: Sequence[str]) -> dict[str, Any]:
    """
    Turn ``["gamma=0.98", "policy_kwargs=dict(net_arch=[64])"]`` into keyword arguments.

    Values are Python literals (numbers, strings, tuples, lists, dicts); ``dict(...)`` is accepted
    as rl-zoo writes ``policy_kwargs``. Anything else is taken as a string.

    :param pairs: ``key=value`` strings
    :return: the keyword arguments
    """
    result: dict[str, Any] = {}
    for pair in pairs:
        key, separator, text = pair.partition("=")
        if not separator:
            raise UsageError(f"--hyperparams takes key=value pairs, got {pair!r}")
        if key not in HYPERPARAMETERS:
            raise UsageError(f"unknown hyperparameter {key!r}; valid ones: {', '.join(HYPERPARAMETERS)}")
        result[key] = _literal(text, key)
    return result


def _literal(text: str, key: str) -> Any:
    if text.startswith("dict("):  # an unbalanced "dict(" is reported as such, not taken as a string
        try:
            return parse_policy_kwargs(text, key)
        except ValueError as error:
            raise UsageError(str(error)) from error
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _learn(
    model: DeepSARSA, run: dict[str, Any], settings: EnvSettings, output: pathlib.Path, progress_bar: bool
) -> tuple[int, RunEvaluations, float, float]:
    """
    Learn up to the run's planned steps with evaluation and exact checkpoints.

    :param settings: the run's env settings (trusted: the user's own, or ``--trusted``; else checked again)
    :return: the exit code, the evaluation callback, the seconds and the env steps per second
    """
    eval_env = vec_env(settings, 1, run["seed"] + 10_000)
    n_envs = int(run["n_envs"])
    every = max(run["eval_freq"] // n_envs, 1)
    evaluation = eval_callback(model, eval_env, output, every, run["eval_episodes"], run["seed"] + 10_000)
    saver = SaveOnInterrupt(output / CHECKPOINT_FOLDER, save_freq=run["checkpoint_freq"], run_id=_run_id(run))
    remaining = max(int(run["timesteps"]) - model.num_timesteps, 0)
    first_step = model.num_timesteps
    start = time.perf_counter()
    try:
        model.learn(
            remaining,
            callback=[evaluation, saver],
            progress_bar=progress_bar,
            reset_num_timesteps=model.num_timesteps == 0,
        )
    except OSError as error:  # e.g. a full disk: a periodic checkpoint could not be written, training stopped
        eval_env.close()
        newest = latest_checkpoint(output / CHECKPOINT_FOLDER) if (output / CHECKPOINT_FOLDER).is_dir() else None
        then = (
            f"the newest complete checkpoint is {newest}: once that is fixed, continue with deep-sarsa train --resume {output}"
            if newest is not None
            else "no checkpoint was written: start again (with --force) once that is fixed"
        )
        raise RunFailed(f"training stopped at step {model.num_timesteps}: {error}; {then}") from error
    seconds = time.perf_counter() - start
    rate = (model.num_timesteps - first_step) / max(seconds, 1e-9)
    model.get_env().close()  # type: ignore[union-attr]  # flushes and closes the monitor logs
    eval_env.close()
    if saver.interrupted:
        signal_name = signal.Signals(saver.signal).name if saver.signal is not None else "SIGINT"
        where = saver.last_checkpoint or output / CHECKPOINT_FOLDER
        errors.print(
            f"[yellow]{signal_name} at step {model.num_timesteps} of {run['timesteps']}:[/] checkpoint saved in "
            f"{escape(str(where))}; continue with: deep-sarsa train --resume {escape(str(output))}"
        )
        return INTERRUPT_EXIT_CODES.get(signal_name, 130), evaluation, seconds, rate
    return 0, evaluation, seconds, rate


def _finish(
    model: DeepSARSA,
    run: dict[str, Any],
    settings: EnvSettings,
    output: pathlib.Path,
    evaluation: RunEvaluations,
    seconds: float,
    rate: float,
) -> None:
    """Save the final model, evaluate it (on the checked ``settings``), draw the curve, print the summary."""
    model.save(output / FINAL_MODEL)
    (output / "eval" / ".scratch.npz").unlink(missing_ok=True)
    eval_env = vec_env(settings, 1, run["seed"] + 20_000)
    returns, _ = evaluate_episodes(model, eval_env, run["eval_episodes"])
    eval_env.close()
    curve = plot_curves([output], output / "learning_curve.png")

    table = Table(title=f"DeepSARSA on {run['env_id']}", show_header=False)
    table.add_column("setting", style="bold")
    table.add_column("value")
    best = "no evaluation during the run"
    if evaluation.evaluations_results:
        means = [float(np.mean(r)) for r in evaluation.evaluations_results]
        at = evaluation.evaluations_timesteps[int(np.argmax(means))]
        best = f"{max(means):.2f} at step {at} ({output / BEST_MODEL})"
    rows = [
        ("next_action", str(run["hyperparameters"].get("next_action", DEFAULT_NEXT_ACTION))),
        ("timesteps", str(model.num_timesteps)),
        ("wall-clock", f"{seconds:.0f} s ({rate:.0f} steps/s)"),
        ("final evaluation", f"{np.mean(returns):.2f} ± {np.std(returns):.2f} over {len(returns)} episodes"),
        ("best evaluation", best),
        ("final model", str(output / FINAL_MODEL)),
        ("run settings", str(output / RUN_FILE)),
        ("learning curve", str(curve) if curve else "matplotlib not installed: no PNG"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def _run_id(run: dict[str, Any]) -> str | None:
    """The run's identity in its run.json (None for a run written by 0.1.0, which has none)."""
    run_id = run.get("run_id")
    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise UsageError(f"{RUN_FILE}: its run_id {run_id!r} is not a string")
    return run_id


def _check_new_run(args: argparse.Namespace) -> None:
    if args.env_id is None:
        raise UsageError("train needs an ENV_ID, or --resume RUN_DIR")
    for name, value in (("--timesteps", args.timesteps), ("--eval-episodes", args.eval_episodes), ("--n-envs", args.n_envs)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be a positive integer, got {value}")


def train(args: argparse.Namespace) -> int:
    """Train, evaluate periodically, keep the best model, checkpoint exactly; write the run folder."""
    if args.resume is not None:
        return resume_run(args)
    _check_new_run(args)
    presets = load_presets()
    entry = presets.get(args.env_id) if args.preset else None
    if args.preset and entry is None:
        errors.print(f"[yellow]no preset for {escape(args.env_id)}: DQN's defaults[/]")
    if entry is not None and args.next_action not in (None, entry.hyperparameters.get("next_action")):
        # the hyperparameters tuned for that variant where a sweep found them, else the preset's with the variant
        entry = variant_presets(args.next_action).get(args.env_id) or entry
        if entry.hyperparameters.get("next_action") != args.next_action:
            errors.print(
                f"[yellow]no preset tuned for next_action={args.next_action} on {escape(args.env_id)}: "
                f"the preset's hyperparameters, with next_action={args.next_action}[/]"
            )
    settings = EnvSettings(args.env_id, entry.env_wrapper, entry.env_kwargs) if entry else EnvSettings(args.env_id)
    make_wrapped_env(settings).close()  # fails early, with the env's name
    hyperparameters: dict[str, Any] = dict(entry.hyperparameters) if entry is not None else {}
    timesteps = args.timesteps or (entry.n_timesteps if entry is not None else 50_000)
    hyperparameters.update(parse_hyperparameters(args.hyperparams))
    if args.next_action is not None:
        hyperparameters["next_action"] = args.next_action
    seed = 0 if args.seed is None else args.seed
    n_envs = args.n_envs or 1
    next_action = hyperparameters.get("next_action", DEFAULT_NEXT_ACTION)
    output = args.output or pathlib.Path("runs") / f"{args.env_id.replace(':', '_')}-{next_action}-seed{seed}"
    try:  # the keywords, and the memory the buffer and a minibatch need, are checked before the run folder is touched
        probe = DeepSARSA("MlpPolicy", make_wrapped_env(settings), _init_setup_model=False, **hyperparameters)
        probe.n_envs = n_envs
        check_model_memory(probe)
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error
    clear_run_folder(output, args.force)
    output.mkdir(parents=True, exist_ok=True)

    env = vec_env(settings, n_envs, seed, monitor_dir=output / "monitor")
    try:
        model = DeepSARSA(
            "MlpPolicy",
            env,
            seed=seed,
            tensorboard_log=str(output / "tensorboard") if args.tensorboard else None,
            **hyperparameters,
        )
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error
    run = {
        "run_id": uuid.uuid4().hex,  # every checkpoint's manifest keeps it: --resume refuses another run's
        "env_id": args.env_id,
        "env_kwargs": json_value(settings.env_kwargs or {}),
        "env_wrapper": json_value(settings.env_wrapper),
        "timesteps": timesteps,
        "seed": seed,
        "n_envs": n_envs,
        "eval_episodes": args.eval_episodes or 10,
        "eval_freq": max(timesteps // 10, 1),  # env steps
        "checkpoint_freq": max(timesteps // 5, 1),  # env steps
        "hyperparameters": json_value(hyperparameters),
    }
    write_json(output / RUN_FILE, run)
    sign_run(output / RUN_FILE)  # the user's own run: evaluated and resumed with its own wrappers, no --trusted
    code, evaluation, seconds, rate = _learn(model, run, settings, output, not args.no_progress_bar)
    if code == 0:
        _finish(model, run, settings, output, evaluation, seconds, rate)
    return code


def resume_run(args: argparse.Namespace) -> int:
    """Continue a run from its checkpoint to its planned step count, in the same folder."""
    changed = [
        option
        for option, value in (
            ("ENV_ID", args.env_id),
            ("--timesteps", args.timesteps),
            ("--hyperparams", args.hyperparams or None),
            ("--next-action", args.next_action),
            ("--seed", args.seed),
            ("--n-envs", args.n_envs),
            ("--eval-episodes", args.eval_episodes),
            ("--output", args.output),
            ("--force", args.force or None),
            ("--no-preset", None if args.preset else True),
        )
        if value is not None
    ]
    if changed:
        raise UsageError(f"--resume continues a run with the settings in its {RUN_FILE}: drop {', '.join(changed)}")
    output: pathlib.Path = args.resume
    if not (output / RUN_FILE).is_file():
        raise UsageError(f"--resume {output}: no {RUN_FILE} there (is it a run folder written by `deep-sarsa train`?)")
    run, settings = read_run_settings(output / RUN_FILE)
    check_env_settings(settings, args.trusted)  # evaluate's check: before the checkpoint or any env is touched
    check_links(output)  # a resumed copy writes only inside itself
    checkpoint = output / CHECKPOINT_FOLDER
    if not checkpoint.is_dir():
        raise UsageError(f"--resume {output}: the run has no checkpoint to continue from ({checkpoint} is missing)")
    try:
        model = load_checkpoint(checkpoint, device="auto", trusted=args.trusted, run_id=_run_id(run), run_folder=output)
    except UnsafeFileError as error:
        raise UsageError(str(error).replace("with trusted=True", "with --trusted")) from error
    except (FileNotFoundError, CheckpointError) as error:
        raise UsageError(str(error)) from error
    if args.trusted and not settings.trusted:
        # trusted now, as the checkpoints this run writes will be (they hold its envs): resumed and evaluated without asking
        sign_run(output / RUN_FILE)
        settings = settings._replace(trusted=True)
    if model.num_timesteps >= int(run["timesteps"]):
        if (output / FINAL_MODEL).exists():
            console.print(f"{output}: the run is complete ({model.num_timesteps} of {run['timesteps']} steps)", soft_wrap=True)
            return 0
        # stopped after its last checkpoint, before the final model was written: finish it
        evaluation = eval_callback(model, vec_env(settings, 1, 0), output, 1, 1, 0)
        _finish(model, run, settings, output, evaluation, 0.0, 0.0)
        return 0
    console.print(f"resuming {output} at step {model.num_timesteps} of {run['timesteps']}", soft_wrap=True)
    code, evaluation, seconds, rate = _learn(model, run, settings, output, not args.no_progress_bar)
    if code == 0:
        _finish(model, run, settings, output, evaluation, seconds, rate)
    return code
