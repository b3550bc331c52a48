"""
Files written atomically: a temporary file beside the target, flushed to disk and renamed over it
(:func:`atomic_path`), so that no crash, full disk or second writer leaves a partial file; SB3's
``save`` and ``save_replay_buffer`` through it (:func:`save_atomically`); the temporary files of
killed writers removed (:func:`remove_stale_temporaries`).

It reads no file from elsewhere (that is :mod:`deep_sarsa.gate`'s), and sits below
:mod:`deep_sarsa.signing`, which writes each signature through it.
"""

import contextlib
import errno
import io
import os
import pathlib
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from deep_sarsa.safe_pickle import one_line

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
def atomic_path(target: pathlib.Path, folder: pathlib.Path | None = None) -> Iterator[pathlib.Path]:
    """
    A temporary file beside ``target`` to write into; when the block ends without an error it is
    flushed to disk, given ``target``'s permission bits and renamed over ``target``
    (``os.replace``), and the folder is flushed too; else it is removed. At every instant
    ``target`` is the previous complete file or the new complete one, for any number of threads
    and processes writing it (each has its own temporary name). A failure (full disk, Ctrl-C, an
    object that cannot be pickled) leaves any previous ``target`` intact and no partial file
    behind; an ``OSError`` is raised again naming ``target``, with the same ``errno``.

    A symbolic link is written through: the file it points to is replaced and the link stays;
    but where ``folder`` is given (a run folder, which writes only inside itself), a link that
    leads out of ``folder`` is refused (``PermissionError`` naming the link and where it leads):
    neither the file outside nor the link is touched, so that a link the user made is not
    silently replaced, and a link received with a folder never writes outside it. Before writing,
    the temporary files that dead processes left in the folder are removed
    (:func:`remove_stale_temporaries`).

    :param target: the file to write (its folder is created if needed)
    :param folder: the folder ``target`` belongs to: a link out of it is refused
    :return: the temporary path (a unique name in the target's folder, not yet created)
    """
    given = target
    target = _resolved(target)
    shown = str(given) if target == given else f"{given} (a link to {target})"
    if folder is not None:
        base = os.path.realpath(folder)
        if os.path.commonpath([os.path.realpath(given.parent), base]) != base or (
            target != given and os.path.commonpath([str(target), base]) != base
        ):
            raise PermissionError(
                errno.EPERM, f"{shown} leads out of {folder}: refused (a run folder is written only inside itself)", str(given)
            )
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
