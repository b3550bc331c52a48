"""Model files: checks before SB3 reads one, and atomic writing."""

import contextlib
import io
import json
import os
import pathlib
import stat
import uuid
import zipfile
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

Model = TypeVar("Model")


def check_model_file(path: pathlib.Path) -> None:
    """
    Refuse, naming the file, what ``DeepSARSA.load`` cannot load: a missing file, a file that is
    not a zip or is truncated, a zip without SB3's ``data``, a model of another algorithm.

    :param path: the file (SB3 also tries it with ``.zip`` added)
    """
    if not path.exists() and path.with_name(path.name + ".zip").exists():
        path = path.with_name(path.name + ".zip")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError) as error:
        raise ValueError(
            f"{path} is not a model saved by SB3 (expected a complete zip file with a 'data' entry): {error}"
        ) from error
    if "next_action" not in data:
        module = data.get("policy_class", {}).get("__module__", "an unknown module")
        hint = " It looks like a DQN model: load it with stable_baselines3.DQN." if module.endswith("dqn.policies") else ""
        raise ValueError(f"{path} was not saved by DeepSARSA (its policy class comes from {module}).{hint}")


@contextlib.contextmanager
def atomic_path(target: pathlib.Path) -> Iterator[pathlib.Path]:
    """
    A temporary file beside ``target`` to write into; when the block ends without an error it is
    flushed to disk and renamed over ``target`` (``os.replace``), else removed. A failure (full
    disk, Ctrl-C, an object that cannot be pickled) leaves any previous ``target`` intact and no
    partial file behind.

    :param target: the file to write (its folder is created if needed)
    :return: the temporary path (a unique name in the target's folder, not yet created)
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    # Unique per process and call: two threads or processes saving one path never share it
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield temporary
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        if target.exists():
            os.chmod(temporary, stat.S_IMODE(target.stat().st_mode))  # keep the permission bits the user gave it
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def save_atomically(save: Callable[..., None], path: str | pathlib.Path | io.BufferedIOBase, *args: Any) -> None:
    """
    ``save(path, *args)`` (SB3's ``BaseAlgorithm.save``) through :func:`atomic_path` where ``path``
    is a path (``.zip`` added if it has no suffix, as SB3 does); a file object is written directly.

    :param save: the saving function
    :param path: the file, or a file object
    :param args: the function's other arguments
    """
    if isinstance(path, io.BufferedIOBase):
        save(path, *args)
        return
    target = pathlib.Path(path)
    with atomic_path(target.with_suffix(".zip") if target.suffix == "" else target) as temporary:
        save(temporary, *args)


def load_checked(load: Callable[..., Model], path: str | pathlib.Path | io.BufferedIOBase, *args: Any, **kwargs: Any) -> Model:
    """
    ``load(path, *args, **kwargs)`` (SB3's ``BaseAlgorithm.load``) after :func:`check_model_file`,
    with an error naming the file when the model's spaces do not fit the env.

    :param load: the loading function
    :param path: the file, or a file object (not checked)
    :param args: the function's other arguments
    :param kwargs: its keyword arguments
    :return: what it returns
    """
    if not isinstance(path, io.BufferedIOBase):
        check_model_file(pathlib.Path(path))
    try:
        return load(path, *args, **kwargs)
    except ValueError as error:
        if "spaces do not match" in str(error):
            raise ValueError(f"{path}: the model does not fit this env: {error}") from error
        raise
