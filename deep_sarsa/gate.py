"""
The one gate every file that may come from elsewhere goes through: model zips, replay buffers, a
checkpoint's manifest and files, a run's ``run.json`` and ``evaluations.npz``, an rl-zoo3 folder's
yml files and ``vecnormalize.pkl``. Each such file is opened and read once, here, and what is
checked (its kind, its size, its signature, its hash) is what is then used: no other module of the
package opens one, verifies a signature or unpickles.

**A regular file, under a cap.** A received file could be a FIFO (reading it waits forever), a
device (``/dev/zero`` never ends), a symbolic link out of the folder it was received in, or a
regular file far larger than what it claims to be; an ``.npz`` can declare arrays far larger than
it holds (:func:`read_npz`). :func:`open_regular` opens a path without waiting (``O_NONBLOCK``),
checks on the opened descriptor (``fstat``, so that what is checked is what is read) that it is a
regular file no larger than the cap, and, when a ``folder`` is given, that the path does not lead
out of it; :func:`read_regular` reads such a file whole, never more than the cap;
:func:`read_source` and :func:`open_source` do the same for what SB3's ``load`` accepts (a path,
with SB3's suffix tried, or an open file).

**Its signature** (:mod:`deep_sarsa.signing`): :func:`read_signed` reads a file once and checks
the signature of exactly those bytes, refusing an unsigned one unless ``trusted``;
:func:`open_signed` hashes a large file on its open descriptor and rewinds it, so that a file
swapped for another under the same name after the check is never read. A checkpoint's files are
covered by its signed manifest instead: :func:`read_listed` and :func:`open_listed` check each
against the size and SHA-256 the manifest records, on the bytes that are then used.

**Its pickles** (:mod:`deep_sarsa.safe_pickle`): :func:`unpickle` and :func:`read_pickle` rebuild
only an allowlist of globals, or, only when ``trusted`` (the user said so, or the bytes carry the
user's signature), unpickle as ``pickle`` does.

Each refusal is one line that names the file and says why, raised as the caller's error class (a
``ValueError``); a file that is not there is a ``FileNotFoundError`` naming it.

The gate sits above :mod:`deep_sarsa.validation`, :mod:`deep_sarsa.safe_pickle` and
:mod:`deep_sarsa.signing`, and below every module that loads a file (:mod:`deep_sarsa.files`,
:mod:`deep_sarsa.checkpoint`, the CLI, :mod:`deep_sarsa.zoo.folders`), which call down into it and
never the other way.
"""

import contextlib
import hashlib
import io
import math
import os
import pathlib
import pickle
import stat
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from deep_sarsa.safe_pickle import TRUST_HINT, Allowlist, UnsafeFileError, one_line, restricted_load, stream_size
from deep_sarsa.signing import CHUNK_BYTES, MAX_SIGNATURE_BYTES, has_key, matches, signature_of, signature_path
from deep_sarsa.validation import memory_bytes

#: a file's path
FilePath = str | os.PathLike[str]
#: what SB3's ``load`` and ``load_replay_buffer`` accept: a path, or an open binary file
Source = FilePath | io.BufferedIOBase

#: the kinds of file that are not regular, by ``stat``'s test, for messages
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, base]) == base


def memory_cap(cap: int) -> int:
    """
    :param cap: a file kind's own cap in bytes
    :return: the cap, lowered to the memory available now (where known): a file is read into memory
    """
    _, available = memory_bytes()
    return cap if available is None else min(cap, available)


def open_regular(
    path: FilePath,
    what: str,
    cap: int,
    folder: FilePath | None = None,
    error: type[ValueError] = ValueError,
) -> io.BufferedReader:
    """
    Open a received file for reading, once it is known to be a regular file of at most ``cap`` bytes.

    :param path: the file
    :param what: what it is, for messages (``"a model file"``, ``"a checkpoint manifest"``)
    :param cap: the most bytes it may have
    :param folder: the folder it was received in: a path that leads out of it (a symbolic link) is refused
    :param error: the error class raised for a refusal
    :return: the open file (the caller closes it)
    :raises FileNotFoundError: naming the file, when there is none
    :raises error: for anything but a regular file of at most ``cap`` bytes inside ``folder``
    """
    path = pathlib.Path(path)
    if folder is not None and not _inside(path, pathlib.Path(folder)):
        raise error(
            f"{path} leads out of {folder} (a symbolic link to {os.path.realpath(path)}): {what} is read only from inside it"
        )
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError as missing:
        raise FileNotFoundError(missing.errno, f"{path}: no such file ({what})", str(path)) from missing
    except OSError as failure:
        raise error(f"{path}: cannot be opened as {what} ({failure.strerror})") from failure
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise error(f"{path} is {_kind(status.st_mode)}, not a regular file: refused as {what}")
        if status.st_size > cap:
            raise error(f"{path} is {status.st_size} bytes, more than {what} may be here ({cap} bytes): refused")
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)
        return open(descriptor, "rb", closefd=True)
    except BaseException:
        os.close(descriptor)
        raise


def read_regular(
    path: FilePath,
    what: str,
    cap: int,
    folder: FilePath | None = None,
    error: type[ValueError] = ValueError,
) -> bytes:
    """
    The bytes of a received file (:func:`open_regular`), read once, never more than ``cap``.

    :param path: the file
    :param what: what it is, for messages
    :param cap: the most bytes it may have
    :param folder: the folder it was received in (a path out of it is refused)
    :param error: the error class raised for a refusal
    :return: its content
    """
    with open_regular(path, what, cap, folder, error) as file:
        content = file.read(cap + 1)
    if len(content) > cap:  # it grew while being read
        raise error(f"{path} grew past {cap} bytes while it was read: refused as {what}")
    return content


def read_npz(
    path: FilePath,
    what: str,
    cap: int,
    folder: FilePath | None = None,
    error: type[ValueError] = ValueError,
) -> dict[str, np.ndarray]:
    """
    The arrays of a received ``.npz`` file (NumPy's ``savez``), read through :func:`read_regular`:
    every member is refused before it is decompressed when the members together declare more than
    ``cap`` bytes, and before its array is allocated when its header declares an array larger than
    the member holds, or one of Python objects (never unpickled).

    :param path: the file
    :param what: what it is, for messages
    :param cap: the most bytes the file and its decompressed members may have
    :param folder: the folder it was received in (a path out of it is refused)
    :param error: the error class raised for a refusal
    :return: the arrays by name (without ``.npy``)
    """
    content = read_regular(path, what, cap, folder, error)
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except (zipfile.BadZipFile, EOFError, ValueError) as failure:
        raise error(f"{path} is not {what} (not an .npz archive: {failure})") from failure
    arrays: dict[str, np.ndarray] = {}
    with archive:
        members = archive.infolist()
        total = sum(member.file_size for member in members)
        if total > cap:
            raise error(f"{path}: its members hold {total} bytes once decompressed, more than {what} may ({cap} bytes)")
        for member in members:
            if not member.filename.endswith(".npy"):
                raise error(f"{path}: its member {member.filename!r} is not an array (.npy): refused as {what}")
            try:
                with archive.open(member) as file:
                    version = np.lib.format.read_magic(file)
                    if version not in ((1, 0), (2, 0)):
                        raise ValueError(f"an .npy format version {version} that NumPy's savez does not write")
                    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = reader(file)
                    declared = math.prod(shape) * dtype.itemsize
                    if dtype.hasobject or declared > member.file_size:
                        problem = "Python objects" if dtype.hasobject else f"{declared} bytes"
                        raise error(
                            f"{path}: its member {member.filename!r} declares an array of {shape} {dtype} ({problem}), "
                            f"but holds {member.file_size} bytes: refused before allocating it"
                        )
                with archive.open(member) as file:
                    arrays[member.filename[: -len(".npy")]] = np.lib.format.read_array(file, allow_pickle=False)
            except error:
                raise
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as failure:
                raise error(f"{path}: its member {member.filename!r} is not a readable array ({failure})") from failure
    return arrays


# --- what SB3's load accepts: a path or an open file -------------------------------------------------


def named_bytes(content: bytes, name: str) -> io.BytesIO:
    """
    :param content: bytes the gate has read
    :param name: the file they were read from
    :return: an in-memory file of them whose ``name`` is the file's (so that messages name it)
    """
    file = io.BytesIO(content)
    file.name = name
    return file


def source_name(file: io.IOBase) -> str:
    """
    :param file: an open file
    :return: the name of its file for messages (``<BytesIO>`` and the like where it has none)
    """
    name = getattr(file, "name", None)
    return str(name) if isinstance(name, (str, os.PathLike)) else f"<{type(file).__name__}>"


def _existing(path: pathlib.Path, suffix: str) -> pathlib.Path:
    """SB3 also tries a path with ``suffix`` added."""
    if not suffix:
        return path
    with_suffix = path.with_name(path.name + suffix)
    return with_suffix if not path.exists() and with_suffix.exists() else path


def read_source(
    source: Source, what: str, cap: int, suffix: str = "", error: type[ValueError] = ValueError
) -> tuple[str, bytes]:
    """
    The bytes of a path (:func:`read_regular`; ``suffix`` added where the path without it does not
    exist, as SB3 does) or of an open file, read once and never more than ``cap``.

    :param source: the file, or an open binary file (read from its position)
    :param what: what it is, for messages
    :param cap: the most bytes it may have
    :param suffix: the suffix SB3 tries
    :param error: the error class raised for a refusal
    :return: its name for messages, and its content
    """
    if isinstance(source, io.BufferedIOBase):
        content = source.read(cap + 1)
        if len(content) > cap:
            raise error(f"{source_name(source)} is more than {cap} bytes, more than {what} may be here")
        return source_name(source), content
    path = _existing(pathlib.Path(source), suffix)
    return str(path), read_regular(path, what, cap, error=error)


@contextlib.contextmanager
def open_source(
    source: Source, what: str, cap: int, suffix: str = "", error: type[ValueError] = ValueError
) -> Iterator[tuple[str, io.BufferedIOBase]]:
    """
    A path opened through :func:`open_regular` (``suffix`` tried as SB3 does), or an open file whose
    size (where it can be known) is at most ``cap``: for a file read as a stream (a replay buffer).

    :param source: the file, or an open binary file (left open)
    :param what: what it is, for messages
    :param cap: the most bytes it may have
    :param suffix: the suffix SB3 tries
    :param error: the error class raised for a refusal
    :return: its name for messages, and the open file
    """
    if isinstance(source, io.BufferedIOBase):
        size = stream_size(source)
        if size is not None and size > cap:
            raise error(f"{source_name(source)} is {size} bytes, more than {what} may be here ({cap} bytes)")
        yield source_name(source), source
        return
    path = _existing(pathlib.Path(source), suffix)
    with open_regular(path, what, cap, error=error) as file:
        yield str(path), file


# --- signatures, of exactly the bytes read ---------------------------------------------------------


class Received(NamedTuple):
    """A file's bytes, read once, and whether they may run code: ``trusted`` was given, or they carry the user's signature."""

    content: bytes
    trusted: bool


def _chunks(file: io.BufferedIOBase) -> Iterator[bytes]:
    while chunk := file.read(CHUNK_BYTES):
        yield chunk


def _recorded_signature(path: pathlib.Path) -> bytes | None:
    """
    The content of ``path.sig``, where there is a key and the signature is a regular file of at most
    :data:`deep_sarsa.signing.MAX_SIGNATURE_BYTES` beside ``path``; else None (it signs nothing, and is not read).
    """
    signature_file = signature_path(path)
    if not signature_file.is_file() or not has_key():  # no key: nothing was ever signed here
        return None
    try:
        return read_regular(signature_file, "a signature", MAX_SIGNATURE_BYTES, signature_file.parent)
    except (OSError, ValueError):
        return None


def verify(path: FilePath, content: bytes | io.BufferedIOBase | None = None) -> bool:
    """
    Whether a file carries a valid signature of the user's key (compared in constant time): the one check of a
    signature in the package.

    :param path: the file (its signature is ``path.sig``)
    :param content: what to check: the bytes read from the file, or the file opened (hashed in chunks from its
        position, then put back there), so that what is checked is what is used; None: the file is read, in chunks,
        through :func:`open_regular`
    :return: ``True`` only when ``path.sig`` exists and matches (a signature file that is not a regular file of at most
        :data:`deep_sarsa.signing.MAX_SIGNATURE_BYTES` inside the file's folder matches nothing, and is not read)
    :raises SigningKeyError: there is a key, but it or its folder is unsafe (:func:`deep_sarsa.signing.signing_key`)
    """
    path = pathlib.Path(path)
    recorded = _recorded_signature(path)
    if recorded is None:
        return False
    if content is None:
        with open_regular(path, "a signed file", sys.maxsize) as file:
            return matches(recorded, signature_of(_chunks(file)))
    if isinstance(content, bytes):
        return matches(recorded, signature_of(content))
    start = content.tell()
    signature = signature_of(_chunks(content))
    content.seek(start)
    return matches(recorded, signature)


def _refuse_unsigned(path: pathlib.Path, refusal: str) -> UnsafeFileError:
    problem = (
        "its signature does not match (the file was changed, or signed with another key)"
        if signature_path(path).exists()
        else "it is not signed"
    )
    return UnsafeFileError(f"{path}: {problem}: {refusal}; {TRUST_HINT}")


def read_signed(
    path: FilePath,
    what: str,
    cap: int,
    folder: FilePath | None = None,
    *,
    trusted: bool = False,
    refusal: str | None = None,
    error: type[ValueError] = ValueError,
) -> Received:
    """
    A received file (:func:`read_regular`), read once, and whether exactly those bytes carry the user's signature.

    :param path: the file (its signature is ``path.sig``)
    :param what: what it is, for messages
    :param cap: the most bytes it may have
    :param folder: the folder it was received in (a path out of it is refused)
    :param trusted: the user trusts it: its signature is not checked
    :param refusal: where given, a file that is neither signed nor trusted is refused with an
        :class:`~deep_sarsa.safe_pickle.UnsafeFileError` that names it, says what is wrong with its signature, then this
    :param error: the error class raised for a refusal of the file itself
    :return: its content, and whether it is trusted (``trusted`` given, or signed)
    """
    path = pathlib.Path(path)
    content = read_regular(path, what, cap, folder, error)
    if trusted:
        return Received(content, True)
    signed = verify(path, content)
    if not signed and refusal is not None:
        raise _refuse_unsigned(path, refusal)
    return Received(content, signed)


@contextlib.contextmanager
def open_signed(
    path: FilePath,
    what: str,
    cap: int,
    folder: FilePath | None = None,
    *,
    trusted: bool = False,
    error: type[ValueError] = ValueError,
) -> Iterator[tuple[io.BufferedReader, bool]]:
    """
    A large received file (:func:`open_regular`), its signature checked on the open descriptor (hashed in chunks,
    never held whole), then rewound: a file put in its place after the check is never read. (A rewrite of the same
    file in place, between the check and the read, by whoever may write to it, is not caught: :func:`read_signed`
    holds the very bytes it checks, for a file small enough to hold whole.)

    :param path: the file (its signature is ``path.sig``)
    :param what: what it is, for messages
    :param cap: the most bytes it may have
    :param folder: the folder it was received in (a path out of it is refused)
    :param trusted: the user trusts it: its signature is not checked
    :param error: the error class raised for a refusal of the file itself
    :return: the open file, at its start, and whether it is trusted (``trusted`` given, or signed)
    """
    with open_regular(path, what, cap, folder, error) as file:
        yield file, trusted or verify(path, file)


# --- files listed in a manifest with their size and SHA-256 (a checkpoint's) -------------------------


def _listed_size(path: pathlib.Path, entry: Any, error: type[ValueError]) -> int:
    if not isinstance(entry, dict) or not isinstance(entry.get("size"), int) or not isinstance(entry.get("sha256"), str):
        raise error(f"{path}: its manifest entry {entry!r} is not a size and a sha256")
    return int(entry["size"])


def _check_listed(path: pathlib.Path, entry: dict[str, Any], size: int, sha256: str, error: type[ValueError]) -> None:
    if size != entry["size"]:
        raise error(
            f"{path}: {size} bytes, but the manifest records {entry['size']}: the file is truncated or from another checkpoint"
        )
    if sha256 != entry["sha256"]:
        raise error(
            f"{path}: its SHA-256 is {sha256}, but the manifest records {entry['sha256']}: the file is from another "
            "checkpoint, or was changed"
        )


def _open_listed(
    path: pathlib.Path, entry: Any, what: str, cap: int, folder: FilePath | None, error: type[ValueError]
) -> io.BufferedReader:
    """The file through :func:`open_regular`, its size compared with the manifest's before a byte of it is read."""
    expected = _listed_size(path, entry, error)
    file = open_regular(path, what, cap, folder, error)
    size = os.fstat(file.fileno()).st_size
    if size != expected:
        file.close()
        _check_listed(path, entry, size, "", error)
    return file


def read_listed(
    path: FilePath,
    entry: Any,
    what: str,
    cap: int,
    folder: FilePath | None = None,
    error: type[ValueError] = ValueError,
) -> bytes:
    """
    The bytes of a file that a (signed) manifest lists, read once and checked against the size and SHA-256 it records.

    :param path: the file
    :param entry: its manifest entry, ``{"size": ..., "sha256": ...}``
    :param what: what it is, for messages
    :param cap: the most bytes it may have
    :param folder: the folder it was received in (a path out of it is refused)
    :param error: the error class raised for a refusal (a file that disagrees with its entry included)
    :return: its content
    """
    path = pathlib.Path(path)
    with _open_listed(path, entry, what, cap, folder, error) as file:
        content = file.read(entry["size"] + 1)
    _check_listed(path, entry, len(content), hashlib.sha256(content).hexdigest(), error)
    return content


@contextlib.contextmanager
def open_listed(
    path: FilePath,
    entry: Any,
    what: str,
    cap: int,
    folder: FilePath | None = None,
    error: type[ValueError] = ValueError,
) -> Iterator[io.BufferedReader]:
    """
    A large file that a (signed) manifest lists (:func:`read_listed`), hashed in chunks on its open descriptor and
    rewound, so that what is checked is what is read (the caveat of :func:`open_signed` holds).

    :param path: the file
    :param entry: its manifest entry, ``{"size": ..., "sha256": ...}``
    :param what: what it is, for messages
    :param cap: the most bytes it may have
    :param folder: the folder it was received in (a path out of it is refused)
    :param error: the error class raised for a refusal
    :return: the open file, at its start
    """
    path = pathlib.Path(path)
    with _open_listed(path, entry, what, cap, folder, error) as file:
        digest, size = hashlib.sha256(), 0
        for chunk in _chunks(file):
            digest.update(chunk)
            size += len(chunk)
        _check_listed(path, entry, size, digest.hexdigest(), error)
        file.seek(0)
        yield file


# --- pickles ---------------------------------------------------------------------------------------


def unpickle(
    data: bytes | io.BufferedIOBase,
    name: str,
    entry: str,
    allowed: Allowlist | None,
    *,
    trusted: bool = False,
    persistent_load: Callable[[Any], Any] | None = None,
    passing: tuple[type[BaseException], ...] = (),
) -> Any:
    """
    Unpickle what the gate has read: with :mod:`deep_sarsa.safe_pickle`'s restricted unpickler and ``allowed``, or,
    only when ``trusted``, as ``pickle`` does (running any code the pickle names).

    :param data: the pickle, as bytes or an open binary file
    :param name: its file, for messages
    :param entry: what is being read (``"the replay buffer"``, ``"entry 'lr_schedule'"``), for messages
    :param allowed: module -> names the pickle may name (None: it may be read only when trusted)
    :param trusted: unpickle as ``pickle`` does
    :param persistent_load: with ``trusted``, what rebuilds the pickle's persistent ids
    :param passing: with ``trusted``, the exceptions raised as they are (those ``persistent_load`` raises)
    :return: the object
    :raises UnsafeFileError: not trusted, and the pickle names a global outside ``allowed`` (nothing of it ran)
    :raises ValueError: bytes that are not a readable pickle, naming the file and ``entry``
    """
    file = io.BytesIO(data) if isinstance(data, bytes) else data
    if not trusted:
        if allowed is None or persistent_load is not None:
            raise UnsafeFileError(f"{name}: {entry} is read only when trusted (it may name any code); {TRUST_HINT}")
        return restricted_load(file, allowed, name, entry)
    unpickler = pickle.Unpickler(file)
    if persistent_load is not None:
        unpickler.persistent_load = persistent_load  # type: ignore[method-assign]
    try:
        return unpickler.load()
    except passing:
        raise
    except Exception as error:  # the user chose to run the file's code: report whatever it raised, naming the file
        raise ValueError(f"{name}: {entry} is not a readable pickle ({type(error).__name__}: {one_line(error)})") from error


def read_pickle(
    source: Source,
    what: str,
    cap: int,
    entry: str,
    allowed: Allowlist,
    *,
    trusted: bool = False,
    suffix: str = "",
    error: type[ValueError] = ValueError,
) -> tuple[str, Any]:
    """
    A received pickle, opened once (:func:`open_source`) and unpickled from that file (:func:`unpickle`).

    :param source: the file (``suffix`` tried as SB3 does), or an open binary file
    :param what: what it is, for messages about the file (``"a replay buffer"``)
    :param cap: the most bytes it may have
    :param entry: what is being read, for messages about its content (``"the replay buffer"``)
    :param allowed: module -> names the pickle may name
    :param trusted: unpickle as ``pickle`` does (runs any code the file names)
    :param suffix: the suffix SB3 tries
    :param error: the error class raised for a refusal of the file itself
    :return: its name for messages, and the object
    """
    with open_source(source, what, cap, suffix, error) as (name, file):
        return name, unpickle(file, name, entry, allowed, trusted=trusted)
