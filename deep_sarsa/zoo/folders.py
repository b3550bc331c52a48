"""
Reading a trained rl-zoo3 folder (a log folder of ``train``, what ``load_from_hub`` downloads) without running any
of its code, unless ``--trusted`` (docs/trust.md, "Folders").

rl-zoo3 reads a folder as a script: ``args.yml`` and ``config.yml`` with PyYAML's unsafe loader (a ``!!python/...``
tag calls any function), the ``normalize`` of ``config.yml`` with ``eval`` when it is a string (rl-zoo3 issue #505),
the wrappers it names by importing their modules, and ``vecnormalize.pkl`` with plain ``pickle``. While
:func:`reading_folders` is active (``python -m deep_sarsa.zoo`` runs every command inside it), those reads go through
this module instead:

- :class:`FolderLoader` stands for PyYAML's ``UnsafeLoader``: it accepts what rl-zoo3 writes (plain scalars, lists,
  maps, the ``collections.OrderedDict`` tag of its dumps, tuples) and refuses any other tag, naming the file, the key
  and ``--trusted``;
- :func:`read_saved_hyperparams` stands for ``rl_zoo3.utils.get_saved_hyperparams``: ``normalize`` is read as a
  literal (``True``, ``False``, ``dict(...)`` or ``{...}`` of literals), never evaluated; the wrappers and callbacks
  of ``config.yml`` come only from :data:`SAFE_MODULES`, as classes of the right kind, and their keywords that are
  paths stay inside the folder;
- ``VecNormalize.load`` (in ``rl_zoo3.utils`` and ``rl_zoo3.exp_manager``) reads through the package's restricted
  unpickler (:data:`deep_sarsa.safe_pickle.VECNORMALIZE_GLOBALS`);
- ``get_trained_models`` (``benchmark``) refuses a folder whose ``args.yml`` names a ``module:EnvId`` env id;
- the model of an algorithm other than DeepSARSA, which SB3's ``load`` would unpickle, is refused.

Every file of the folder read here (the yml files, ``vecnormalize.pkl``) is read through :mod:`deep_sarsa.gate`: a
regular file (not a FIFO or a device), under a size cap.

Everything is put back when the command ends; nothing changes at import, and nothing at all with ``--trusted``.
"""

from __future__ import annotations

import ast
import glob
import importlib
import os
import pathlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import yaml
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecNormalize

from deep_sarsa.cli.env_settings import SAFE_WRAPPER_MODULES, check_path_keywords, is_safe_module
from deep_sarsa.gate import memory_cap, named_bytes, read_pickle, read_regular
from deep_sarsa.safe_pickle import VECNORMALIZE_GLOBALS, UnsafeFileError, one_line

#: modules whose wrappers and callbacks a folder may name without --trusted (importing another module runs its code)
SAFE_MODULES = (*SAFE_WRAPPER_MODULES, "rl_zoo3.")
#: how every refusal ends
TRUST_HINT = "refused, nothing was run; if you trust this folder, pass --trusted (which reads it as rl-zoo3 does)"
#: the tag of rl-zoo3's dumps of an OrderedDict (``args.yml``, ``config.yml``)
ORDERED_DICT_TAG = "tag:yaml.org,2002:python/object/apply:collections.OrderedDict"
TUPLE_TAG = "tag:yaml.org,2002:python/tuple"
#: the tags a folder's yml may carry: PyYAML's safe ones (data only) and the two above
DATA_TAGS = frozenset(tag for tag in yaml.SafeLoader.yaml_constructors if tag is not None) | {ORDERED_DICT_TAG, TUPLE_TAG}
#: what the named classes of a config.yml must be, by key
NAMED_CLASSES: dict[str, type] = {"env_wrapper": gym.Wrapper, "vec_env_wrapper": VecEnvWrapper, "callback": BaseCallback}
#: the longest ``normalize`` string read as a literal
MAX_LITERAL = 10_000
#: the largest yml file of a folder read (rl-zoo3's are a few KB)
MAX_YML_BYTES = 1 << 20
#: the largest ``vecnormalize.pkl`` read (lowered to the memory available; SB3's holds a few running statistics)
MAX_VECNORMALIZE_BYTES = 1 << 30

_trusted = False


class UnsafeFolderError(UnsafeFileError):
    """A file of a folder that would run code (or write outside the folder) when rl-zoo3 reads it: refused."""


def trusted() -> bool:
    """
    :return: whether the command runs with ``--trusted`` (folders are read as rl-zoo3 reads them)
    """
    return _trusted


# --- yml ---------------------------------------------------------------------------------------------------------


def _short(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


def _key_name(path: list[str]) -> str:
    return "".join(part if part.startswith("[") else ("." if index else "") + part for index, part in enumerate(path))


def _refuse_tag(file: str, node: yaml.Node, path: list[str], what: str) -> UnsafeFolderError:
    where = f"key {_key_name(path)!r}" if path else "the document"
    return UnsafeFolderError(
        f"{file}: {where} (line {node.start_mark.line + 1}) {what}; a folder's yml may hold only plain values, lists, "
        f"maps and rl-zoo3's OrderedDict: {TRUST_HINT}"
    )


def _tag_effect(tag: str) -> str:
    """What PyYAML's unsafe loader does with a tag."""
    kind, _, target = tag.removeprefix("tag:yaml.org,2002:").partition(":")
    if kind.startswith("python/") and target:
        action = "import the module" if kind == "python/module" else "import and call" if "object" in kind else "import"
        return f"has the tag {_short(tag)}: rl-zoo3's unsafe YAML loader would {action} {target}"
    return f"has the tag {_short(tag)}, which is not data that rl-zoo3 writes"


def _is_pairs(node: yaml.Node) -> bool:
    """rl-zoo3's OrderedDict: one argument, a list of [key, value] pairs with plain keys."""
    if not (isinstance(node, yaml.SequenceNode) and len(node.value) == 1):
        return False
    (pairs,) = node.value
    return isinstance(pairs, yaml.SequenceNode) and all(
        isinstance(pair, yaml.SequenceNode) and len(pair.value) == 2 and isinstance(pair.value[0], yaml.ScalarNode)
        for pair in pairs.value
    )


def _check_tags(file: str, node: yaml.Node, path: list[str], seen: set[int]) -> None:
    """Refuse any node whose tag is not data (:data:`DATA_TAGS`), naming its key; nothing is constructed yet."""
    if id(node) in seen:  # an alias: checked where its anchor is
        return
    seen.add(id(node))
    if node.tag not in DATA_TAGS:
        raise _refuse_tag(file, node, path, _tag_effect(node.tag))
    if node.tag == ORDERED_DICT_TAG:
        if not _is_pairs(node):
            raise _refuse_tag(file, node, path, "is an OrderedDict not written as rl-zoo3 writes one")
        for pair in node.value[0].value:
            key, value = pair.value
            _check_tags(file, key, path, seen)
            _check_tags(file, value, [*path, str(key.value)], seen)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _check_tags(file, key, path, seen)
            _check_tags(file, value, [*path, str(key.value) if isinstance(key, yaml.ScalarNode) else "?"], seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_tags(file, item, [*path, f"[{index}]"], seen)


class FolderLoader(yaml.SafeLoader):
    """
    PyYAML's safe loader, plus the OrderedDict and tuple tags of rl-zoo3's dumps; any other tag is refused with
    :class:`UnsafeFolderError` before anything is constructed. The env keywords of ``args.yml`` and ``config.yml``
    that are paths must stay inside the folder (:func:`check_settings`).
    """

    def get_single_data(self) -> Any:
        """
        :return: the document's data
        :raises UnsafeFolderError: a tag that is not data
        """
        file = str(self.name)
        try:
            node = self.get_single_node()
        except yaml.YAMLError as error:
            raise ValueError(f"{file}: not a readable yml file: {one_line(error)}") from error
        if node is None:
            return None
        _check_tags(file, node, [], set())
        try:
            data = self.construct_document(node)
        except (yaml.YAMLError, TypeError, ValueError) as error:  # e.g. a list as a key
            raise ValueError(f"{file}: not a yml file as rl-zoo3 writes it: {one_line(error)}") from error
        check_settings(file, data)
        return data


def _ordered_dict(loader: yaml.SafeLoader, node: yaml.Node) -> OrderedDict[Any, Any]:
    assert isinstance(node, yaml.SequenceNode)
    pairs = node.value[0].value
    return OrderedDict(
        (loader.construct_object(pair.value[0], deep=True), loader.construct_object(pair.value[1], deep=True))
        for pair in pairs
    )


def _tuple(loader: yaml.SafeLoader, node: yaml.Node) -> tuple[Any, ...]:
    assert isinstance(node, yaml.SequenceNode)
    return tuple(loader.construct_sequence(node, deep=True))


FolderLoader.add_constructor(ORDERED_DICT_TAG, _ordered_dict)
FolderLoader.add_constructor(TUPLE_TAG, _tuple)


def load_yml(path: str | os.PathLike[str]) -> Any:
    """
    :param path: a yml file of a folder
    :return: its data, read with :class:`FolderLoader`
    """
    content = read_regular(path, "a yml file", MAX_YML_BYTES)  # through the gate: a regular file, under a cap
    return yaml.load(named_bytes(content, str(path)), Loader=FolderLoader)  # a SafeLoader


# --- what the settings name ---------------------------------------------------------------------------------------


def _log_folder(file: str) -> pathlib.Path:
    """The run's log folder (``logs/ALGO/ENV_1``) of its ``ENV/config.yml`` or ``ENV/args.yml``."""
    return pathlib.Path(file).parent.parent


def _named(value: Any) -> list[tuple[Any, Any]]:
    """rl-zoo3's ``env_wrapper`` / ``callback`` value (a name, ``{name: kwargs}``, or a list of them) as pairs."""
    items = value if isinstance(value, list) else [value]
    pairs: list[tuple[Any, Any]] = []
    for item in items:
        if isinstance(item, dict) and len(item) == 1:
            pairs.append(next(iter(item.items())))
        else:
            pairs.append((item, None))
    return pairs


def check_named_class(file: str, key: str, name: Any, base: type) -> None:
    """
    Refuse a class that a folder names, unless it is a class of ``base`` in :data:`SAFE_MODULES`: importing another
    module runs its code, and calling a function of a safe module with the folder's arguments could do anything.

    :param file: the folder's file, for the message
    :param key: its key (``env_wrapper``, ...)
    :param name: what it names (``module.Class``)
    :param base: what the class must derive from
    :raises UnsafeFolderError: naming the file, the key and the module
    """
    if not isinstance(name, str) or not name.rpartition(".")[0]:
        raise UnsafeFolderError(f"{file}: {key} {name!r} is not a 'module.Class' name: {TRUST_HINT}")
    if not is_safe_module(name, SAFE_MODULES):
        modules = ", ".join(module.rstrip(".") for module in SAFE_MODULES)
        raise UnsafeFolderError(
            f"{file}: {key} {name!r} is outside {modules}: importing it would run the code of its module "
            f"{name.rpartition('.')[0]!r}; {TRUST_HINT}"
        )
    module_name, _, class_name = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{file}: {key} {name!r} cannot be imported: {one_line(error)}") from error
    if not (isinstance(found, type) and issubclass(found, base)):
        raise UnsafeFolderError(
            f"{file}: {key} {name!r} is not a {base.__module__}.{base.__qualname__} class (rl-zoo3 would call it): "
            f"{TRUST_HINT}"
        )


def check_settings(file: str, data: Any) -> None:
    """
    The checks of what a folder's ``config.yml`` and ``args.yml`` name: the classes of ``env_wrapper``,
    ``vec_env_wrapper`` and ``callback`` (:func:`check_named_class`), and the keywords of the env and the wrappers
    that are paths, which must stay inside the run's log folder. Other yml files are data only.

    :param file: the file
    :param data: its data
    """
    if os.path.basename(file) not in ("config.yml", "args.yml") or not isinstance(data, dict):
        return
    folder = _log_folder(file)
    for key in ("env_kwargs", "eval_env_kwargs"):
        if isinstance(data.get(key), dict):
            check_path_keywords(data[key], folder, file, key)
    if os.path.basename(file) != "config.yml":
        return
    for key, base in NAMED_CLASSES.items():
        if data.get(key) is None:
            continue
        for name, kwargs in _named(data[key]):
            check_named_class(file, key, name, base)
            check_path_keywords(kwargs, folder, file, f"{key} {name!r}")


def _shortened(text: str, limit: int = 200) -> str:
    shown = repr(" ".join(text.split()))
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def folder_literal(text: str, file: str, key: str) -> bool | dict[str, Any]:
    """
    A folder's string that rl-zoo3 would ``eval`` (``normalize``), read as a literal instead.

    :param text: the string
    :param file: its file, for the message
    :param key: its key, for the message
    :return: ``True``, ``False``, or a dict of literals (``dict(norm_obs=True)`` or ``{"norm_obs": True}``)
    :raises UnsafeFolderError: anything else, which only evaluating it could read
    """
    try:
        if len(text) > MAX_LITERAL:
            raise ValueError("too long")
        tree = ast.parse(text.strip(), mode="eval").body
        if isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and tree.func.id == "dict" and not tree.args:
            if any(keyword.arg is None for keyword in tree.keywords):
                raise ValueError("** in dict()")
            value: Any = {str(keyword.arg): ast.literal_eval(keyword.value) for keyword in tree.keywords}
        else:
            value = ast.literal_eval(tree)
        if isinstance(value, bool) or (isinstance(value, dict) and all(isinstance(name, str) for name in value)):
            return value
        raise ValueError(f"a {type(value).__name__}")
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError) as error:
        raise UnsafeFolderError(
            f"{file}: {key} is {_shortened(text)}, which rl-zoo3 would evaluate as Python code; a folder's "
            f"{key} is read only as a literal (True, False, dict(norm_obs=..., norm_reward=...) or {{...}}), and this "
            f"is not one ({one_line(error, 80)}): {TRUST_HINT}"
        ) from error


def read_saved_hyperparams(
    stats_path: str, norm_reward: bool = False, test_mode: bool = False
) -> tuple[dict[str, Any], str | None]:
    """
    What ``rl_zoo3.utils.get_saved_hyperparams`` returns (same arguments and results), read safely: ``config.yml``
    with :class:`FolderLoader`, ``normalize`` with :func:`folder_literal`.

    :param stats_path: the folder of ``config.yml`` (``logs/ALGO/ENV_1/ENV``)
    :param norm_reward: rl-zoo3's ``--norm-reward``
    :param test_mode: whether ``norm_reward`` replaces that of a ``normalize`` string (enjoy)
    :return: the hyperparameters (with ``normalize_kwargs`` when normalizing) and ``stats_path`` (None when it is not
        a folder)
    """
    if not os.path.isdir(stats_path):
        return {}, None
    config = os.path.join(stats_path, "config.yml")
    hyperparams: dict[str, Any]
    if os.path.isfile(config):
        loaded = load_yml(config)
        if not isinstance(loaded, dict):
            raise ValueError(f"{config}: not a config.yml as rl-zoo3 writes it (a map of hyperparameters)")
        hyperparams = dict(loaded)
        hyperparams["normalize"] = hyperparams.get("normalize", False)
    else:
        hyperparams = {"normalize": os.path.isfile(os.path.join(stats_path, "obs_rms.pkl"))}
    normalize = hyperparams["normalize"]
    if normalize:
        if isinstance(normalize, str):
            parsed = folder_literal(normalize, config, "normalize")
            kwargs = dict(parsed) if isinstance(parsed, dict) else {"norm_obs": parsed, "norm_reward": norm_reward}
            if test_mode:
                kwargs["norm_reward"] = norm_reward
        elif isinstance(normalize, dict):
            kwargs = normalize
        else:
            kwargs = {"norm_obs": normalize, "norm_reward": norm_reward}
        hyperparams["normalize_kwargs"] = kwargs
    return hyperparams, stats_path


# --- vecnormalize.pkl --------------------------------------------------------------------------------------------


def load_vecnormalize(load_path: str | os.PathLike[str], venv: VecEnv) -> VecNormalize:
    """
    ``VecNormalize.load``, through the restricted unpickler: only what ``VecNormalize.save`` writes (the wrapper
    without its env, its running statistics, arrays, spaces) is rebuilt; anything else is refused before it runs.

    :param load_path: the ``vecnormalize.pkl``
    :param venv: the env to wrap
    :return: the wrapper, around ``venv``
    :raises UnsafeFolderError: a pickle naming anything else
    """
    cap = memory_cap(MAX_VECNORMALIZE_BYTES)
    entry = "the pickle (SB3's VecNormalize statistics)"
    try:  # through the gate: a regular file, under a cap, opened once, unpickled with the allowlist
        source, loaded = read_pickle(load_path, "a VecNormalize statistics file", cap, entry, VECNORMALIZE_GLOBALS)
    except UnsafeFileError as error:
        text = str(error)
        cut = text.find("nothing from the file was run")
        raise UnsafeFolderError((text[:cut] if cut >= 0 else text + "; ") + TRUST_HINT) from error
    if type(loaded) is not VecNormalize:
        raise UnsafeFolderError(f"{source}: not the VecNormalize statistics that SB3 saves (a {type(loaded).__name__})")
    shadowed = sorted(name for name in vars(loaded) if callable(getattr(VecNormalize, name, None)))
    if shadowed:  # an instance attribute in place of a method
        raise UnsafeFolderError(f"{source}: the VecNormalize statistics replace its methods {shadowed}: {TRUST_HINT}")
    loaded.set_venv(venv)
    return loaded


class _VecNormalizeName:
    """What the name ``VecNormalize`` is in rl-zoo3's modules while folders are read safely: calling it makes SB3's
    ``VecNormalize`` (a new one, saved as SB3 saves it); its ``load`` is :func:`load_vecnormalize`."""

    def __call__(self, venv: VecEnv, *args: Any, **kwargs: Any) -> VecNormalize:
        return VecNormalize(venv, *args, **kwargs)

    @staticmethod
    def load(load_path: str, venv: VecEnv) -> VecNormalize:
        return load_vecnormalize(load_path, venv)


# --- benchmark's env ids, other algorithms' models -----------------------------------------------------------------


def _checked_trained_models(original: Callable[[str], dict[str, tuple[str, str]]]) -> Callable[..., Any]:
    def get_trained_models(log_folder: str) -> dict[str, tuple[str, str]]:
        """``rl_zoo3.utils.get_trained_models``, refusing an ``args.yml`` whose env id would import a module."""
        for args_file in sorted(glob.glob(os.path.join(log_folder, "*", "*", "*", "args.yml"))):
            loaded = load_yml(args_file)
            env_id = loaded.get("env") if isinstance(loaded, dict) else None
            if not isinstance(env_id, str) or ":" in env_id:
                raise UnsafeFolderError(
                    f"{args_file}: env {env_id!r} is not a registered env id (module:EnvId would import the module "
                    f"{str(env_id).partition(':')[0]!r}, running its code): {TRUST_HINT}"
                )
        return original(log_folder)

    return get_trained_models


class _RefusedAlgorithm:
    """What ``ALGOS[algo]`` is, for an algorithm other than DeepSARSA, while ``enjoy`` / ``record_video`` load a model
    safely: SB3's ``load`` unpickles the model file's entries, running any code they name."""

    def __init__(self, algo: str, algorithm: type) -> None:
        self.algo = algo
        self.algorithm = algorithm

    def load(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        raise UnsafeFolderError(
            f"{path}: --algo {self.algo} loads the model with SB3's {self.algorithm.__name__}.load, which unpickles it "
            f"and so runs any code it names (the safe loader reads --algo deep_sarsa models only): {TRUST_HINT}"
        )


@contextmanager
def reading_folders(trust: bool, playing: bool = False, algo: str = "deep_sarsa") -> Iterator[None]:
    """
    Within the ``with`` block, rl-zoo3 reads folders safely (module docstring), unless ``trust``.

    :param trust: ``--trusted``: rl-zoo3's own reads, unchanged
    :param playing: the command loads models to play them (``enjoy``, ``record_video``, ``push_to_hub``): the model
        of an algorithm other than ``algo`` is refused
    :param algo: the algorithm whose models are read safely
    """
    global _trusted
    import rl_zoo3
    import rl_zoo3.exp_manager
    import rl_zoo3.utils

    previous_trust = _trusted
    _trusted = trust
    replaced: list[tuple[Any, str, Any]] = []

    def replace(owner: Any, name: str, value: Any) -> None:
        replaced.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    algorithms = rl_zoo3.utils.ALGOS  # one dict, shared by rl-zoo3's modules
    others = {name: algorithm for name, algorithm in algorithms.items() if name != algo} if playing and not trust else {}
    try:
        if not trust:
            replace(yaml, "UnsafeLoader", FolderLoader)
            get_trained_models = _checked_trained_models(rl_zoo3.utils.get_trained_models)
            for module in (rl_zoo3, rl_zoo3.utils):
                replace(module, "get_saved_hyperparams", read_saved_hyperparams)
                replace(module, "get_trained_models", get_trained_models)
            for module in (rl_zoo3.utils, rl_zoo3.exp_manager):
                replace(module, "VecNormalize", _VecNormalizeName())
            for name, algorithm in others.items():
                algorithms[name] = _RefusedAlgorithm(name, algorithm)  # type: ignore[assignment]
        yield
    finally:
        for owner, name, value in reversed(replaced):
            setattr(owner, name, value)
        algorithms.update(others)
        _trusted = previous_trust


__all__ = [
    "FolderLoader",
    "UnsafeFolderError",
    "check_named_class",
    "check_settings",
    "folder_literal",
    "load_vecnormalize",
    "load_yml",
    "read_saved_hyperparams",
    "reading_folders",
    "trusted",
]
