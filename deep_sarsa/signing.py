"""
Signatures of the files this package writes, with a secret key of the user's, as Jupyter signs
notebooks: a file signed here was written by this user (with this key), so its pickles may be
unpickled without asking; a file from anywhere else has no valid signature.

The signature of ``FILE`` is ``FILE.sig``: ``hmac-sha256:`` and the hex HMAC-SHA256 of the file's
bytes under the key. The key is 32 random bytes (hex) in ``signing.key`` of the config folder:
``$DEEP_SARSA_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/deep-sarsa``, else ``~/.config/deep-sarsa``,
created on first use with mode 0600 (its folder 0700). Deleting it makes every signature invalid
(files written before are then refused unless loaded with ``trusted=True``).

Whoever can read the key can sign files that this user will then load without asking, and whoever
can write it or its folder can put their own key there. So, as OpenSSH refuses a private key that
others can read, the key is used only when it is a regular file (not a link, a folder or a device)
owned by this user and neither readable nor writable by group or others, in a config folder that
only its owner (this user, or root) can write; anything else is a :class:`SigningKeyError` (a
``ValueError``) of one line that names the file and the fix.

This module reads no file from elsewhere: :func:`signature_of` signs bytes it is given, and
:func:`deep_sarsa.gate.verify` (with the gate's other reads) reads a file and its ``.sig`` once,
and checks the signature of exactly the bytes it read.
"""

import hashlib
import hmac
import os
import pathlib
import secrets
import stat
import uuid
from collections.abc import Iterable

from deep_sarsa.atomic import atomic_path

CONFIG_DIR_VARIABLE = "DEEP_SARSA_CONFIG_DIR"
KEY_FILE = "signing.key"
SUFFIX = ".sig"
_SCHEME = "hmac-sha256"
_KEY_BYTES = 32
#: whether the file system has owners and modes to check (not on Windows)
_POSIX = hasattr(os, "getuid")
_RESIGN = "files signed with the old key are then loaded only when trusted"
#: the largest signature file read (one written here is 78 bytes)
MAX_SIGNATURE_BYTES = 4096


class SigningKeyError(ValueError):
    """The signing key or its folder is unsafe to use (others could read or replace it) or is not a key file."""


def config_dir() -> pathlib.Path:
    """
    :return: the folder of the package's configuration (the signing key)
    """
    if os.environ.get(CONFIG_DIR_VARIABLE):
        return pathlib.Path(os.environ[CONFIG_DIR_VARIABLE])
    base = os.environ.get("XDG_CONFIG_HOME") or pathlib.Path.home() / ".config"
    return pathlib.Path(base) / "deep-sarsa"


def key_path() -> pathlib.Path:
    """
    :return: where the signing key is (it may not exist yet)
    """
    return config_dir() / KEY_FILE


def _create_key(path: pathlib.Path) -> None:
    """Write a new key, readable by the user only; a key another process created first is kept."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(_KEY_BYTES) + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:  # published whole, never over a key another process created meanwhile
            os.link(temporary, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not path.exists():
                os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _check_folder(folder: pathlib.Path) -> None:
    """Refuse a config folder that another user owns or that group or others can write (they could swap the key)."""
    if not _POSIX:
        return
    try:
        status = folder.stat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(status.st_mode):
        raise SigningKeyError(
            f"{folder}: the config folder of the signing key is not a folder: remove it, or set {CONFIG_DIR_VARIABLE} "
            "to a folder of yours"
        )
    if status.st_uid not in (os.getuid(), 0):
        raise SigningKeyError(
            f"{folder}: the config folder of the signing key belongs to another user (uid {status.st_uid}), who could "
            f"put a key of theirs there: set {CONFIG_DIR_VARIABLE} to a folder of yours"
        )
    if status.st_mode & 0o022:
        raise SigningKeyError(
            f"{folder}: the config folder of the signing key is writable by others (mode "
            f"{stat.S_IMODE(status.st_mode):04o}), who could put a key of theirs there: chmod 700 {folder}"
        )


def _read_key_file(path: pathlib.Path) -> str:
    """The key file's text, once it is known to be a regular file of this user's that nobody else can read or write."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if path.is_symlink():
            raise SigningKeyError(
                f"{path}: the signing key is a symbolic link, not a regular file: replace it by the file it points to "
                "(mode 0600), or delete it to make a new key"
            ) from error
        raise SigningKeyError(f"{path}: the signing key cannot be read ({error.strerror}): fix it, or delete it") from error
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            kind = "a folder" if stat.S_ISDIR(status.st_mode) else "not a regular file"
            raise SigningKeyError(f"{path}: the signing key is {kind}: remove it (a new key is made on first use)")
        if _POSIX and status.st_uid != os.getuid():
            raise SigningKeyError(
                f"{path}: the signing key belongs to another user (uid {status.st_uid}), who could sign files that you "
                f"would load: delete it (a new key is made on first use; {_RESIGN})"
            )
        if _POSIX and status.st_mode & 0o077:
            raise SigningKeyError(
                f"{path}: permissions {stat.S_IMODE(status.st_mode):04o} are too open for the signing key (whoever can "
                f"read it can sign files that you would load): chmod 600 {path}, or delete it if others may have read "
                f"it (a new key is made on first use; {_RESIGN})"
            )
        return os.read(descriptor, 4 * _KEY_BYTES).decode("ascii", errors="replace")
    finally:
        os.close(descriptor)


def signing_key() -> bytes:
    """
    The user's signing key, created on first use (mode 0600, in a folder of mode 0700).

    :return: the key
    :raises SigningKeyError: the key or its folder is unsafe (module docstring), or the file is not a key
    """
    path = key_path()
    _check_folder(path.parent)
    if not os.path.lexists(path):
        _create_key(path)
        _check_folder(path.parent)
    text = _read_key_file(path).strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != _KEY_BYTES:
        raise SigningKeyError(f"{path} is not a signing key ({2 * _KEY_BYTES} hex digits): delete it to make a new one")
    return key


def signature_path(path: str | pathlib.Path) -> pathlib.Path:
    """
    :param path: a file
    :return: the file that holds its signature
    """
    path = pathlib.Path(path)
    return path.with_name(path.name + SUFFIX)


#: Bytes of a file hashed at a time: a replay buffer of several GB is never held in memory whole
CHUNK_BYTES = 1 << 20


def has_key() -> bool:
    """
    :return: whether there is a signing key (or something in its place): without one, nothing was ever signed here
    """
    return os.path.lexists(key_path())


def signature_of(content: bytes | Iterable[bytes]) -> str:
    """
    :param content: the bytes to sign, or their chunks in order
    :return: their signature under the user's key (``hmac-sha256:`` and the hex HMAC), as ``.sig`` files hold it
    :raises SigningKeyError: the key or its folder is unsafe (:func:`signing_key`)
    """
    digest = hmac.new(signing_key(), digestmod=hashlib.sha256)
    for chunk in [content] if isinstance(content, bytes) else content:
        digest.update(chunk)
    return f"{_SCHEME}:{digest.hexdigest()}"


def matches(recorded: bytes, signature: str) -> bool:
    """
    :param recorded: the content of a ``.sig`` file
    :param signature: the signature of the bytes it should sign (:func:`signature_of`)
    :return: whether they are the same (compared in constant time)
    """
    return hmac.compare_digest(recorded.decode(errors="replace").strip().encode(), signature.encode())


def sign(path: str | pathlib.Path) -> pathlib.Path:
    """
    Sign a file this process has written with the user's key: write ``path.sig`` (atomically).

    :param path: the file
    :return: the signature file
    """
    target = signature_path(path)
    with open(path, "rb") as file:  # a file of ours, just written: not one from elsewhere
        signature = signature_of(iter(lambda: file.read(CHUNK_BYTES), b""))
    with atomic_path(target) as temporary:
        temporary.write_text(signature + "\n")
    return target
