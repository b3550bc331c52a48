"""
The gate every file that may come from elsewhere goes through before a byte of it is read: model
zips, replay buffers, a checkpoint's manifest and files, a run's ``evaluations.npz``.

A received file could be a FIFO (reading it waits forever), a device (``/dev/zero`` never ends), a
symbolic link out of the folder it was received in, or a regular file far larger than what it
claims to be; an ``.npz`` can declare arrays far larger than it holds (:func:`read_npz`).
:func:`open_regular` opens a path without waiting (``O_NONBLOCK``), checks on the
opened descriptor (``fstat``, so that what is checked is what is read) that it is a regular file
no larger than the cap, and, when a ``folder`` is given, that the path does not lead out of it;
:func:`read_regular` reads such a file whole, never more than the cap. Each refusal is one line
that names the file and says why, raised as the caller's error class (a ``ValueError``).
"""

import io
import math
import os
import pathlib
import stat
import zipfile
import zlib

import numpy as np

from deep_sarsa.validation import memory_bytes

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
    path: str | pathlib.Path,
    what: str,
    cap: int,
    folder: str | pathlib.Path | None = None,
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
    path: str | pathlib.Path,
    what: str,
    cap: int,
    folder: str | pathlib.Path | None = None,
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


def stream_size(file: io.IOBase) -> int | None:
    """
    :param file: an open binary file
    :return: the bytes left to read in it (its size less its position), where that can be known
    """
    try:
        return max(os.fstat(file.fileno()).st_size - file.tell(), 0)
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        pass
    if isinstance(file, io.BytesIO):
        return len(file.getbuffer()) - file.tell()
    try:
        here = file.tell()
        end = file.seek(0, io.SEEK_END)
        file.seek(here)
        return max(end - here, 0)
    except (OSError, AttributeError, ValueError):
        return None


def read_npz(
    path: str | pathlib.Path,
    what: str,
    cap: int,
    folder: str | pathlib.Path | None = None,
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
