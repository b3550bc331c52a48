"""
The ``deep-sarsa`` command: train, evaluate, watch and plot DeepSARSA agents.

Its ``--help`` text is :data:`DESCRIPTION`, plain text. What the command does itself and what it
leaves to rl-zoo3 (``python -m deep_sarsa.zoo``), and why, is written in docs/cli.md.
"""

import argparse
import ast
import importlib
import inspect
import json
import pathlib
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from sb3_contrib.common.maskable.evaluation import evaluate_policy as evaluate_masked
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv

from deep_sarsa.callbacks import SaveOnInterrupt
from deep_sarsa.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from deep_sarsa.deep_sarsa import DeepSARSA
from deep_sarsa.files import atomic_path
from deep_sarsa.finite import NonFiniteError
from deep_sarsa.presets import NEXT_ACTIONS, load_presets, parse_policy_kwargs, variant_presets
from deep_sarsa.safe_pickle import UnsafeFileError
from deep_sarsa.validation import make_env

DESCRIPTION = """\
Train, evaluate, watch and plot DeepSARSA agents.

  deep-sarsa train CartPole-v1 --timesteps 50000
  deep-sarsa train --resume runs/CartPole-v1-sampled-seed0
  deep-sarsa evaluate runs/CartPole-v1-sampled-seed0 --episodes 20
  deep-sarsa enjoy runs/CartPole-v1-sampled-seed0 --gif cartpole.gif
  deep-sarsa enjoy runs/CartPole-v1-sampled-seed0 --record cartpole.mp4
  deep-sarsa plot runs/CartPole-v1-sampled-seed0 runs/CartPole-v1-stored-seed0

A run folder given to evaluate or enjoy means its best model (best_model.zip, kept by the
periodic evaluations), else its final model.zip. Models are loaded safely (no code from the
file runs; a file that would run some is refused) unless --trusted is given.

Exit codes: 0 on success; 2 for bad input (unknown env, bad hyperparameter, unreadable,
malformed or refused model file, bad arguments, a run folder that is already used); 1 when
something fails while running (or an optional package is missing); 130 after Ctrl-C and 143
after SIGTERM (train writes a checkpoint first and says where).
"""

console = Console()
#: errors go to stderr, unwrapped, so that they can be read (and grepped) whole
errors = Console(stderr=True, soft_wrap=True)

#: DeepSARSA keywords that ``--hyperparams`` may set (the CLI sets env, seed, verbose, tensorboard itself)
HYPERPARAMETERS = sorted(
    name
    for name in inspect.signature(DeepSARSA.__init__).parameters
    if name not in {"self", "policy", "env", "seed", "verbose", "tensorboard_log", "_init_setup_model"}
)
RUN_FILE = "run.json"
FINAL_MODEL = "model.zip"
BEST_MODEL = "best_model.zip"
CHECKPOINT_FOLDER = "checkpoint"
#: what ``train`` writes into a run folder (``--force`` removes exactly these)
RUN_ENTRIES = (
    RUN_FILE,
    FINAL_MODEL,
    BEST_MODEL,
    "learning_curve.png",
    "monitor",
    "eval",
    CHECKPOINT_FOLDER,
    "tensorboard",
    # written by earlier versions of the command
    "checkpoints",
    "interrupted",
)
#: modules whose wrappers a run.json may name without --trusted (importing another module runs its code)
SAFE_WRAPPER_MODULES = ("gymnasium.", "stable_baselines3.", "sb3_contrib.", "deep_sarsa.")
#: exit codes after an interrupt, by signal (the shell's 128 + signal number)
INTERRUPT_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class UsageError(Exception):
    """Bad input from the user: reported without a traceback, exit code 2."""


class MissingExtra(Exception):
    """An optional package that the command needs is not installed: exit code 1."""


class RunFailed(Exception):
    """Training could not go on (e.g. a full disk); the message says what is left: exit code 1."""


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


def json_value(value: Any) -> Any:
    """
    A hyperparameter's value as JSON stores it: tuples become lists, dicts and lists are converted
    item by item; a value JSON has no type for (none that the command's own parsing produces) is
    stored as its ``repr``.

    :param value: the value
    :return: a value ``json.dumps`` writes
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    return repr(value)


# --- envs -------------------------------------------------------------------------------------


def _wrapper_entries(spec: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """rl-zoo's ``env_wrapper`` (a path, ``{path: kwargs}``, or a list of them) as (path, kwargs) pairs."""
    if spec is None:
        return []
    items = spec if isinstance(spec, list) else [spec]
    entries: list[tuple[str, dict[str, Any]]] = []
    for item in items:
        if isinstance(item, str):
            entries.append((item, {}))
        elif isinstance(item, dict) and len(item) == 1:
            (path, kwargs), *_ = item.items()
            if not (isinstance(path, str) and (kwargs is None or isinstance(kwargs, dict))):
                raise UsageError(f"{where}: env_wrapper entry {item!r} must be {{'module.Wrapper': {{keyword: value}}}}")
            entries.append((path, dict(kwargs or {})))
        else:
            raise UsageError(
                f"{where}: env_wrapper must be 'module.Wrapper', {{'module.Wrapper': {{keyword: value}}}} or a list of them, "
                f"got {item!r}"
            )
    return entries


def _import_wrapper(path: str, where: str, trusted: bool) -> Callable[..., gym.Env]:
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise UsageError(f"{where}: env_wrapper {path!r} must be a full import path, 'module.Wrapper'")
    if not trusted and not path.startswith(SAFE_WRAPPER_MODULES):
        raise UsageError(
            f"{where}: env_wrapper {path!r} is outside {', '.join(m.rstrip('.') for m in SAFE_WRAPPER_MODULES)}: "
            "importing it would run its module's code; pass --trusted if you trust this run folder"
        )
    try:
        wrapper = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"{where}: env_wrapper {path!r} cannot be imported: {error}") from error
    # without --trusted only a gym.Wrapper class, not any function of those modules
    if not callable(wrapper) or not (trusted or (isinstance(wrapper, type) and issubclass(wrapper, gym.Wrapper))):
        raise UsageError(f"{where}: env_wrapper {path!r} is not a gymnasium.Wrapper class")
    return wrapper


class EnvSettings(NamedTuple):
    """How a run makes its env: a preset's (or run.json's) env id, ``env_kwargs`` and ``env_wrapper``."""

    #: a Gymnasium env id, or ``module:EnvId``
    env_id: str
    #: rl-zoo's ``env_wrapper`` value (None: no wrapper)
    env_wrapper: Any = None
    #: rl-zoo's ``env_kwargs``: keywords of ``gym.make`` (None: none)
    env_kwargs: dict[str, Any] | None = None


def make_wrapped_env(
    settings: EnvSettings, render_mode: str | None = None, where: str = "preset", trusted: bool = True
) -> gym.Env:
    """
    ``gym.make(env_id, **env_kwargs)`` with the wrappers of ``env_wrapper``, innermost first.

    :param settings: the env id, ``env_kwargs`` and ``env_wrapper``
    :param render_mode: Gymnasium's ``render_mode``
    :param where: where the settings come from, for error messages
    :param trusted: import wrappers from any module (else only from :data:`SAFE_WRAPPER_MODULES`)
    :return: the environment
    """
    env_id, env_kwargs = settings.env_id, dict(settings.env_kwargs or {})
    wrappers = [(_import_wrapper(path, where, trusted), kw) for path, kw in _wrapper_entries(settings.env_wrapper, where)]
    if render_mode is not None:
        env_kwargs["render_mode"] = render_mode
    try:
        env = gym.make(env_id, **env_kwargs) if env_kwargs else make_env(env_id)
    except (gym.error.Error, ModuleNotFoundError) as error:
        raise UsageError(f"env={env_id!r} cannot be made: {error}") from error
    except TypeError as error:
        raise UsageError(f"{where}: env_kwargs {env_kwargs} do not fit {env_id}: {error}") from error
    for wrapper, kwargs in wrappers:
        try:
            env = wrapper(env, **kwargs)
        except (TypeError, ValueError) as error:
            raise UsageError(f"{where}: env_wrapper {wrapper.__name__}({kwargs}) fails on {env_id}: {error}") from error
    return env


def _vec_env(
    settings: EnvSettings,
    n_envs: int,
    seed: int,
    monitor_dir: pathlib.Path | None = None,
    where: str = "preset",
    trusted: bool = True,
) -> VecEnv:
    """The training or evaluation VecEnv: the wrapped env under SB3's Monitor (which then sees time limits)."""
    return make_vec_env(
        lambda: make_wrapped_env(settings, where=where, trusted=trusted),
        n_envs=n_envs,
        seed=seed,
        monitor_dir=None if monitor_dir is None else str(monitor_dir),
    )


def _masked(model: DeepSARSA, env: gym.Env | VecEnv) -> bool:
    return bool(getattr(model, "use_masking", True)) and is_masking_supported(env)


def _evaluate(
    model: DeepSARSA, env: gym.Env | VecEnv, episodes: int, deterministic: bool = True
) -> tuple[list[float], list[int]]:
    """Episode returns and lengths, with the env's action masks when it has them (as in training)."""
    if _masked(model, env):
        returns, lengths = evaluate_masked(
            model,  # type: ignore[arg-type]  # DeepSARSA.predict takes action_masks as MaskablePPO's does
            env,
            n_eval_episodes=episodes,
            deterministic=deterministic,
            return_episode_rewards=True,
        )
    else:
        returns, lengths = evaluate_policy(
            model, env, n_eval_episodes=episodes, deterministic=deterministic, return_episode_rewards=True
        )
    return [float(r) for r in returns], [int(n) for n in lengths]  # type: ignore[union-attr]


# --- run folders ------------------------------------------------------------------------------


def _find_run_file(path: pathlib.Path) -> pathlib.Path | None:
    """The run.json of the run a model, checkpoint or run folder belongs to (the path itself or up to 3 folders up)."""
    folder = path if path.is_dir() else path.parent
    for candidate in [folder, *folder.parents][:4]:
        if (candidate / RUN_FILE).is_file():
            return candidate / RUN_FILE
    return None


def _read_run(run_file: pathlib.Path) -> dict[str, Any]:
    try:
        run = json.loads(run_file.read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"{run_file}: not a readable run file: {error}") from error
    if not isinstance(run, dict) or not isinstance(run.get("env_id"), str):
        raise UsageError(f"{run_file}: not a run file written by `deep-sarsa train` (no env_id)")
    return run


def _model_file(path: pathlib.Path) -> pathlib.Path:
    """A model file, or the model a folder stands for: a run's best model, else its final one; a checkpoint's model."""
    if not path.is_dir():
        return path
    for name in (BEST_MODEL, FINAL_MODEL):
        if (path / name).is_file():
            return path / name
    generation = latest_checkpoint(path)  # a checkpoint folder: its newest checkpoint's model
    if generation is not None and (generation / FINAL_MODEL).is_file():
        return generation / FINAL_MODEL
    raise UsageError(
        f"{path} is a folder without {BEST_MODEL} or {FINAL_MODEL}: pass a run folder of `deep-sarsa train`, "
        "a checkpoint folder or a model file"
    )


def _run_env(run: dict[str, Any]) -> EnvSettings:
    return EnvSettings(run["env_id"], run.get("env_wrapper"), run.get("env_kwargs"))


def _env_of(model_path: pathlib.Path, env_id: str | None) -> tuple[EnvSettings, str]:
    """The env to evaluate a model on: --env (with its preset's settings), else the run's run.json; and where it comes from."""
    if env_id is not None:
        entry = load_presets().get(env_id)
        return EnvSettings(env_id, entry.env_wrapper, entry.env_kwargs) if entry else EnvSettings(env_id), "preset"
    run_file = _find_run_file(model_path)
    if run_file is None:
        raise UsageError(
            f"{model_path}: no {RUN_FILE} beside the model or in the folders above it to say its env: pass --env ENV_ID"
        )
    run = _read_run(run_file)
    return _run_env(run), str(run_file)


def _load(model_path: pathlib.Path, trusted: bool, **kwargs: Any) -> DeepSARSA:
    try:
        return DeepSARSA.load(model_path, device="cpu", trusted=trusted, **kwargs)
    except UnsafeFileError as error:
        raise UsageError(str(error).replace("with trusted=True", "with --trusted")) from error
    except (ValueError, FileNotFoundError, IsADirectoryError) as error:
        raise UsageError(str(error)) from error


def _clear_run_folder(output: pathlib.Path, force: bool) -> None:
    """Refuse to train into a folder that holds a run (its files would mix with the new ones), unless --force."""
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file: the run folder must be a folder")
    used = [name for name in RUN_ENTRIES if (output / name).exists()]
    if not used:
        return
    if not force:
        raise UsageError(
            f"{output} already holds a run ({', '.join(used)}): continue it with `deep-sarsa train --resume {output}`, "
            "replace it with --force, or pass another --output"
        )
    for name in used:
        entry = output / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _write_json(path: pathlib.Path, content: dict[str, Any]) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(content, indent=2) + "\n")


# --- train ------------------------------------------------------------------------------------


EVALUATIONS = pathlib.Path("eval") / "evaluations.npz"


class _RunEvaluations(EvalCallback):
    """
    What the run's periodic evaluations add to SB3's ``EvalCallback``: each evaluation's episodes
    are seeded by the step (``seed + num_timesteps``), so that a resumed run evaluates as the
    uninterrupted one would; the log is written atomically (a kill never leaves a torn
    ``evaluations.npz``), and a resumed run takes over the evaluations logged up to its step.
    :class:`_MaskedEvaluations` puts it before sb3-contrib's ``MaskableEvalCallback``.
    """

    def setup_run(self, model: DeepSARSA, output: pathlib.Path, seed: int) -> None:
        """
        :param model: the model, at step 0 or resumed
        :param output: the run folder
        :param seed: the evaluation seed
        """
        self.run_log, self.eval_seed = output / EVALUATIONS, seed
        if model.num_timesteps > 0 and self.run_log.exists():
            try:
                with np.load(self.run_log) as data:
                    kept = data["timesteps"] <= model.num_timesteps  # later ones (after a kill) are evaluated again
                    self.evaluations_timesteps = [int(t) for t in data["timesteps"][kept]]
                    self.evaluations_results = [list(map(float, r)) for r in data["results"][kept]]
                    self.evaluations_length = [list(map(int, n)) for n in data["ep_lengths"][kept]]
            except (OSError, ValueError, KeyError) as error:
                raise UsageError(f"{self.run_log}: not a readable evaluation log: {error}") from error
            if self.evaluations_results:
                self.best_mean_reward = float(max(np.mean(r) for r in self.evaluations_results))
        # on_step counts calls from 0 in every learn(): start where the run is, to keep the same schedule
        self.n_calls = model.num_timesteps // model.n_envs

    def _on_step(self) -> bool:
        due = self.eval_freq > 0 and self.n_calls % self.eval_freq == 0
        if due:
            self.eval_env.seed(self.eval_seed + self.num_timesteps)
        continue_training = super()._on_step()
        if due:
            with atomic_path(self.run_log) as temporary, open(temporary, "wb") as file:
                np.savez(
                    file,
                    timesteps=self.evaluations_timesteps,
                    results=self.evaluations_results,
                    ep_lengths=self.evaluations_length,
                )
        return continue_training


class _MaskedEvaluations(_RunEvaluations, MaskableEvalCallback):
    """The run's evaluations with the env's action masks."""


def _eval_callback(
    model: DeepSARSA, eval_env: VecEnv, output: pathlib.Path, every: int, episodes: int, seed: int
) -> _RunEvaluations:
    """
    Periodic evaluation every ``every`` calls (env steps / n_envs), keeping the best model in
    ``output/best_model.zip``, masked when the env has masks; on a resumed run, going on with its log.
    """
    kwargs: dict[str, Any] = dict(
        eval_freq=every,
        n_eval_episodes=episodes,
        # SB3 writes its log in place: it goes to a scratch file, and _RunEvaluations writes the real one
        log_path=str(output / "eval" / ".scratch"),
        best_model_save_path=str(output),
        verbose=0,
    )
    callback = _MaskedEvaluations(eval_env, **kwargs) if _masked(model, eval_env) else _RunEvaluations(eval_env, **kwargs)
    callback.setup_run(model, output, seed)
    return callback


def _learn(
    model: DeepSARSA, run: dict[str, Any], output: pathlib.Path, progress_bar: bool
) -> tuple[int, _RunEvaluations, float, float]:
    """
    Learn up to the run's planned steps with evaluation and exact checkpoints.

    :return: the exit code, the evaluation callback, the seconds and the env steps per second
    """
    eval_env = _vec_env(_run_env(run), 1, run["seed"] + 10_000)
    n_envs = int(run["n_envs"])
    every = max(run["eval_freq"] // n_envs, 1)
    evaluation = _eval_callback(model, eval_env, output, every, run["eval_episodes"], run["seed"] + 10_000)
    saver = SaveOnInterrupt(output / CHECKPOINT_FOLDER, save_freq=run["checkpoint_freq"])
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
    model: DeepSARSA, run: dict[str, Any], output: pathlib.Path, evaluation: _RunEvaluations, seconds: float, rate: float
) -> None:
    """Save the final model, evaluate it, draw the curve, print the summary."""
    model.save(output / FINAL_MODEL)
    (output / "eval" / ".scratch.npz").unlink(missing_ok=True)
    eval_env = _vec_env(_run_env(run), 1, run["seed"] + 20_000)
    returns, _ = _evaluate(model, eval_env, run["eval_episodes"])
    eval_env.close()
    curve = _plot([output], output / "learning_curve.png")

    table = Table(title=f"DeepSARSA on {run['env_id']}", show_header=False)
    table.add_column("setting", style="bold")
    table.add_column("value")
    best = "no evaluation during the run"
    if evaluation.evaluations_results:
        means = [float(np.mean(r)) for r in evaluation.evaluations_results]
        at = evaluation.evaluations_timesteps[int(np.argmax(means))]
        best = f"{max(means):.2f} at step {at} ({output / BEST_MODEL})"
    rows = [
        ("next_action", str(run["hyperparameters"].get("next_action", "sampled"))),
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
    next_action = hyperparameters.get("next_action", "sampled")
    output = args.output or pathlib.Path("runs") / f"{args.env_id.replace(':', '_')}-{next_action}-seed{seed}"
    try:  # the keywords are checked before anything in the run folder is touched
        DeepSARSA("MlpPolicy", make_wrapped_env(settings), _init_setup_model=False, **hyperparameters)
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error
    _clear_run_folder(output, args.force)
    output.mkdir(parents=True, exist_ok=True)

    env = _vec_env(settings, n_envs, seed, monitor_dir=output / "monitor")
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
    _write_json(output / RUN_FILE, run)
    code, evaluation, seconds, rate = _learn(model, run, output, not args.no_progress_bar)
    if code == 0:
        _finish(model, run, output, evaluation, seconds, rate)
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
    run = _read_run(output / RUN_FILE)
    checkpoint = output / CHECKPOINT_FOLDER
    if not checkpoint.is_dir():
        raise UsageError(f"--resume {output}: the run has no checkpoint to continue from ({checkpoint} is missing)")
    try:
        model = load_checkpoint(checkpoint, device="auto", trusted=args.trusted)
    except UnsafeFileError as error:
        raise UsageError(str(error).replace("with trusted=True", "with --trusted")) from error
    except (FileNotFoundError, CheckpointError) as error:
        raise UsageError(str(error)) from error
    if model.num_timesteps >= int(run["timesteps"]):
        if (output / FINAL_MODEL).exists():
            console.print(f"{output}: the run is complete ({model.num_timesteps} of {run['timesteps']} steps)", soft_wrap=True)
            return 0
        # stopped after its last checkpoint, before the final model was written: finish it
        evaluation = _eval_callback(model, _vec_env(_run_env(run), 1, 0), output, 1, 1, 0)
        _finish(model, run, output, evaluation, 0.0, 0.0)
        return 0
    console.print(f"resuming {output} at step {model.num_timesteps} of {run['timesteps']}", soft_wrap=True)
    code, evaluation, seconds, rate = _learn(model, run, output, not args.no_progress_bar)
    if code == 0:
        _finish(model, run, output, evaluation, seconds, rate)
    return code


def evaluate(args: argparse.Namespace) -> int:
    """Evaluate a saved model: mean ± std of the return, episode lengths."""
    model_path = _model_file(args.model)
    # buffer_size=1: evaluating needs no replay buffer (the saved one may be large)
    model = _load(model_path, args.trusted, buffer_size=1)
    settings, where = _env_of(model_path, args.env)
    env_id = settings.env_id
    eval_env = _vec_env(settings, 1, args.seed, where=where, trusted=args.trusted)
    returns, lengths = _evaluate(model, eval_env, args.episodes, deterministic=not args.stochastic)
    summary = {
        "model": str(model_path),
        "env_id": env_id,
        "episodes": args.episodes,
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "mean_length": float(np.mean(lengths)),
        "returns": returns,
        "lengths": lengths,
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    table = Table(title=f"{model_path} on {env_id}")
    for column in ("episodes", "mean return", "std", "mean length", "min / max return"):
        table.add_column(column, justify="right")
    table.add_row(
        str(args.episodes),
        f"{summary['mean_return']:.2f}",
        f"{summary['std_return']:.2f}",
        f"{summary['mean_length']:.1f}",
        f"{min(returns):.2f} / {max(returns):.2f}",
    )
    console.print(table)
    return 0


class _VideoWriter:
    """
    Writes RGB frames to an MP4 file (H.264, yuv420p) with imageio's ffmpeg plugin, one at a time.

    Frames of odd width or height are padded by one black row or column: H.264 in yuv420p needs
    even sizes.

    :param path: the MP4 file
    :param fps: frames per second
    """

    def __init__(self, path: pathlib.Path, fps: int) -> None:
        import imageio.v2 as imageio

        # Written next to the target and renamed when complete: an interrupted recording leaves no broken file
        self.path, self.partial = path, path.with_name(f".{path.stem}.partial.mp4")
        self.writer = imageio.get_writer(
            self.partial, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1
        )
        self.frames = 0

    def append(self, frame: np.ndarray) -> None:
        """
        :param frame: an ``(H, W, 3)`` uint8 image
        """
        height, width = frame.shape[:2]
        frame = np.pad(np.asarray(frame, dtype=np.uint8), ((0, height % 2), (0, width % 2), (0, 0)))
        self.writer.append_data(frame)
        self.frames += 1

    def close(self, complete: bool) -> None:
        """
        Finish the file.

        :param complete: keep the video (renamed to its final name), else delete it
        """
        self.writer.close()
        if complete:
            self.partial.replace(self.path)
        else:
            self.partial.unlink(missing_ok=True)


def _require_video_extra() -> None:
    try:
        import imageio  # noqa: F401
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as error:
        raise MissingExtra(f"--record needs imageio and imageio-ffmpeg ({error}): pip install 'deep-sarsa[video]'") from error


def _action(model: DeepSARSA, env: gym.Env, obs: Any) -> Any:
    """The greedy action, masked when the env has masks; an int for a Discrete space (toy-text envs index with it)."""
    masks = get_action_masks(env) if _masked(model, env) else None
    action, _ = model.predict(obs, deterministic=True, action_masks=masks)
    return int(action) if isinstance(env.action_space, gym.spaces.Discrete) else action


def enjoy(args: argparse.Namespace) -> int:
    """Watch a saved model (needs a display), or record it to a GIF or an MP4 video."""
    output = args.gif or args.record
    if output is not None and not output.parent.is_dir():
        raise UsageError(f"cannot write {output}: the folder {output.parent} does not exist")
    if args.record is not None:
        if args.record.suffix.lower() != ".mp4":
            raise UsageError(f"--record writes an MP4 video: the file name must end in .mp4, got {args.record}")
        _require_video_extra()
    model_path = _model_file(args.model)
    model = _load(model_path, args.trusted, buffer_size=1)
    settings, where = _env_of(model_path, args.env)
    render_mode = "rgb_array" if output is not None else "human"
    env = make_wrapped_env(settings, render_mode=render_mode, where=where, trusted=args.trusted)
    frames: list[np.ndarray] = []
    video = _VideoWriter(args.record, int(env.metadata.get("render_fps") or 30)) if args.record else None
    complete = False
    try:
        for episode in range(args.episodes):
            obs, _ = env.reset(seed=args.seed + episode)
            done, total = False, 0.0
            while not done:
                if video is not None:
                    video.append(np.asarray(env.render()))
                elif args.gif:
                    frames.append(np.asarray(env.render()))
                obs, reward, terminated, truncated, _ = env.step(_action(model, env, obs))
                total += float(reward)
                done = terminated or truncated
            console.print(f"episode {episode + 1}: return {total:.2f}")
        complete = True
    finally:
        env.close()
        if video is not None:
            video.close(complete)
    if video is not None:
        console.print(f"recorded {video.frames} frames to {args.record}", soft_wrap=True)
    if args.gif:
        from PIL import Image

        images = [Image.fromarray(frame) for frame in frames]
        images[0].save(args.gif, save_all=True, append_images=images[1:], duration=33, loop=0)
        console.print(f"recorded {len(images)} frames to {args.gif}", soft_wrap=True)
    return 0


def _plot(run_folders: Sequence[pathlib.Path], output: pathlib.Path) -> pathlib.Path | None:
    """Learning curves (periodic evaluations) of the runs in one PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(6, 4))
    for folder in run_folders:
        evaluations = folder / EVALUATIONS
        if not evaluations.exists():
            raise UsageError(f"{folder}: no eval/evaluations.npz (is it a folder written by `deep-sarsa train`?)")
        with np.load(evaluations) as data:
            timesteps, results = data["timesteps"], data["results"]
        if len(timesteps) == 0:
            continue
        means, stds = results.mean(axis=1), results.std(axis=1)
        axis.plot(timesteps, means, label=folder.name)
        axis.fill_between(timesteps, means - stds, means + stds, alpha=0.2)
    axis.set_xlabel("env steps")
    axis.set_ylabel("evaluation return (mean ± std)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output


def plot(args: argparse.Namespace) -> int:
    """Learning curves of one or more runs in one PNG."""
    output = _plot(args.runs, args.output)
    if output is None:
        raise UsageError("plot needs matplotlib: pip install matplotlib")
    console.print(f"wrote {output}", soft_wrap=True)
    return 0


def _add_trusted(parser: argparse.ArgumentParser, what: str = "the model") -> None:
    parser.add_argument(
        "--trusted",
        action="store_true",
        help=f"load {what} as SB3 does, running any code its files name (only for files you trust; see docs/trust.md)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``deep-sarsa`` argument parser (plain-text help)."""
    parser = argparse.ArgumentParser(
        prog="deep-sarsa", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "train",
        help="train a model (or continue one with --resume)",
        description="Train DeepSARSA into a run folder: periodic evaluations, the best and the final model, "
        "exact checkpoints (also on Ctrl-C and SIGTERM), monitor logs, a learning curve.",
    )
    p.add_argument("env_id", nargs="?", default=None, help="a Gymnasium env id, or module:EnvId")
    p.add_argument(
        "--resume", type=pathlib.Path, default=None, metavar="RUN_DIR", help="continue this run to its planned steps"
    )
    p.add_argument("--timesteps", type=int, default=None, help="env steps (default: the preset's budget, else 50000)")
    p.add_argument(
        "--preset",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start from DeepSARSA's preset for the env (deep_sarsa/hyperparams/deep_sarsa.yml), its wrappers included",
    )
    p.add_argument("--hyperparams", nargs="*", default=[], metavar="KEY=VALUE", help="any DeepSARSA keyword")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--n-envs", type=int, default=None, help="default 1")
    p.add_argument(
        "--next-action",
        choices=NEXT_ACTIONS,
        default=None,
        help="the TD target's next action (default: the preset's); with --preset, its own preset where one was tuned "
        "(deep_sarsa_VARIANT.yml), else the task preset's hyperparameters",
    )
    p.add_argument("--eval-episodes", type=int, default=None, help="default 10")
    p.add_argument("--output", type=pathlib.Path, default=None, help="run folder (default runs/ENV-VARIANT-seedS)")
    p.add_argument("--force", action="store_true", help="replace the run already in the run folder")
    p.add_argument("--tensorboard", action="store_true")
    p.add_argument("--no-progress-bar", action="store_true")
    _add_trusted(p, "the checkpoint of --resume")
    p.set_defaults(func=train)

    p = commands.add_parser(
        "evaluate", help="evaluate a saved model", description="Evaluate a saved model or a run's best model."
    )
    p.add_argument("model", type=pathlib.Path, help="a model file, a run folder (its best model) or a checkpoint folder")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--env", default=None, help="env id (default: the one in the run's run.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stochastic", action="store_true", help="ε-greedy instead of greedy")
    p.add_argument("--json", action="store_true")
    _add_trusted(p)
    p.set_defaults(func=evaluate)

    p = commands.add_parser(
        "enjoy", help="watch a saved model, or record it", description="Watch a saved model, or record it."
    )
    p.add_argument("model", type=pathlib.Path, help="a model file, a run folder (its best model) or a checkpoint folder")
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--env", default=None, help="env id (default: the one in the run's run.json)")
    p.add_argument("--seed", type=int, default=0)
    recording = p.add_mutually_exclusive_group()
    recording.add_argument("--gif", type=pathlib.Path, default=None, help="record to this GIF instead of showing a window")
    recording.add_argument(
        "--record", type=pathlib.Path, default=None, metavar="VIDEO.mp4", help="record to this MP4 video (extra: video)"
    )
    _add_trusted(p)
    p.set_defaults(func=enjoy)

    p = commands.add_parser(
        "plot", help="learning curves of runs in one PNG", description="Learning curves of runs in one PNG."
    )
    p.add_argument("runs", type=pathlib.Path, nargs="+")
    p.add_argument("--output", type=pathlib.Path, default=pathlib.Path("learning_curves.png"))
    p.set_defaults(func=plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deep-sarsa`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except NonFiniteError as error:
        errors.print(f"[red]training stopped:[/] {escape(str(error))}")
        return 1
    except (MissingExtra, RunFailed) as error:
        errors.print(f"[red]error:[/] {escape(str(error))}")
        return 1
    except (UsageError, ValueError) as error:
        errors.print(f"[red]error:[/] {escape(str(error))}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
