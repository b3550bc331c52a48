"""
Checkpoints that resume training exactly where it stopped, written so that no crash can break them.

**What a checkpoint holds.** SB3's ``save`` keeps the networks, the optimizer and the counters,
and ``save_replay_buffer`` the transitions, but three things a run depends on are in neither
file: the state of the random number generators (NumPy's, PyTorch's, Python's, the action
space's), the state of the envs (mid-episode, with their own generators, ``VecNormalize``'s
running statistics, the position of each ``Monitor`` log), and where the stop happened (SB3's
callbacks stop in the middle of a rollout, dropping the step in which they stop). A checkpoint
saves all of it, taken at a rollout boundary (:meth:`deep_sarsa.DeepSARSA.request_stop`, or
:class:`deep_sarsa.callbacks.SaveOnInterrupt`'s periodic checkpoints), so that::

    model.learn(N)

and::

    model.learn(N, callback=SaveOnInterrupt("checkpoint/", save_freq=10_000))  # killed at any moment
    # ... later, in a fresh process:
    resume("checkpoint/")          # learns the remaining steps

give the same parameters bit for bit on the CPU (tests/test_resume.py, tests/test_checkpoint.py).

**Layout: generations, swapped in whole.** A checkpoint folder holds one subfolder per checkpoint
(a *generation*), ``gen-00000007-step-12000/``: the 8-digit sequence number counts the
checkpoints written into the folder (the newest has the highest), the step is
``num_timesteps``. A generation holds ``model.zip``, ``replay_buffer.pkl``, ``state.pkl`` (the
envs and generators), ``vecnormalize.pkl`` (SB3's ``VecNormalize.save``, one per
``VecNormalize``) and ``manifest.json``, signed by ``manifest.json.sig``. :func:`save_checkpoint`:

1. takes an exclusive lock on ``FOLDER/.lock`` (one writer at a time; a writer's leftovers are
   then known to be stale: unfinished ``.tmp-*`` folders of killed writers are removed);
2. writes every file into a new hidden sibling ``FOLDER/.tmp-gen-...``, each fsync'd, then the
   manifest (the step and each file's size and SHA-256) and its signature, then fsyncs the folder;
3. renames it to ``gen-...`` (one ``rename``: atomic) and fsyncs ``FOLDER``: this is the swap;
4. only then removes the generations beyond the newest ``keep`` (each renamed to ``.old-*``
   first, so that a half-deleted one never looks like a checkpoint).

At every instant, therefore, ``FOLDER`` holds the previous complete checkpoint, or the new
complete one (with the previous one until step 4): a SIGKILL, a full disk or a second Ctrl-C
leaves at worst a ``.tmp-*`` folder that loading ignores and the next save removes. An error
while writing (full disk) removes the unfinished folder and raises ``OSError`` saying why and
which checkpoint is still intact.

**Loading** (:func:`load_checkpoint`) takes the newest generation and checks, before anything
is unpickled: that the manifest's signature is valid (else ``UnsafeFileError``, unless
``trusted=True``), then every file against the manifest's size and SHA-256, on the bytes that
are then loaded. Every file is opened and read once, by :mod:`deep_sarsa.gate`
(:func:`~deep_sarsa.gate.read_signed`, :func:`~deep_sarsa.gate.read_listed`,
:func:`~deep_sarsa.gate.open_listed`, :func:`~deep_sarsa.gate.unpickle`). A missing, truncated
or mixed file is a :class:`CheckpointError` naming the file; where an older complete
generation exists, loading falls back to it with a warning that says which one and why. (A
folder of the older layout, the files directly in it with a ``.sig`` beside each, still loads.)

**Identity.** The manifest records the generation's sequence and step, which must be those of
its folder's name, and the run's id where one is given (``run_id``): :func:`load_checkpoint` refuses
a generation copied under another name, or from another run, with a :class:`CheckpointIdentityError`.

**Trust.** Resuming envs mid-episode needs their pickled state, and unpickling runs code: the
manifest is signed with the user's secret key (:mod:`deep_sarsa.signing`), and covers every
file by its hash, so a checkpoint written on this machine resumes without ceremony and one from
elsewhere is refused unless ``trusted=True``; a tampered manifest or file is never trusted.

**Envs.** The VecEnv is pickled with its wrappers, except what cannot or must not be pickled:
``VecNormalize`` goes to its own ``vecnormalize.pkl`` through SB3's ``VecNormalize.save`` (with
its per-env discounted returns, which SB3's file leaves out) and is loaded back with
``VecNormalize.load`` over the restored envs; each ``Monitor`` log file (``make_vec_env(...,
monitor_dir=...)``) is saved as its path and length, and reopened for appending on resume, cut
back to that length first (the rows of episodes after the checkpoint are played again by the
resumed run), so the log has every episode once. A log inside the run folder (the checkpoint
folder's parent) is saved relative to it and reopened in the folder being loaded, never out of it,
so a copied run folder resumes into its own log; the finite check that ``learn()`` puts under
``VecNormalize`` is left out. ``DummyVecEnv``, ``VecFrameStack``, masked envs (sb3-contrib's
``ActionMasker``) and Dict observations work; ``SubprocVecEnv`` keeps its envs in other
processes and is refused (:func:`check_saveable_env`).
"""

import contextlib
import csv
import hashlib
import inspect
import io
import json
import os
import pathlib
import pickle
import random
import re
import shutil
import uuid
import warnings
from collections.abc import Iterator
from typing import IO, Any

import cloudpickle
import numpy as np
import torch as th
from stable_baselines3.common.monitor import ResultsWriter
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv, VecEnvWrapper, VecNormalize

from deep_sarsa.deep_sarsa import DeepSARSA
from deep_sarsa.files import MAX_MODEL_FILE_BYTES, check_model_safely
from deep_sarsa.finite import RawFiniteCheck
from deep_sarsa.gate import memory_cap, named_bytes, open_listed, open_signed, read_listed, read_signed, unpickle
from deep_sarsa.safe_pickle import one_line
from deep_sarsa.signing import key_path, sign, signing_key

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

MODEL_FILE = "model.zip"
BUFFER_FILE = "replay_buffer.pkl"
STATE_FILE = "state.pkl"
MANIFEST_FILE = "manifest.json"
VEC_NORMALIZE_FILE = "vecnormalize.pkl"
#: ``manifest.json``'s ``format``
FORMAT = "deep-sarsa checkpoint"
VERSION = 2
LOCK_FILE = ".lock"
_TEMPORARY = ".tmp-"
_OLD = ".old-"
_GENERATION = re.compile(r"gen-(\d{8,})-step-(\d+)")
_STATE_KEYS = {"env", "numpy", "torch", "cuda", "python", "action_space"}
_CHUNK = 1 << 20
#: the largest manifest read (one written here is about 1 KB)
MAX_MANIFEST_BYTES = 1 << 20
#: the largest checkpoint file read (lowered to the memory available: each is read into memory)
MAX_CHECKPOINT_FILE_BYTES = 1 << 40


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, truncated or mixed: the message names the file."""


class CheckpointIdentityError(CheckpointError):
    """
    A generation that is not what its name or its run says: its manifest's sequence or step disagrees with its folder's
    name, or its run id with the run's. No crash makes one (it was copied or renamed), so loading never falls back past it.
    """


def _innermost(env: VecEnv) -> VecEnv:
    while isinstance(env, VecEnvWrapper):
        env = env.venv
    return env


def check_saveable_env(env: VecEnv | None, caller: str = "save_checkpoint") -> None:
    """
    Refuse, when training starts rather than when saving, envs that a checkpoint cannot hold.

    :param env: the model's env
    :param caller: who asks, for the message
    :raises ValueError: no env, a ``SubprocVecEnv``, or (for a caller other than ``save_checkpoint``,
        which pickles them anyway) envs that cannot be pickled, such as an env holding an open file
    """
    if env is None:
        raise ValueError(f"{caller} needs the model's env: the model has none (set it with model.set_env)")
    if isinstance(_innermost(env), SubprocVecEnv):
        raise ValueError(
            f"{caller}: a checkpoint saves the envs to resume them mid-episode, which SubprocVecEnv does not allow "
            "(its envs live in other processes): use DummyVecEnv (make_vec_env(..., vec_env_cls=DummyVecEnv)), "
            "or save with model.save + save_replay_buffer (not an exact resume)"
        )
    if caller != "save_checkpoint":  # at the start of training: a trial pickling, which writes nothing
        try:
            _EnvPickler(_Discard(), None).dump(env)  # type: ignore[arg-type]
        except (pickle.PicklingError, TypeError, AttributeError, ValueError) as error:
            raise ValueError(f"{caller}: {_cannot_save(error)}") from error


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


def _cannot_save(error: BaseException) -> str:
    return (
        f"the envs cannot be saved ({type(error).__name__}: {one_line(error)}): a checkpoint pickles the VecEnv "
        "and its envs, to resume them mid-episode"
    )


# -- the envs, pickled without open files ---------------------------------------------------------


class _EnvPickler(cloudpickle.Pickler):
    """cloudpickle, with VecNormalize, Monitor logs and the raw finite check saved as described in the module docstring."""

    def __init__(self, file: IO[bytes], folder: pathlib.Path | None, root: pathlib.Path | None = None) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.folder = folder  # None: a trial run that writes nothing (check_saveable_env)
        self.root = root  # the run folder (the checkpoint folder's parent): the Monitor logs inside it are kept relative
        self.extra_files: list[str] = []
        self.wrappers: dict[int, int] = {}  # each VecEnvWrapper once: its number

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, RawFiniteCheck):
            return ("skip", obj.venv)
        if isinstance(obj, VecNormalize):
            name = VEC_NORMALIZE_FILE if not self.extra_files else f"vecnormalize-{len(self.extra_files)}.pkl"
            if self.folder is not None:
                obj.save(str(self.folder / name))
            self.extra_files.append(name)
            return ("vec_normalize", name, obj.venv, np.array(obj.returns, copy=True))
        if isinstance(obj, SubprocVecEnv):
            check_saveable_env(obj)
        if isinstance(obj, VecEnvWrapper):  # its class_attributes (from inspect.getmembers) cannot be pickled
            if id(obj) in self.wrappers:
                return ("same_wrapper", self.wrappers[id(obj)])
            self.wrappers[id(obj)] = len(self.wrappers)
            return ("vec_env_wrapper", type(obj), {k: v for k, v in vars(obj).items() if k != "class_attributes"})
        if isinstance(obj, ResultsWriter):
            handle = obj.file_handler
            if handle.closed:
                return ("closed_monitor_file", handle.name)
            if self.folder is not None:
                handle.flush()
                os.fsync(handle.fileno())
            size = os.fstat(handle.fileno()).st_size
            path = os.path.abspath(handle.name)
            if self.root is not None and _inside_lexically(path, self.root):
                relative = pathlib.Path(os.path.relpath(path, self.root)).as_posix()
                return ("run_monitor_file", relative, list(obj.logger.fieldnames), size)
            return ("monitor_file", path, list(obj.logger.fieldnames), size)
        if isinstance(obj, io.IOBase) and not isinstance(obj, (io.BytesIO, io.StringIO)):
            raise ValueError(
                f"the envs hold an open file, {getattr(obj, 'name', obj)!r}: a checkpoint does not pickle open files "
                "(only the logs of SB3's Monitor are saved and reopened); let the env open it again in __setstate__"
            )
        return None


def _inside_lexically(path: str, folder: pathlib.Path) -> bool:
    base = os.path.abspath(folder)
    return os.path.commonpath([os.path.abspath(path), base]) == base


def _inside_really(path: str, folder: pathlib.Path) -> bool:
    base = os.path.realpath(folder)
    return os.path.commonpath([os.path.realpath(path), base]) == base


class _EnvRestorer:
    """
    What rebuilds the objects :class:`_EnvPickler` saved by reference, as the persistent ids of the state's pickle
    (:func:`deep_sarsa.gate.unpickle` calls :meth:`persistent_load`).
    """

    def __init__(
        self, folder: pathlib.Path, files: dict[str, bytes], root: pathlib.Path, run_folder: pathlib.Path | None = None
    ) -> None:
        self.folder = folder  # the generation
        self.files = files  # its files, read and checked against the manifest
        self.name = str(folder / STATE_FILE)
        self.root = root  # the run folder the relative Monitor logs are resolved against
        self.run_folder = run_folder  # where given, every Monitor log must be inside it
        #: Monitor logs to reopen once everything else has loaded: (writer, path, fieldnames, length)
        self.monitor_files: list[tuple[ResultsWriter, str, list[str], int]] = []
        self.wrappers: list[VecEnvWrapper] = []

    def persistent_load(self, pid: Any) -> Any:
        kind = pid[0] if isinstance(pid, tuple) and pid else None
        if kind == "skip":
            return pid[1]
        if kind == "vec_normalize":
            _, name, venv, returns = pid
            if name not in self.files:
                raise CheckpointError(f"{self.name}: it needs {name}, which the manifest does not list")
            # what VecNormalize.load does, on the checked bytes (covered by the signed manifest, as the state is)
            vec_normalize = unpickle(
                self.files[name], str(self.folder / name), "the VecNormalize statistics", None, trusted=True
            )
            vec_normalize.set_venv(venv)
            vec_normalize.returns = returns
            return vec_normalize
        if kind == "vec_env_wrapper":
            _, cls, attributes = pid
            wrapper = cls.__new__(cls)
            wrapper.__dict__.update(attributes)
            wrapper.class_attributes = dict(inspect.getmembers(cls))
            self.wrappers.append(wrapper)
            return wrapper
        if kind == "same_wrapper":
            if pid[1] >= len(self.wrappers):
                raise CheckpointError(f"{self.name}: a VecEnv wrapper refers to itself, which a checkpoint cannot restore")
            return self.wrappers[pid[1]]
        if kind == "closed_monitor_file":
            return None  # a Monitor whose log was closed goes on without one
        if kind in ("monitor_file", "run_monitor_file"):
            writer = ResultsWriter.__new__(ResultsWriter)  # its file is opened once everything has loaded
            self.monitor_files.append((writer, self._monitor_path(kind, pid[1]), pid[2], pid[3]))
            return writer
        raise CheckpointError(f"{self.name}: unknown saved object {kind!r}")

    def _monitor_path(self, kind: str, saved: Any) -> str:
        """
        Where a Monitor log is reopened: a relative path (``run_monitor_file``) against the run folder being loaded, and
        never out of it; an absolute one (0.1.0's checkpoints, or a log kept outside the run folder) where it is, unless
        a ``run_folder`` is given and it is outside that.
        """
        if not isinstance(saved, str) or not saved:
            raise CheckpointError(f"{self.name}: a Monitor log path {saved!r} is not a path")
        if kind == "monitor_file":
            if self.run_folder is not None and not (
                _inside_lexically(saved, self.run_folder) and _inside_really(saved, self.run_folder)
            ):
                raise CheckpointError(
                    f"{self.name}: the Monitor log {saved} is outside the run folder {self.run_folder}: refused (a resumed "
                    "run writes only inside its own folder)"
                )
            return saved
        relative = pathlib.PurePosixPath(saved)
        path = os.path.join(self.root, *relative.parts)
        if relative.is_absolute() or ".." in relative.parts or not _inside_really(path, self.root):
            raise CheckpointError(
                f"{self.name}: the Monitor log {saved} leads out of the run folder {self.root}: refused (a resumed run "
                "writes only inside its own folder)"
            )
        return path


def _reopen_monitor_files(monitor_files: list[tuple[ResultsWriter, str, list[str], int]]) -> None:
    """Each Monitor log, cut back to its length at the checkpoint and opened for appending."""
    for writer, path, fieldnames, length in monitor_files:
        try:
            size = os.path.getsize(path)
        except OSError:
            size = -1
        if size < length:
            warnings.warn(
                f"{path}: the Monitor log is {'missing' if size < 0 else f'{size} bytes'}, shorter than the {length} bytes "
                "it had at the checkpoint: the episodes from now on are appended to it",
                stacklevel=4,
            )
        elif size > length:  # rows of episodes after the checkpoint: the resumed run plays them again
            os.truncate(path, length)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        writer.file_handler = open(path, "a", newline="\n")  # noqa: SIM115 - closed by Monitor.close
        writer.logger = csv.DictWriter(writer.file_handler, fieldnames=fieldnames)


# -- writing ----------------------------------------------------------------------------------------


def _fsync_dir(path: pathlib.Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - a platform that cannot open folders
        return
    try:
        os.fsync(descriptor)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(descriptor)


def _fsync_and_describe(path: pathlib.Path) -> dict[str, Any]:
    """fsync a written file; its size and SHA-256 for the manifest."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as file:
        os.fsync(file.fileno())
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def list_checkpoints(folder: str | pathlib.Path) -> list[pathlib.Path]:
    """
    The complete checkpoints (generation folders) in ``folder``, newest first.

    :param folder: a checkpoint folder
    :return: the generation folders (none if ``folder`` does not exist)
    """
    folder = pathlib.Path(folder)
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(int(match[1]), entry) for entry in entries if (match := _GENERATION.fullmatch(entry.name)) and entry.is_dir()]
    return [entry for _, entry in sorted(found, reverse=True)]


def latest_checkpoint(folder: str | pathlib.Path) -> pathlib.Path | None:
    """
    :param folder: a checkpoint folder
    :return: its newest complete checkpoint (a generation folder), or None
    """
    checkpoints = list_checkpoints(folder)
    return checkpoints[0] if checkpoints else None


@contextlib.contextmanager
def _locked(folder: pathlib.Path) -> Iterator[bool]:
    """An exclusive lock on the folder (where the platform has ``flock``): yields whether it is held."""
    if fcntl is None:  # pragma: no cover
        yield False
        return
    descriptor = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(descriptor)  # releases the lock


def _remove(path: pathlib.Path) -> None:
    """Remove a generation: renamed first, so that a half-removed one never looks like a checkpoint."""
    doomed = path.with_name(f"{_OLD}{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_leftovers(folder: pathlib.Path, locked: bool) -> None:
    """Unfinished and half-removed folders of writers that died (with the lock held, every one is a dead writer's)."""
    for entry in folder.iterdir():
        if entry.name.startswith(_OLD) or (locked and entry.name.startswith(_TEMPORARY)):
            shutil.rmtree(entry, ignore_errors=True)


def _write_generation(model: DeepSARSA, env: VecEnv, folder: pathlib.Path, sequence: int, run_id: str | None) -> bool:
    """Every file of a checkpoint into ``folder``, fsync'd, with the manifest; returns whether it is signed."""
    state = {
        "numpy": np.random.get_state(),
        "torch": th.get_rng_state(),
        "cuda": th.cuda.get_rng_state_all() if th.cuda.is_available() else None,
        "python": random.getstate(),
        "action_space": model.action_space.np_random.bit_generator.state,
    }
    with open(folder / STATE_FILE, "wb") as file:
        pickler = _EnvPickler(file, folder, folder.absolute().parent.parent)  # the run folder: the checkpoint folder's parent
        try:
            pickler.dump({"env": env, **state})
        except (pickle.PicklingError, TypeError, AttributeError, ValueError) as error:
            raise ValueError(f"save_checkpoint: {_cannot_save(error)}") from error
    model.save(folder / MODEL_FILE)
    model.save_replay_buffer(folder / BUFFER_FILE)
    names = [MODEL_FILE, BUFFER_FILE, STATE_FILE, *pickler.extra_files]
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "sequence": sequence,
        "num_timesteps": model.num_timesteps,
        "total_timesteps": model._total_timesteps,
        "files": {name: _fsync_and_describe(folder / name) for name in names},
    }
    if run_id is not None:
        manifest["run_id"] = run_id
    with open(folder / MANIFEST_FILE, "w") as file:
        json.dump(manifest, file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    try:
        signing_key()
    except (OSError, ValueError) as error:
        warnings.warn(
            f"the checkpoint is saved but could not be signed with the key {key_path()} ({error}): "
            "resume it with trusted=True",
            stacklevel=4,
        )
        return False
    _fsync_and_describe(sign(folder / MANIFEST_FILE))
    return True


def save_checkpoint(model: DeepSARSA, folder: str | pathlib.Path, keep: int = 1, run_id: str | None = None) -> pathlib.Path:
    """
    Save the model, its replay buffer, its envs and every random generator as a new checkpoint in
    ``folder``, swapped in whole (module docstring): ``folder`` holds the previous complete
    checkpoint until the new one is complete.

    Call it when ``learn()`` has returned, or at a rollout boundary (as
    :class:`deep_sarsa.callbacks.SaveOnInterrupt` does), not in the middle of a rollout.

    :param model: the model
    :param folder: the checkpoint folder (created if needed)
    :param keep: how many of the newest checkpoints to keep in ``folder`` (older ones are removed)
    :param run_id: the run's identity, kept in the manifest: :func:`load_checkpoint` given a run id refuses a
        checkpoint of another run (``deep-sarsa train`` passes the ``run_id`` of its ``run.json``)
    :return: the folder
    :raises OSError: the checkpoint could not be written (e.g. the disk is full): the message
        says why; the previous checkpoint is intact
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be a positive integer, got {keep!r}")
    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise ValueError(f"run_id must be a non-empty string or None, got {run_id!r}")
    env = model.get_env()
    check_saveable_env(env)
    assert env is not None
    folder = pathlib.Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file: a checkpoint folder is expected")
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder) as locked:
        _remove_leftovers(folder, locked)
        existing = list_checkpoints(folder)
        sequence = int(_GENERATION.fullmatch(existing[0].name)[1]) + 1 if existing else 1  # type: ignore[index]
        name = f"gen-{sequence:08d}-step-{model.num_timesteps}"
        temporary = folder / f"{_TEMPORARY}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            temporary.mkdir()
            _write_generation(model, env, temporary, sequence, run_id)
            _fsync_dir(temporary)
            os.rename(temporary, folder / name)
            _fsync_dir(folder)
        except BaseException as error:
            shutil.rmtree(temporary, ignore_errors=True)
            if isinstance(error, OSError):
                intact = f"the previous checkpoint {existing[0]} is intact" if existing else "no earlier checkpoint was in it"
                raise OSError(
                    error.errno,
                    f"{folder}: the checkpoint at step {model.num_timesteps} could not be written "
                    f"({type(error).__name__}: {one_line(error)}); {intact}",
                ) from error
            raise
        for old in existing[keep - 1 :]:
            try:
                _remove(old)
            except OSError as error:
                warnings.warn(f"{old}: an old checkpoint could not be removed ({error})", stacklevel=2)
    return folder


# -- loading --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _listed(path: pathlib.Path) -> Iterator[None]:
    """A file that the manifest lists and that is not there: the checkpoint is incomplete."""
    try:
        yield
    except FileNotFoundError as error:
        raise CheckpointError(f"{path}: missing (the manifest lists it): the checkpoint is incomplete") from error


def _refusal(what: str) -> str:
    """Why a checkpoint file that is not signed with this user's key is refused (:func:`deep_sarsa.gate.read_signed`)."""
    return (
        f"{what} the pickled envs, which can run any code, so only checkpoints written with this user's key "
        f"({key_path()}) are resumed without asking"
    )


def _read_manifest(folder: pathlib.Path, trusted: bool) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    try:
        content, _ = read_signed(
            path,
            "a checkpoint manifest",
            MAX_MANIFEST_BYTES,
            folder,
            trusted=trusted,
            refusal=_refusal("a checkpoint holds"),
            error=CheckpointError,
        )
    except FileNotFoundError as error:
        raise CheckpointError(f"{path}: missing: {folder} is not a complete checkpoint") from error
    try:
        manifest = json.loads(content)
    except ValueError as error:
        raise CheckpointError(f"{path} is not a checkpoint manifest (not JSON: {error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{path} is not a checkpoint manifest (expected format {FORMAT!r} with 'files')")
    missing = [name for name in (MODEL_FILE, BUFFER_FILE, STATE_FILE) if name not in manifest["files"]]
    if missing:
        raise CheckpointError(f"{path}: the manifest does not list {', '.join(missing)}")
    return manifest


def _restore_generators(model: DeepSARSA, state: dict[str, Any]) -> None:
    """Loading re-seeds every generator with the model's seed: put them back where they were."""
    np.random.set_state(state["numpy"])
    th.set_rng_state(state["torch"])
    if state["cuda"] is not None and th.cuda.is_available():
        th.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    model.action_space.np_random.bit_generator.state = state["action_space"]


def _check_identity(folder: pathlib.Path, manifest: dict[str, Any], run_id: str | None) -> None:
    """The manifest's sequence against the generation's name; its run id against the run's (where both have one)."""
    match = _GENERATION.fullmatch(folder.name)
    if match is not None and manifest.get("sequence") != int(match[1]):
        raise CheckpointIdentityError(
            f"{folder}: its manifest records sequence {manifest.get('sequence')!r} at step "
            f"{manifest.get('num_timesteps')!r}, but the folder is named for sequence {int(match[1])}: a generation "
            "copied or renamed, refused"
        )
    recorded_id = manifest.get("run_id")
    if recorded_id is not None and not isinstance(recorded_id, str):
        raise CheckpointIdentityError(f"{folder}: its manifest's run_id {recorded_id!r} is not a string")
    if run_id is not None and recorded_id is not None and recorded_id != run_id:
        raise CheckpointIdentityError(
            f"{folder}: a checkpoint of another run (its run id is {recorded_id}, this run's is {run_id}): refused"
        )


def _load_generation(
    folder: pathlib.Path,
    device: th.device | str,
    trusted: bool,
    run_id: str | None = None,
    run_folder: pathlib.Path | None = None,
) -> DeepSARSA:
    manifest = _read_manifest(folder, trusted)  # signed (or trusted): from here on every file is checked against it
    files: dict[str, Any] = manifest["files"]
    cap = memory_cap(MAX_CHECKPOINT_FILE_BYTES)
    small: dict[str, bytes] = {}
    for name, entry in files.items():  # each read once through the gate, checked against its size and SHA-256
        if name != BUFFER_FILE:
            with _listed(folder / name):
                small[name] = read_listed(folder / name, entry, "a checkpoint file", cap, folder, CheckpointError)
    _check_identity(folder, manifest, run_id)  # before anything is unpickled
    with contextlib.ExitStack() as stack:
        with _listed(folder / BUFFER_FILE):  # opened once, hashed, rewound: unpickled from the bytes checked
            buffer_file = stack.enter_context(
                open_listed(folder / BUFFER_FILE, files[BUFFER_FILE], "a checkpoint file", cap, folder, CheckpointError)
            )
        root = folder.absolute().parent.parent  # the run folder: the checkpoint folder's parent
        restorer = _EnvRestorer(folder, small, root, run_folder)
        state = unpickle(  # the bytes the signed manifest covers: trusted
            small[STATE_FILE],
            restorer.name,
            "the checkpoint state",
            None,
            trusted=True,
            persistent_load=restorer.persistent_load,
            passing=(CheckpointError,),
        )
        if not isinstance(state, dict) or not state.keys() >= _STATE_KEYS:
            raise ValueError(f"{folder / STATE_FILE} is not the state of a checkpoint written by save_checkpoint")
        # force_reset=False keeps the envs mid-episode, with the observation the model last saw
        model_file = named_bytes(small[MODEL_FILE], str(folder / MODEL_FILE))
        model = DeepSARSA.load(model_file, env=state["env"], device=device, force_reset=False, trusted=True)
        model.load_replay_buffer(buffer_file, trusted=True)
    match = _GENERATION.fullmatch(folder.name)
    if match is not None and model.num_timesteps != int(match[2]):  # the step of the checked model.zip: before any log is cut
        raise CheckpointIdentityError(
            f"{folder}: its model is at step {model.num_timesteps}, but the folder is named for step {int(match[2])}: "
            "a generation copied or renamed, refused"
        )
    _restore_generators(model, state)
    _reopen_monitor_files(restorer.monitor_files)
    return model


def _load_flat(folder: pathlib.Path, device: th.device | str, trusted: bool) -> DeepSARSA:
    """
    A checkpoint of the older layout: the three files directly in ``folder``, each with its own ``.sig``, each read once
    through the gate, which checks the signature of the bytes it read.
    """
    missing = [name for name in (MODEL_FILE, BUFFER_FILE, STATE_FILE) if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete checkpoint: {', '.join(missing)} missing")
    model_path, path = folder / MODEL_FILE, folder / STATE_FILE
    model = read_signed(model_path, "a model file", memory_cap(MAX_MODEL_FILE_BYTES), folder, trusted=trusted)
    check_model_safely(named_bytes(model.content, str(model_path)), DeepSARSA, model.trusted)  # before the state runs
    content, _ = read_signed(
        path,
        "a checkpoint state",
        memory_cap(MAX_CHECKPOINT_FILE_BYTES),
        folder,
        trusted=trusted,
        refusal=_refusal("a checkpoint's state.pkl holds"),
        error=CheckpointError,
    )
    state = unpickle(content, str(path), "the checkpoint state", None, trusted=True)  # signed or trusted: its code runs
    if not isinstance(state, dict) or not state.keys() >= _STATE_KEYS:
        raise ValueError(f"{path} is not the state of a checkpoint written by save_checkpoint")
    loaded = DeepSARSA.load(
        named_bytes(model.content, str(model_path)), env=state["env"], device=device, force_reset=False, trusted=model.trusted
    )
    buffer_cap = memory_cap(MAX_CHECKPOINT_FILE_BYTES)
    with open_signed(folder / BUFFER_FILE, "a replay buffer", buffer_cap, folder, trusted=trusted) as (buffer, signed):
        loaded.load_replay_buffer(buffer, trusted=signed)
    _restore_generators(loaded, state)
    return loaded


def load_checkpoint(
    folder: str | pathlib.Path,
    device: th.device | str = "auto",
    trusted: bool = False,
    run_id: str | None = None,
    run_folder: str | pathlib.Path | None = None,
) -> DeepSARSA:
    """
    Load the newest complete checkpoint in ``folder``: the model with its replay buffer and envs,
    every random generator restored, ready to go on with ``learn(..., reset_num_timesteps=False)``.
    Every file is checked against the signed manifest first; where the newest checkpoint is
    incomplete or mixed, the previous complete one is loaded, with a warning.

    :param folder: the checkpoint folder (or one of its ``gen-*`` folders, to load that one)
    :param device: the device to load the model on
    :param trusted: load a checkpoint that is not signed with this user's key (runs any code its
        pickles name): only for a checkpoint you trust
    :param run_id: the run's identity (:func:`save_checkpoint`): a generation whose manifest records another run id is
        refused (one without a run id, written by 0.1.0, is loaded)
    :param run_folder: where given, a Monitor log that the checkpoint keeps outside this folder is refused (Monitor logs
        inside the checkpoint folder's parent are kept relative to it, and reopened in the copy being loaded)
    :return: the model
    :raises CheckpointError: no checkpoint in ``folder`` is complete (the message names each bad file)
    :raises CheckpointIdentityError: a generation's manifest disagrees with its folder's name or with ``run_id``
        (copied or renamed: never fallen back from)
    :raises UnsafeFileError: the newest checkpoint is not signed with this user's key
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such checkpoint folder")
    root = None if run_folder is None else pathlib.Path(run_folder)
    if (folder / MANIFEST_FILE).exists():
        return _load_generation(folder, device, trusted, run_id, root)
    generations = list_checkpoints(folder)
    if not generations:
        if (folder / MODEL_FILE).exists() or (folder / STATE_FILE).exists():
            return _load_flat(folder, device, trusted)
        unfinished = sorted(entry.name for entry in folder.iterdir() if entry.name.startswith(_TEMPORARY))
        raise FileNotFoundError(
            f"{folder} holds no complete checkpoint"
            + (f" (only the unfinished {', '.join(unfinished)}, from a save that was interrupted)" if unfinished else "")
        )
    failures: list[str] = []
    for generation in generations:
        try:
            model = _load_generation(generation, device, trusted, run_id, root)
        except CheckpointIdentityError:
            raise
        except CheckpointError as error:
            failures.append(str(error))
            continue
        if failures:
            warnings.warn(
                f"{folder}: the newest checkpoint cannot be loaded ({'; '.join(failures)}): loaded the previous complete "
                f"one instead, {generation.name} (step {model.num_timesteps})",
                stacklevel=2,
            )
        return model
    raise CheckpointError(f"{folder}: no checkpoint in it can be loaded: {'; '.join(failures)}")


def resume(
    folder: str | pathlib.Path, device: th.device | str = "auto", trusted: bool = False, **learn_kwargs: Any
) -> DeepSARSA:
    """
    Load the newest complete checkpoint and learn the steps that were left of the interrupted ``learn()`` call.

    :param folder: the checkpoint folder
    :param device: the device to load the model on
    :param trusted: resume a checkpoint that is not signed with this user's key (:func:`load_checkpoint`)
    :param learn_kwargs: other arguments of ``learn`` (callback, log_interval, progress_bar, ...)
    :return: the trained model
    """
    model = load_checkpoint(folder, device, trusted)
    remaining = max(model._total_timesteps - model.num_timesteps, 0)
    return model.learn(remaining, reset_num_timesteps=False, **learn_kwargs)
