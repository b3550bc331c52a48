"""
How a run makes its env (:class:`EnvSettings`: an env id, ``env_kwargs``, ``env_wrapper``), and what a run.json that
is not trusted may name.

``run.json`` is data, never code, unless it is trusted: signed with the user's key (a run of theirs, unchanged) or
opened with ``--trusted``. Otherwise :func:`check_env_settings`, the one check that ``evaluate``, ``enjoy`` and
``train --resume`` all go through before making an env, refuses a ``module:EnvId`` env id and a wrapper outside
:data:`SAFE_WRAPPER_MODULES` (importing either runs the module's code), and keywords that are paths outside the run
folder (Monitor's ``filename``, RecordVideo's ``video_folder``: files written where the folder's author chose).
"""

import importlib
import pathlib
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import gymnasium as gym
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv

from deep_sarsa.cli.common import RUN_FILE, UsageError
from deep_sarsa.signing import key_path
from deep_sarsa.validation import make_env

#: modules whose wrappers a run.json may name without --trusted (importing another module runs its code)
SAFE_WRAPPER_MODULES = ("gymnasium.", "stable_baselines3.", "sb3_contrib.", "deep_sarsa.")
#: keywords (of a wrapper, of the env) whose values are paths: files the env or the wrapper writes or reads
PATH_KEYWORD = re.compile(r"file|folder|dir|path|prefix", re.IGNORECASE)
#: what every refusal of a folder's settings ends with
TRUST_FOLDER = "refused, nothing was run; if you trust this run folder, pass --trusted"


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


def is_safe_module(path: str, safe: tuple[str, ...] = SAFE_WRAPPER_MODULES) -> bool:
    """
    :param path: ``module.Name``
    :param safe: the module prefixes that are safe to import
    :return: whether importing the module of ``path`` runs only code of those installed packages, and no script
        (a ``__main__`` module runs its command when imported)
    """
    return path.startswith(safe) and "__main__" not in path.split(".")


def _unsafe_wrapper(path: str, where: str, safe: tuple[str, ...] = SAFE_WRAPPER_MODULES) -> UsageError:
    return UsageError(
        f"{where}: env_wrapper {path!r} is outside {', '.join(m.rstrip('.') for m in safe)}: importing it would run "
        f"the code of its module {path.rpartition('.')[0]!r}; {TRUST_FOLDER}"
    )


def _import_wrapper(path: str, where: str, trusted: bool) -> Callable[..., gym.Env]:
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise UsageError(f"{where}: env_wrapper {path!r} must be a full import path, 'module.Wrapper'")
    if not trusted and not is_safe_module(path):
        raise _unsafe_wrapper(path, where)
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
    #: whether the settings may run code from any module: the user's own (typed, the package's presets, a run.json
    #: signed with the user's key); False for a run.json that is not signed (:func:`check_env_settings`)
    trusted: bool = True
    #: the run.json they were read from (None: typed, or a preset)
    source: pathlib.Path | None = None


def _inside(value: str, folder: pathlib.Path) -> bool:
    """Whether the path ``value`` (relative to the working folder, as the env opens it) is inside ``folder``."""
    if "\0" in value:
        return False
    resolved, root = (pathlib.Path.cwd() / value).resolve(), folder.resolve()
    return resolved == root or root in resolved.parents


def check_path_keywords(keywords: Any, folder: pathlib.Path, where: str, what: str) -> None:
    """
    Refuse the keywords of a folder's env or wrapper that are paths (:data:`PATH_KEYWORD`: Monitor's
    ``filename``, RecordVideo's ``video_folder`` and ``name_prefix``, ...) outside ``folder``: the env or the wrapper
    would write (or read) files where the folder's author chose.

    :param keywords: the keywords (a dict; anything else is refused)
    :param folder: the folder they must stay in
    :param where: the file they come from, for the message
    :param what: whose keywords they are, for the message
    :raises UsageError: a keyword that is a path outside ``folder``
    """
    if keywords is None:
        return
    if not isinstance(keywords, dict):
        raise UsageError(f"{where}: {what} must be a mapping of keywords to values, got {keywords!r}")
    for key, value in keywords.items():
        if value is None or not PATH_KEYWORD.search(str(key)):
            continue
        if "prefix" in str(key).lower():  # a file name prefix, joined to a folder
            ok = isinstance(value, str) and not ({"/", "\\", "\0"} & set(value)) and value not in (".", "..")
        else:
            ok = isinstance(value, str) and _inside(value, folder)
        if not ok:
            raise UsageError(
                f"{where}: {what} keyword {key}={value!r} is a path outside the folder {folder}: the env would write or "
                f"read files there; {TRUST_FOLDER}"
            )


def check_env_settings(settings: EnvSettings, trusted: bool = False) -> None:
    """
    The check of a run.json's env settings that ``evaluate``, ``enjoy`` and ``train --resume`` all go through,
    before anything is imported or made: settings that are not trusted (a run.json not signed with the user's key,
    without ``--trusted``) may not name a ``module:EnvId`` env id or a wrapper outside :data:`SAFE_WRAPPER_MODULES`
    (importing the module would run its code), nor keywords that are paths outside the run folder
    (:func:`check_path_keywords`).

    :param settings: the settings
    :param trusted: ``--trusted``
    :raises UsageError: naming the file, what would have run, and ``--trusted``
    """
    if trusted or settings.trusted:
        return
    source = settings.source if settings.source is not None else pathlib.Path(RUN_FILE)
    where = f"{source} (not signed with your key {key_path()})"
    module, colon, _ = settings.env_id.partition(":")
    if colon:
        raise UsageError(
            f"{where}: env_id {settings.env_id!r} would import the module {module!r}, running its code; {TRUST_FOLDER}"
        )
    for path, kwargs in _wrapper_entries(settings.env_wrapper, str(source)):
        if not path.rpartition(".")[0]:
            raise UsageError(f"{source}: env_wrapper {path!r} must be a full import path, 'module.Wrapper'")
        if not is_safe_module(path):
            raise _unsafe_wrapper(path, str(source))
        check_path_keywords(kwargs, source.parent, where, f"env_wrapper {path!r}")
    check_path_keywords(settings.env_kwargs, source.parent, where, "env_kwargs")


def make_wrapped_env(
    settings: EnvSettings, render_mode: str | None = None, where: str = "preset", trusted: bool = False
) -> gym.Env:
    """
    ``gym.make(env_id, **env_kwargs)`` with the wrappers of ``env_wrapper``, innermost first, once
    :func:`check_env_settings` has passed.

    :param settings: the env id, ``env_kwargs`` and ``env_wrapper``, and whether they are trusted
    :param render_mode: Gymnasium's ``render_mode``
    :param where: where the settings come from, for error messages (default: their run.json, else "preset")
    :param trusted: ``--trusted``: settings from any run.json may import wrappers from any module (settings that are
        trusted themselves always may)
    :return: the environment
    """
    check_env_settings(settings, trusted)
    trusted = trusted or settings.trusted
    where = str(settings.source) if settings.source is not None else where
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
    trusted: bool = False,
) -> VecEnv:
    """The training or evaluation VecEnv: the wrapped env under SB3's Monitor (which then sees time limits)."""
    check_env_settings(settings, trusted)
    return make_vec_env(
        lambda: make_wrapped_env(settings, where=where, trusted=trusted),
        n_envs=n_envs,
        seed=seed,
        monitor_dir=None if monitor_dir is None else str(monitor_dir),
    )
