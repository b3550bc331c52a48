"""
Model and replay-buffer files: checks before anything is read from one, safe loading, and
atomic writing.

SB3's model zip keeps the networks as ``.pth`` entries (read with ``torch.load(weights_only=True)``,
safe) and the other attributes in a JSON ``data`` entry, where what JSON cannot hold is a
base64 cloudpickle (``":serialized:"``); unpickling runs whatever the file's author chose.
:func:`load_checked` reads every such entry itself with :mod:`deep_sarsa.safe_pickle`'s
allowlist and hands the rebuilt objects to SB3's ``load`` as ``custom_objects``, so that SB3
unpickles nothing; ``trusted=True`` leaves it to SB3 (its full behaviour).
"""

import base64
import binascii
import contextlib
import errno
import inspect
import io
import json
import os
import pathlib
import pickle
import re
import stat
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.dqn.policies import DQNPolicy
from stable_baselines3.her.her_replay_buffer import HerReplayBuffer

from deep_sarsa.safe_pickle import BUFFER_GLOBALS, MODEL_GLOBALS, TRUST_HINT, UnsafeFileError, one_line, restricted_load
from deep_sarsa.validation import check_hyperparameters, model_settings

Model = TypeVar("Model")
Source = str | pathlib.Path | io.BufferedIOBase

#: the largest ``data`` entry read (its size in the zip's central directory, before it is read)
MAX_DATA_BYTES = 64 * 2**20
#: the largest ``.pth`` entry (networks, optimizer state)
MAX_PTH_BYTES = 2 * 2**30
#: the largest other entry (``system_info.txt``, ``_stable_baselines3_version``)
MAX_OTHER_BYTES = 2**20
#: the most entries in a model zip (SB3 writes 6)
MAX_MEMBERS = 256
#: the largest model file read
MAX_MODEL_FILE_BYTES = 2 * MAX_PTH_BYTES + MAX_DATA_BYTES


def _existing(path: pathlib.Path, suffix: str) -> pathlib.Path:
    """SB3 also tries a path with ``suffix`` added."""
    with_suffix = path.with_name(path.name + suffix)
    return with_suffix if not path.exists() and with_suffix.exists() else path


def _name_of(file: io.BufferedIOBase) -> str:
    name = getattr(file, "name", None)
    return str(name) if isinstance(name, (str, os.PathLike)) else f"<{type(file).__name__}>"


def read_model_file(path: Source) -> tuple[str, bytes]:
    """
    The bytes of a model file (read once, so that what is checked is what is loaded).

    :param path: the file (``.zip`` is added if it does not exist without), or a file object
    :return: its name for messages, and its content
    """
    if isinstance(path, io.BufferedIOBase):
        return _name_of(path), path.read()
    path = _existing(pathlib.Path(path), ".zip")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    size = path.stat().st_size
    if size > MAX_MODEL_FILE_BYTES:
        raise ValueError(f"{path} is {size} bytes, more than a model file may be ({MAX_MODEL_FILE_BYTES})")
    return str(path), path.read_bytes()


def _check_members(name: str, members: list[zipfile.ZipInfo]) -> None:
    """Refuse a zip bomb before anything is decompressed: the sizes of the central directory."""
    if len(members) > MAX_MEMBERS:
        raise ValueError(f"{name} has {len(members)} entries, more than a model file may have ({MAX_MEMBERS})")
    for member in members:
        if member.filename == "data":
            cap = MAX_DATA_BYTES
        elif member.filename.endswith(".pth"):
            cap = MAX_PTH_BYTES
        else:
            cap = MAX_OTHER_BYTES
        if member.file_size > cap:
            raise ValueError(f"{name}: its entry {member.filename!r} is {member.file_size} bytes, more than {cap} allowed")


def _is_serialized(item: Any) -> bool:
    return isinstance(item, dict) and ":serialized:" in item


def check_model_data(name: str, content: bytes) -> dict[str, Any]:
    """
    Refuse, naming the file, what ``DeepSARSA.load`` cannot load: a file that is not a zip or is
    truncated, oversized entries, a zip without SB3's ``data`` or whose ``data`` is not a JSON
    object, a model of another algorithm, a policy class or spaces that are missing or not stored
    as SB3 stores them. Nothing is unpickled.

    :param name: the file, for messages
    :param content: its bytes
    :return: the ``data`` entry, parsed (serialized entries still serialized)
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise ValueError(
            f"{name} is not a model saved by SB3 (expected a complete zip file with a 'data' entry): {error}"
        ) from error
    with archive:
        _check_members(name, archive.infolist())
        try:
            data = json.loads(archive.read("data"))
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, ValueError, RuntimeError, NotImplementedError,
                RecursionError) as error:  # fmt: skip
            raise ValueError(
                f"{name} is not a model saved by SB3 (expected a complete zip file with a 'data' entry): {one_line(error)}"
            ) from error
    if not isinstance(data, dict):
        raise ValueError(
            f"{name}: its 'data' entry must be a JSON object of the model's attributes, got a {type(data).__name__}"
        )
    if "next_action" not in data:
        policy_class = data.get("policy_class")
        module = policy_class.get("__module__", "an unknown module") if isinstance(policy_class, dict) else "an unknown module"
        hint = " It looks like a DQN model: load it with stable_baselines3.DQN." if module.endswith("dqn.policies") else ""
        raise ValueError(f"{name} was not saved by DeepSARSA (its policy class comes from {module}).{hint}")
    for key in ("policy_class", "observation_space", "action_space"):
        if key not in data:
            raise ValueError(f"{name}: its 'data' entry has no {key!r}: it is not a complete model file")
        if not _is_serialized(data[key]):
            raise ValueError(f"{name}: entry {key!r} is a {type(data[key]).__name__}, not a serialized object as SB3 saves it")
    return data


def check_model_file(path: pathlib.Path) -> dict[str, Any]:
    """
    :func:`check_model_data` of a file.

    :param path: the file (SB3 also tries it with ``.zip`` added)
    :return: its ``data`` entry
    """
    return check_model_data(*read_model_file(path))


def _never_saved(model_class: type) -> frozenset[str]:
    """The attributes that ``save`` leaves out (env, policy, device, ...): a file that has one was not written by ``save``."""
    blank: Any = object.__new__(model_class)  # the method reads no state
    return frozenset(blank._excluded_save_params())


def _check_key(name: str, key: str, model_class: type, never_saved: frozenset[str]) -> None:
    """
    An entry becomes an attribute of the model: refuse one that would replace a method or a class
    attribute, and one that ``save`` never writes (SB3 would make ``env`` from a file's string,
    and Gymnasium imports the module that ``"module:EnvId"`` names).
    """
    missing = object()
    if key.startswith("__") or inspect.getattr_static(model_class, key, missing) is not missing:
        raise UnsafeFileError(
            f"{name}: entry {key!r} would replace {model_class.__name__}.{key}, which is part of the class, "
            f"not a saved setting: refused; {TRUST_HINT}"
        )
    if key in never_saved:
        raise UnsafeFileError(f"{name}: entry {key!r} is one that save() never writes: refused; {TRUST_HINT}")


def _decode(name: str, key: str, serialized: Any) -> Any:
    if not isinstance(serialized, str):
        raise ValueError(f"{name}: entry {key!r} is not base64 text (got a {type(serialized).__name__})")
    try:
        pickled = base64.b64decode(serialized.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as error:
        raise ValueError(f"{name}: entry {key!r} is not valid base64 ({error})") from error
    return restricted_load(io.BytesIO(pickled), MODEL_GLOBALS, name, f"entry {key!r}")


def decode_entries(
    name: str, data: dict[str, Any], model_class: type, custom_objects: dict[str, Any] | None
) -> dict[str, Any]:
    """
    Rebuild every serialized entry of ``data`` with the restricted unpickler, refusing what it
    does not allow, so that SB3's ``load`` finds them all in ``custom_objects`` and unpickles nothing.

    :param name: the file, for messages
    :param data: its ``data`` entry (:func:`check_model_data`)
    :param model_class: the class being loaded (entries may not replace its attributes)
    :param custom_objects: the user's replacements, used as given (not read from the file)
    :return: ``custom_objects`` for SB3: the user's, and the rebuilt entries
    :raises UnsafeFileError: for an entry that names a global outside the allowlist
    """
    objects = dict(custom_objects or {})
    never_saved = _never_saved(model_class)
    for key, item in data.items():
        if key in objects:
            continue
        _check_key(name, key, model_class, never_saved)
        if _is_serialized(item):
            objects[key] = _decode(name, key, item[":serialized:"])
    policy_class = objects["policy_class"]
    if not (isinstance(policy_class, type) and issubclass(policy_class, DQNPolicy)):
        raise ValueError(f"{name}: entry 'policy_class' is {policy_class!r}, not a DQN policy class")
    return objects


def check_model_safely(path: Source, model_class: type, trusted: bool = False) -> None:
    """
    Every check of :func:`load_checked` that comes before building the model: the file's
    structure, and (unless ``trusted``) the safe rebuilding of every serialized entry. Nothing
    is run from the file.

    :param path: the model file
    :param model_class: the class it is for
    :param trusted: check the structure only
    """
    name, content = read_model_file(path)
    data = check_model_data(name, content)
    if not trusted:
        decode_entries(name, data, model_class, None)


def check_loaded_model(name: str, model: Any) -> None:
    """
    After loading: the spaces are spaces, the action space is Discrete, and the hyperparameters
    pass the constructor's checks (:func:`deep_sarsa.validation.check_hyperparameters`).

    :param name: the file, for messages
    :param model: the loaded model
    """
    if not isinstance(model.observation_space, spaces.Space):
        raise ValueError(f"{name}: its observation_space is {model.observation_space!r}, not a Gymnasium space")
    if not isinstance(model.action_space, spaces.Discrete):
        raise ValueError(f"{name}: its action_space is {model.action_space!r}: DeepSARSA needs a Discrete one")
    check_loaded_hyperparameters(name, model)


def check_loaded_hyperparameters(name: str, model: Any) -> None:
    """
    Run the constructor's checks on the settings of a loaded model (:func:`deep_sarsa.validation.model_settings`).

    :param name: the file, for messages
    :param model: the loaded model
    :raises ValueError: naming the file and the bad setting
    """
    try:
        check_hyperparameters(**model_settings(model), warn=False)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name}: its hyperparameters are invalid: {one_line(error)}") from error


#: Our temporary files: ``.NAME.<pid>.<12 hex digits>.tmp`` beside the file ``NAME`` they will replace
TEMPORARY_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]{1,10})\.[0-9a-f]{12}\.tmp$")
#: A dead process's temporary file is removed only once it has not been modified for this many
#: seconds: a process of another machine or container writing into a shared folder has a process
#: id that looks dead here, and it modifies its file while it writes it
STALE_AFTER_S = 60.0


def temporary_path(target: pathlib.Path) -> pathlib.Path:
    """
    :param target: a file to write
    :return: a temporary name beside it, unique to this process and call (:data:`TEMPORARY_PATTERN`)
    """
    return target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def _process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists here (a process of another user counts as alive)."""
    if pid <= 0:
        return True  # not a process id of ours: never treated as dead
    try:
        os.kill(pid, 0)  # signal 0: only the check (never called on Windows, where it would end the process)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):
        return True
    return True


def remove_stale_temporaries(folder: pathlib.Path, stale_after_s: float = STALE_AFTER_S) -> list[pathlib.Path]:
    """
    Remove the temporary files that processes which no longer exist left in ``folder`` (killed
    while saving): the files named as :func:`temporary_path` names them whose process id is not
    alive and which were not modified for ``stale_after_s`` seconds. A live process's file,
    another program's file and anything that is not a plain file are left alone; a file that
    cannot be removed is skipped. Nothing is done on Windows (there is no harmless check of a
    process id there).

    :param folder: the folder
    :param stale_after_s: how long a dead process's file must have been left unmodified
    :return: the files removed
    """
    if os.name == "nt":
        return []
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = TEMPORARY_PATTERN.match(entry.name)
        if match is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False) or now - entry.stat(follow_symlinks=False).st_mtime < stale_after_s:
                continue
            if _process_alive(int(match["pid"])):
                continue
            os.unlink(entry.path)
        except OSError:  # gone meanwhile (another process cleaned it), or not ours to remove
            continue
        removed.append(pathlib.Path(entry.path))
    return removed


def _fsync_folder(folder: pathlib.Path) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the OS and file system allow it."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows cannot open a folder
        return
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES, errno.EPERM):
            raise
    finally:
        os.close(descriptor)


def _resolved(target: pathlib.Path) -> pathlib.Path:
    """The file a path names: a symbolic link (or a chain of them) is followed, so that it stays a link."""
    if not target.is_symlink():
        return target
    return pathlib.Path(os.path.realpath(target))


@contextlib.contextmanager
def atomic_path(target: pathlib.Path) -> Iterator[pathlib.Path]:
    """
    A temporary file beside ``target`` to write into; when the block ends without an error it is
    flushed to disk, given ``target``'s permission bits and renamed over ``target``
    (``os.replace``), and the folder is flushed too; else it is removed. At every instant
    ``target`` is the previous complete file or the new complete one, for any number of threads
    and processes writing it (each has its own temporary name). A failure (full disk, Ctrl-C, an
    object that cannot be pickled) leaves any previous ``target`` intact and no partial file
    behind; an ``OSError`` is raised again naming ``target``, with the same ``errno``.

    A symbolic link is written through: the file it points to is replaced and the link stays.
    Before writing, the temporary files that dead processes left in the folder are removed
    (:func:`remove_stale_temporaries`).

    :param target: the file to write (its folder is created if needed)
    :return: the temporary path (a unique name in the target's folder, not yet created)
    """
    given = target
    target = _resolved(target)
    shown = str(given) if target == given else f"{given} (a link to {target})"
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{shown} is a folder, not a file that can be saved over", str(given))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _naming(error, shown, "its folder cannot be created") from error
    remove_stale_temporaries(target.parent)
    temporary = temporary_path(target)
    try:
        yield temporary
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            mode = None
        if mode is not None:
            os.chmod(temporary, mode)  # keep the permission bits the user gave it
        os.replace(temporary, target)
    except OSError as error:
        raise _naming(error, shown, "not saved") from error
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_folder(target.parent)  # the rename reaches the disk too


def _naming(error: OSError, shown: str, what: str) -> OSError:
    """``error`` again (same errno, so the same OSError subclass), its message naming the file."""
    reason = "no space left on the device" if error.errno == errno.ENOSPC else one_line(error)
    message = f"{shown}: {what} ({reason}); the previous file, if there was one, is unchanged"
    return OSError(error.errno, message) if error.errno is not None else OSError(message)


def save_atomically(
    save: Callable[..., None], path: str | pathlib.Path | io.BufferedIOBase, *args: Any, suffix: str = ".zip"
) -> None:
    """
    ``save(path, *args)`` (SB3's ``BaseAlgorithm.save`` or ``save_replay_buffer``) through
    :func:`atomic_path` where ``path`` is a path (``suffix`` added if it has none, as SB3 does);
    a file object is written directly.

    :param save: the saving function
    :param path: the file, or a file object
    :param args: the function's other arguments
    :param suffix: the suffix SB3 adds to a path without one (``.zip`` for models, ``.pkl`` for replay buffers)
    """
    if isinstance(path, io.BufferedIOBase):
        save(path, *args)
        return
    target = pathlib.Path(path)
    with atomic_path(target.with_suffix(suffix) if target.suffix == "" else target) as temporary:
        save(temporary, *args)


def load_checked(
    load: Callable[..., Model],
    path: Source,
    *args: Any,
    model_class: type,
    custom_objects: dict[str, Any] | None = None,
    trusted: bool = False,
    **kwargs: Any,
) -> Model:
    """
    ``load(content, *args, custom_objects=..., **kwargs)`` (SB3's ``BaseAlgorithm.load``) of a
    checked file (:func:`check_model_data`), every serialized entry rebuilt safely
    (:func:`decode_entries`) unless ``trusted``, the result checked (:func:`check_loaded_model`);
    every failure is a ``ValueError`` naming the file.

    :param load: the loading function
    :param path: the file, or a file object
    :param args: the function's other positional arguments (env, device)
    :param model_class: the class being loaded
    :param custom_objects: the user's replacements of entries
    :param trusted: let SB3 unpickle the entries (runs any code the file names)
    :param kwargs: its keyword arguments
    :return: the model
    """
    name, content = read_model_file(path)
    data = check_model_data(name, content)
    if not trusted:
        custom_objects = decode_entries(name, data, model_class, custom_objects)
    try:
        model = load(io.BytesIO(content), *args, custom_objects=custom_objects, **kwargs)
    except ValueError as error:
        if "spaces do not match" in str(error):
            raise ValueError(f"{name}: the model does not fit this env: {one_line(error)}") from error
        raise ValueError(f"{name}: cannot be loaded: {one_line(error)}") from error
    except (KeyError, TypeError, AttributeError, IndexError, RuntimeError, AssertionError, EOFError, pickle.UnpicklingError,
            zipfile.BadZipFile, zlib.error, NotImplementedError) as error:  # fmt: skip
        raise ValueError(
            f"{name}: cannot be loaded as a DeepSARSA model ({type(error).__name__}: {one_line(error)})"
        ) from error
    check_loaded_model(name, model)
    return model


def read_replay_buffer(path: Source, trusted: bool = False) -> tuple[str, ReplayBuffer]:
    """
    Read a replay buffer that ``save_replay_buffer`` wrote: with the restricted unpickler
    (:data:`deep_sarsa.safe_pickle.BUFFER_GLOBALS`), or with ``pickle`` when ``trusted``.

    :param path: the file (``.pkl`` is added if it does not exist without), or a file object
    :param trusted: unpickle as SB3 does (runs any code the file names)
    :return: its name for messages, and the buffer
    """
    if isinstance(path, io.BufferedIOBase):
        return _name_of(path), _replay_buffer_in(path, _name_of(path), trusted)
    path = _existing(pathlib.Path(path), ".pkl")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such replay buffer file")
    with open(path, "rb") as file:
        return str(path), _replay_buffer_in(file, str(path), trusted)


def _replay_buffer_in(file: io.BufferedIOBase, name: str, trusted: bool) -> ReplayBuffer:
    if trusted:
        try:
            buffer = pickle.load(file)
        except Exception as error:  # the user chose to run the file's code: report whatever it raised, naming the file
            raise ValueError(f"{name} is not a readable pickle ({type(error).__name__}: {one_line(error)})") from error
    else:
        buffer = restricted_load(file, BUFFER_GLOBALS, name, "the replay buffer")
    if not isinstance(buffer, ReplayBuffer):
        raise ValueError(f"{name} is not a replay buffer saved by SB3: it holds a {type(buffer).__name__}")
    return buffer


def fit_replay_buffer(name: str, buffer: ReplayBuffer, model: Any, truncate_last_traj: bool) -> None:
    """
    Make a replay buffer ready for ``model`` (what SB3's ``load_replay_buffer`` does after
    reading it) and refuse one that does not fit the model; the model is not touched.

    :param name: the file, for messages
    :param buffer: the buffer read
    :param model: the model it is for
    :param truncate_last_traj: for ``HerReplayBuffer``: end its last trajectory
    """
    for attribute in ("observation_space", "action_space"):
        if getattr(buffer, attribute, None) != getattr(model, attribute):
            raise ValueError(
                f"{name}: the replay buffer's {attribute} {getattr(buffer, attribute, None)} is not the model's "
                f"{getattr(model, attribute)}"
            )
    if getattr(buffer, "n_envs", None) != model.n_envs:
        raise ValueError(
            f"{name}: the replay buffer is for {getattr(buffer, 'n_envs', None)} envs, the model has {model.n_envs}"
        )
    if not hasattr(buffer, "handle_timeout_termination"):  # saved by SB3 < 2.1
        buffer.handle_timeout_termination = False
        buffer.timeouts = np.zeros_like(buffer.dones)
    if isinstance(buffer, HerReplayBuffer):
        if model.env is None:
            raise ValueError(f"{name}: a HerReplayBuffer needs the model's env: load the model with env=...")
        buffer.set_env(model.env)
        if truncate_last_traj:
            buffer.truncate_last_trajectory()
    buffer.device = model.device
