"""
Model and replay-buffer files: what they may hold, checked before anything is built from them,
and their safe loading. Every byte of them is read by :mod:`deep_sarsa.gate` (a regular file,
under a cap, read once; the restricted unpickling); writing them atomically is
:mod:`deep_sarsa.atomic`'s (its names are kept here too, for the callers of earlier versions).

SB3's model zip keeps the networks as ``.pth`` entries (read with ``torch.load(weights_only=True)``,
safe) and the other attributes in a JSON ``data`` entry, where what JSON cannot hold is a
base64 cloudpickle (``":serialized:"``); unpickling runs whatever the file's author chose.
:func:`load_checked` reads every such entry itself with :mod:`deep_sarsa.safe_pickle`'s
allowlist and hands the rebuilt objects to SB3's ``load`` as ``custom_objects``, so that SB3
unpickles nothing; ``trusted=True`` leaves it to SB3 (its full behaviour).
"""

import base64
import binascii
import inspect
import io
import json
import pickle
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.preprocessing import get_action_dim, get_obs_shape
from stable_baselines3.dqn.policies import DQNPolicy
from stable_baselines3.her.her_replay_buffer import HerReplayBuffer

# atomic writing, kept importable from here as before
from deep_sarsa.atomic import STALE_AFTER_S as STALE_AFTER_S
from deep_sarsa.atomic import TEMPORARY_PATTERN as TEMPORARY_PATTERN
from deep_sarsa.atomic import atomic_path as atomic_path
from deep_sarsa.atomic import remove_stale_temporaries as remove_stale_temporaries
from deep_sarsa.atomic import save_atomically as save_atomically
from deep_sarsa.atomic import temporary_path as temporary_path
from deep_sarsa.gate import Source, memory_cap, read_pickle, read_source, unpickle
from deep_sarsa.masking import MASKS_ATTRIBUTE
from deep_sarsa.safe_pickle import BUFFER_GLOBALS, MODEL_GLOBALS, TRUST_HINT, UnsafeFileError, one_line
from deep_sarsa.validation import check_hyperparameters, largest_part, memory_bytes, model_settings, q_network_parameters

Model = TypeVar("Model")

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
#: the largest replay buffer file read (lowered to the memory available: it is unpickled into memory)
MAX_BUFFER_FILE_BYTES = 2**40
#: the entries SB3's ``save`` writes (DeepSARSA's saves the same): a model zip with any other is refused
MODEL_ENTRIES = frozenset(
    {"data", "policy.pth", "policy.optimizer.pth", "pytorch_variables.pth", "_stable_baselines3_version", "system_info.txt"}
)
#: what ``policy.pth`` and ``policy.optimizer.pth`` may hold beyond the tensors of the declared networks
#: (torch's zip format, the pickled names; about 5 KB for CartPole's networks)
PTH_OVERHEAD_BYTES = 2**20
#: the attributes of SB3's DQN and DeepSARSA that ``save`` may write as serialized objects (besides
#: the constructor's keywords): a ``data`` entry of another name that is not plain JSON is refused
SAVED_ATTRIBUTES = frozenset(
    {
        "policy_class", "policy_kwargs", "observation_space", "action_space", "learning_rate", "lr_schedule",
        "exploration_schedule", "train_freq", "replay_buffer_class", "replay_buffer_kwargs", "action_noise",
        "_last_obs", "_last_episode_starts", "_last_original_obs", "_last_masks", "ep_info_buffer",
        "ep_success_buffer", "batch_norm_stats", "batch_norm_stats_target", "target_update_interval",
        "_target_update_source", "_target_update_frequency", "_target_update_unit", "seed", "tensorboard_log",
        "num_timesteps", "_total_timesteps", "_num_timesteps_at_start", "start_time", "_episode_num",
        "_current_progress_remaining", "_stats_window_size", "_n_updates", "n_envs", "use_sde", "sde_sample_freq",
        "use_sde_at_warmup", "exploration_rate", "_n_calls", "_episode_num_at_target_update", "_episode_num_seen",
        "_timesteps_at_episode_end", "_warned_no_episode_end", "_checking_raw", "_masking", "_stop_requested",
        "_learning", "verbose", "_episode_storage", "remove_time_limit_termination",
    }
)  # fmt: skip


def read_model_file(path: Source) -> tuple[str, bytes]:
    """
    The bytes of a model file, read once through the gate (:func:`deep_sarsa.gate.read_source`), so
    that what is checked is what is loaded: a regular file, at most :data:`MAX_MODEL_FILE_BYTES` and
    the memory available.

    :param path: the file (``.zip`` is added if it does not exist without), or a file object
    :return: its name for messages, and its content
    """
    try:
        return read_source(path, "a model file", memory_cap(MAX_MODEL_FILE_BYTES), suffix=".zip")
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error.filename}: no such model file") from error


def _check_members(name: str, members: list[zipfile.ZipInfo]) -> None:
    """
    Refuse a zip bomb before anything is decompressed, from the sizes of the central directory: an
    entry that SB3 does not write, an entry over its cap, entries whose sum exceeds the memory available.
    """
    if len(members) > MAX_MEMBERS:
        raise ValueError(f"{name} has {len(members)} entries, more than a model file may have ({MAX_MEMBERS})")
    for member in members:
        if member.filename not in MODEL_ENTRIES:
            raise ValueError(
                f"{name}: its entry {member.filename!r} ({member.file_size} bytes) is not one that SB3 or DeepSARSA "
                f"writes ({', '.join(sorted(MODEL_ENTRIES))}): refused"
            )
        if member.filename == "data":
            cap = MAX_DATA_BYTES
        elif member.filename.endswith(".pth"):
            cap = MAX_PTH_BYTES
        else:
            cap = MAX_OTHER_BYTES
        if member.file_size > cap:
            raise ValueError(f"{name}: its entry {member.filename!r} is {member.file_size} bytes, more than {cap} allowed")
    total = sum(member.file_size for member in members)
    available = memory_cap(total)
    if total > available:
        raise ValueError(
            f"{name}: its entries hold {total} bytes once decompressed, more than the {available} bytes of memory available"
        )


def entry_sizes(content: bytes) -> dict[str, int]:
    """
    :param content: a model zip (checked by :func:`check_model_data`)
    :return: the uncompressed size of each entry, as its central directory declares it
    """
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {member.filename: member.file_size for member in archive.infolist()}


def check_declared_networks(name: str, sizes: dict[str, int], objects: dict[str, Any]) -> None:
    """
    Compare the Q-networks that a model's spaces and ``policy_kwargs`` declare with the weights its
    ``policy.pth`` holds, and with the memory available, before anything is built: a 100 KB file
    cannot make SB3 build networks of gigabytes. Refused naming the part that makes them large
    (``net_arch``, ``observation_space`` or ``action_space``) and both sizes.

    :param name: the file, for messages
    :param sizes: the uncompressed size of each zip entry (:func:`entry_sizes`)
    :param objects: its rebuilt entries (:func:`decode_entries`)
    """
    observation_space, action_space = objects["observation_space"], objects["action_space"]
    if not isinstance(observation_space, spaces.Space):
        raise ValueError(f"{name}: its observation_space is {observation_space!r}, not a Gymnasium space")
    if not isinstance(action_space, spaces.Discrete):
        raise ValueError(f"{name}: its action_space is {action_space!r}: DeepSARSA needs a Discrete one")
    policy_kwargs = objects.get("policy_kwargs")
    if not (policy_kwargs is None or isinstance(policy_kwargs, dict)):
        raise ValueError(f"{name}: its policy_kwargs is {policy_kwargs!r}, not a dict")
    try:
        parameters = 2 * q_network_parameters(observation_space, action_space, objects["policy_class"], policy_kwargs)
    except (ValueError, TypeError, OverflowError) as error:
        raise ValueError(f"{name}: its networks cannot be sized: {one_line(error)}") from error
    declared = 4 * parameters  # float32
    held = sizes.get("policy.pth")
    if held is None:
        raise ValueError(f"{name} has no 'policy.pth' entry: it holds no weights of the networks")
    part = None
    if declared > held:
        part = largest_part(observation_space, action_space, objects["policy_class"], policy_kwargs)
        problem = f"but its 'policy.pth' holds {held} bytes"
    elif max(held, sizes.get("policy.optimizer.pth", 0)) > 2 * declared + PTH_OVERHEAD_BYTES:
        entry = max(("policy.pth", "policy.optimizer.pth"), key=lambda key: sizes.get(key, 0))
        raise ValueError(
            f"{name}: its entry {entry!r} is {sizes[entry]} bytes once decompressed, far more than the networks it "
            f"declares ({parameters} parameters, {declared} bytes) need: refused before decompressing it"
        )
    else:
        _, available = memory_bytes()
        if available is not None and declared > available:
            part = largest_part(observation_space, action_space, objects["policy_class"], policy_kwargs)
            problem = f"more than the {available} bytes of memory available"
    if part is not None:
        shown = {
            "net_arch": f"policy_kwargs['net_arch'] = {(policy_kwargs or {}).get('net_arch')}",
            "observation_space": f"observation_space {observation_space}",
            "action_space": f"action_space {action_space}",
        }[part]
        raise ValueError(
            f"{name}: its {shown} declares Q-networks of {parameters} parameters ({declared} bytes), {problem}: "
            "refused before building them"
        )


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
        if "data" not in archive.namelist():  # not SB3's zip (or a truncated one, whose last directory is a .pth's)
            raise ValueError(f"{name} is not a model saved by SB3 (expected a complete zip file with a 'data' entry)")
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


def _check_serialized_key(name: str, key: str, model_class: type) -> None:
    """A serialized object under a key that neither SB3 nor DeepSARSA writes becomes an attribute nobody reads: refused."""
    if key in SAVED_ATTRIBUTES or key in inspect.signature(model_class).parameters:
        return
    raise UnsafeFileError(
        f"{name}: entry {key!r} is a serialized object under a key that neither SB3 nor DeepSARSA writes "
        f"(only plain JSON values may be kept under other keys, as save(include=...) writes them): refused; {TRUST_HINT}"
    )


def _decode(name: str, key: str, serialized: Any) -> Any:
    if not isinstance(serialized, str):
        raise ValueError(f"{name}: entry {key!r} is not base64 text (got a {type(serialized).__name__})")
    try:
        pickled = base64.b64decode(serialized.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as error:
        raise ValueError(f"{name}: entry {key!r} is not valid base64 ({error})") from error
    return unpickle(pickled, name, f"entry {key!r}", MODEL_GLOBALS)


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
            _check_serialized_key(name, key, model_class)
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
        check_declared_networks(name, entry_sizes(content), {**data, **decode_entries(name, data, model_class, None)})


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


def load_checked(
    load: Callable[..., Model],
    path: Source,
    *args: Any,
    model_class: type,
    custom_objects: dict[str, Any] | None = None,
    trusted: bool = False,
    older_settings: dict[str, Any] | None = None,
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
    :param older_settings: the value of each setting added since files were first saved, for a file without it
        (what the model did when it was saved, not the constructor's current default)
    :param kwargs: its keyword arguments
    :return: the model
    """
    name, content = read_model_file(path)
    data = check_model_data(name, content)
    kwargs = {**{key: value for key, value in (older_settings or {}).items() if key not in data}, **kwargs}
    if not trusted:
        custom_objects = decode_entries(name, data, model_class, custom_objects)
        check_declared_networks(name, entry_sizes(content), {**data, **custom_objects, **kwargs})
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
    Read a replay buffer that ``save_replay_buffer`` wrote, through the gate
    (:func:`deep_sarsa.gate.read_pickle`: a regular file no larger than the memory available, opened
    once): with the restricted unpickler (:data:`deep_sarsa.safe_pickle.BUFFER_GLOBALS`), or with
    ``pickle`` when ``trusted``.

    :param path: the file (``.pkl`` is added if it does not exist without), or a file object
    :param trusted: unpickle as SB3 does (runs any code the file names)
    :return: its name for messages, and the buffer
    """
    try:
        name, buffer = read_pickle(
            path,
            "a replay buffer",
            memory_cap(MAX_BUFFER_FILE_BYTES),
            "the replay buffer",
            BUFFER_GLOBALS,
            trusted=trusted,
            suffix=".pkl",
        )
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error.filename}: no such replay buffer file") from error
    if not isinstance(buffer, ReplayBuffer):
        raise ValueError(f"{name} is not a replay buffer saved by SB3: it holds a {type(buffer).__name__}")
    return name, buffer


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
        buffer.timeouts = np.zeros_like(getattr(buffer, "dones", None))
    check_replay_buffer(name, buffer, bool(getattr(model, "check_finite", True)))
    if isinstance(buffer, HerReplayBuffer):
        if model.env is None:
            raise ValueError(f"{name}: a HerReplayBuffer needs the model's env: load the model with env=...")
        buffer.set_env(model.env)
        if truncate_last_traj:
            buffer.truncate_last_trajectory()
    buffer.device = model.device


#: Rows of a replay buffer's array checked at a time (bounded by bytes): the checks allocate no full-size temporary
_CHECK_BLOCK_BYTES = 2**24


def _blocks(array: np.ndarray, rows: int) -> Iterator[np.ndarray]:
    """The first ``rows`` rows of ``array``, in blocks of about :data:`_CHECK_BLOCK_BYTES`."""
    step = max(1, _CHECK_BLOCK_BYTES // max(array[:1].nbytes, 1))
    for start in range(0, rows, step):
        yield array[start : min(start + step, rows)]


def _is_numeric(dtype: np.dtype) -> bool:
    return dtype.kind in "biuf"


def _check_array(name: str, field: str, array: Any, shape: tuple[int, ...], dtype: Any = None) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name}: the replay buffer's {field} is a {type(array).__name__}, not a NumPy array")
    if not _is_numeric(array.dtype):
        raise ValueError(f"{name}: the replay buffer's {field} has the dtype {array.dtype}, not a numeric one")
    if array.shape != shape:
        raise ValueError(
            f"{name}: the replay buffer's {field} has the shape {array.shape}, expected {shape} (buffer_size, n_envs, ...)"
        )
    if dtype is not None and array.dtype != np.dtype(dtype):
        raise ValueError(
            f"{name}: the replay buffer's {field} has the dtype {array.dtype}, but its space says {np.dtype(dtype)}"
        )
    return array


def _check_finite(name: str, field: str, array: np.ndarray, rows: int) -> None:
    if array.dtype.kind != "f":
        return
    for block in _blocks(array, rows):
        if not np.isfinite(block).all():
            raise ValueError(
                f"{name}: the replay buffer's {field} holds NaN or infinite values (check_finite=True refuses them; "
                "check_finite=False loads them)"
            )


def _observation_fields(name: str, buffer: ReplayBuffer) -> list[tuple[str, Any, spaces.Space]]:
    """(field, array, space) of every observation array of a buffer (one per key of a Dict space)."""
    space = buffer.observation_space
    fields: list[tuple[str, Any, spaces.Space]] = []
    for attribute in ("observations", "next_observations"):
        if attribute == "next_observations" and buffer.optimize_memory_usage and not isinstance(space, spaces.Dict):
            continue  # SB3 keeps no next observations then
        value = getattr(buffer, attribute, None)
        if isinstance(space, spaces.Dict):
            if not isinstance(value, dict) or set(value) != set(space.spaces):
                raise ValueError(
                    f"{name}: the replay buffer's {attribute} is not a dict of its space's keys {list(space.spaces)}"
                )
            fields.extend((f"{attribute}[{key!r}]", value[key], space.spaces[key]) for key in space.spaces)
        else:
            fields.append((attribute, value, space))
    return fields


def _check_int(name: str, field: str, value: Any, low: int, high: int | None = None) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= low
    if not ok or (high is not None and value >= high):
        expected = f"an integer from {low} to {high - 1}" if high is not None else f"an integer >= {low}"
        raise ValueError(f"{name}: the replay buffer's {field} is {value!r}, expected {expected}")
    return int(value)


def check_replay_buffer(name: str, buffer: ReplayBuffer, check_finite: bool = True) -> None:
    """
    Refuse a replay buffer whose state does not hold together (what SB3 would only find out while
    learning, as an ``IndexError``, a ``RuntimeError`` or NaN weights): ``buffer_size``, ``pos`` and
    ``full`` consistent with its arrays; every array numeric, of the shape ``(buffer_size, n_envs,
    ...)`` and, for observations, the dtype its space says; the actions stored so far inside the
    Discrete action space; with ``check_finite``, finite rewards and observations.

    :param name: the file, for messages
    :param buffer: the buffer read (its spaces and ``n_envs`` already match the model's)
    :param check_finite: refuse NaN and infinite rewards and observations
    :raises ValueError: naming the file and the field
    """
    size = _check_int(name, "buffer_size", getattr(buffer, "buffer_size", None), 1)
    n_envs = _check_int(name, "n_envs", getattr(buffer, "n_envs", None), 1)
    pos = _check_int(name, "pos", getattr(buffer, "pos", None), 0, size)
    full = getattr(buffer, "full", None)
    if not isinstance(full, (bool, np.bool_)):
        raise ValueError(f"{name}: the replay buffer's full is {full!r}, expected True or False")
    rows = size if full else pos
    for field, array, space in _observation_fields(name, buffer):
        shape = get_obs_shape(space)
        assert isinstance(shape, tuple)
        _check_finite(name, field, _check_array(name, field, array, (size, n_envs, *shape), space.dtype), rows)
    action_space = buffer.action_space
    actions = _check_array(name, "actions", getattr(buffer, "actions", None), (size, n_envs, get_action_dim(action_space)))
    if isinstance(action_space, spaces.Discrete):
        low, high = int(action_space.start), int(action_space.start) + int(action_space.n)
        for block in _blocks(actions, rows):
            if block.size and (block.min() < low or block.max() >= high or (block != np.round(block)).any()):
                raise ValueError(
                    f"{name}: the replay buffer's actions hold values outside the action space {action_space} "
                    f"(from {block.min()} to {block.max()})"
                )
    fields = ["rewards", "dones"] + (["timeouts"] if getattr(buffer, "handle_timeout_termination", False) else [])
    for field in fields:
        array = _check_array(name, field, getattr(buffer, field, None), (size, n_envs))
        if field == "rewards" and check_finite:
            _check_finite(name, field, array, rows)
    if isinstance(buffer, HerReplayBuffer):
        for field in ("ep_start", "ep_length"):
            _check_array(name, field, getattr(buffer, field, None), (size, n_envs))
    masks = getattr(buffer, MASKS_ATTRIBUTE, None)
    if masks is not None and isinstance(action_space, spaces.Discrete):
        n_actions = int(action_space.n)
        _check_array(name, "next-state masks (bits)", getattr(masks, "bits", None), (size, n_envs, (n_actions + 7) // 8))
        _check_array(name, "next-state masks (known)", getattr(masks, "known", None), (size, n_envs))
        if getattr(masks, "n_actions", None) != n_actions:
            found = getattr(masks, "n_actions", None)
            raise ValueError(f"{name}: the replay buffer's next-state masks are for {found} actions, not {n_actions}")
