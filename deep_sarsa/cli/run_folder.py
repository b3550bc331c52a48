"""
The run folder that ``deep-sarsa train`` writes and the other commands read, and what every command
shares: the consoles and the error types that :func:`deep_sarsa.cli.parser.main` turns into exit codes;
the run folder's file names, its ``run.json`` (read, and written atomically, with its values as
JSON stores them) and the model a folder stands for; the run's env settings (:class:`EnvSettings`,
:func:`make_wrapped_env`, with wrappers imported only from safe modules unless trusted) and its
VecEnvs; loading a model safely; and clearing a folder before a new run.
"""

import importlib
import json
import pathlib
import shutil
from collections.abc import Callable
from typing import Any, NamedTuple

import gymnasium as gym
from rich.console import Console
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv

from deep_sarsa.checkpoint import latest_checkpoint
from deep_sarsa.deep_sarsa import DeepSARSA
from deep_sarsa.files import atomic_path
from deep_sarsa.presets import load_presets
from deep_sarsa.safe_pickle import UnsafeFileError
from deep_sarsa.validation import make_env

console = Console()
#: errors go to stderr, unwrapped, so that they can be read (and grepped) whole
errors = Console(stderr=True, soft_wrap=True)

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
#: the run's evaluation log, in the run folder
EVALUATIONS = pathlib.Path("eval") / "evaluations.npz"


class UsageError(Exception):
    """Bad input from the user: reported without a traceback, exit code 2."""


class MissingExtra(Exception):
    """An optional package that the command needs is not installed: exit code 1."""


class RunFailed(Exception):
    """Training could not go on (e.g. a full disk); the message says what is left: exit code 1."""


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


def vec_env(
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


# --- run folders ------------------------------------------------------------------------------


def _find_run_file(path: pathlib.Path) -> pathlib.Path | None:
    """The run.json of the run a model, checkpoint or run folder belongs to (the path itself or up to 3 folders up)."""
    folder = path if path.is_dir() else path.parent
    for candidate in [folder, *folder.parents][:4]:
        if (candidate / RUN_FILE).is_file():
            return candidate / RUN_FILE
    return None


def read_run(run_file: pathlib.Path) -> dict[str, Any]:
    try:
        run = json.loads(run_file.read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"{run_file}: not a readable run file: {error}") from error
    if not isinstance(run, dict) or not isinstance(run.get("env_id"), str):
        raise UsageError(f"{run_file}: not a run file written by `deep-sarsa train` (no env_id)")
    return run


def model_file(path: pathlib.Path) -> pathlib.Path:
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


def run_env(run: dict[str, Any]) -> EnvSettings:
    return EnvSettings(run["env_id"], run.get("env_wrapper"), run.get("env_kwargs"))


def env_of(model_path: pathlib.Path, env_id: str | None) -> tuple[EnvSettings, str]:
    """The env to evaluate a model on: --env (with its preset's settings), else the run's run.json; and where it comes from."""
    if env_id is not None:
        entry = load_presets().get(env_id)
        return EnvSettings(env_id, entry.env_wrapper, entry.env_kwargs) if entry else EnvSettings(env_id), "preset"
    run_file = _find_run_file(model_path)
    if run_file is None:
        raise UsageError(
            f"{model_path}: no {RUN_FILE} beside the model or in the folders above it to say its env: pass --env ENV_ID"
        )
    run = read_run(run_file)
    return run_env(run), str(run_file)


def load_model(model_path: pathlib.Path, trusted: bool, **kwargs: Any) -> DeepSARSA:
    try:
        return DeepSARSA.load(model_path, device="cpu", trusted=trusted, **kwargs)
    except UnsafeFileError as error:
        raise UsageError(str(error).replace("with trusted=True", "with --trusted")) from error
    except (ValueError, FileNotFoundError, IsADirectoryError) as error:
        raise UsageError(str(error)) from error


def clear_run_folder(output: pathlib.Path, force: bool) -> None:
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


def write_json(path: pathlib.Path, content: dict[str, Any]) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(content, indent=2) + "\n")
