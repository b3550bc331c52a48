"""
Signatures of the files this package writes, with a secret key of the user's, as Jupyter signs
notebooks: a file signed here was written by this user (with this key), so its pickles may be
unpickled without asking; a file from anywhere else has no valid signature.

The signature of ``FILE`` is ``FILE.sig``: ``hmac-sha256:`` and the hex HMAC-SHA256 of the file's
bytes under the key. The key is 32 random bytes (hex) in ``signing.key`` of the config folder:
``$DEEP_SARSA_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/deep-sarsa``, else ``~/.config/deep-sarsa``,
created on first use with mode 0600 (its folder 0700). Deleting it makes every signature invalid
(files written before are then refused unless loaded with ``trusted=True``).
"""

import hashlib
import hmac
import os
import pathlib
import secrets
import uuid

from deep_sarsa.files import atomic_path

CONFIG_DIR_VARIABLE = "DEEP_SARSA_CONFIG_DIR"
KEY_FILE = "signing.key"
SUFFIX = ".sig"
_SCHEME = "hmac-sha256"
_KEY_BYTES = 32


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


def signing_key() -> bytes:
    """
    The user's signing key, created on first use.

    :return: the key
    """
    path = key_path()
    if not path.exists():
        _create_key(path)
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != _KEY_BYTES:
        raise ValueError(f"{path} is not a signing key ({2 * _KEY_BYTES} hex digits): delete it to make a new one")
    return key


def signature_path(path: str | pathlib.Path) -> pathlib.Path:
    """
    :param path: a file
    :return: the file that holds its signature
    """
    path = pathlib.Path(path)
    return path.with_name(path.name + SUFFIX)


#: Bytes of a file hashed at a time: a replay buffer of several GB is never held in memory whole
_CHUNK = 1 << 20


def _signature(content: bytes | pathlib.Path) -> str:
    """The signature of ``content``, or of the file at that path, read in chunks."""
    digest = hmac.new(signing_key(), digestmod=hashlib.sha256)
    if isinstance(content, bytes):
        digest.update(content)
    else:
        with open(content, "rb") as file:
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
    return f"{_SCHEME}:{digest.hexdigest()}"


def sign(path: str | pathlib.Path) -> pathlib.Path:
    """
    Sign a file with the user's key: write ``path.sig`` (atomically).

    :param path: the file
    :return: the signature file
    """
    target = signature_path(path)
    signature = _signature(pathlib.Path(path))
    with atomic_path(target) as temporary:
        temporary.write_text(signature + "\n")
    return target


def verify(path: str | pathlib.Path, content: bytes | None = None) -> bool:
    """
    Whether a file carries a valid signature of the user's key (compared in constant time).

    :param path: the file (its signature is ``path.sig``)
    :param content: the bytes to check, when the caller has read the file already (then exactly
        what is checked is what it uses); else the file is read
    :return: ``True`` only when ``path.sig`` exists and matches
    """
    signature_file = signature_path(path)
    if not signature_file.is_file() or not key_path().exists():  # no key: nothing was ever signed here
        return False
    recorded = signature_file.read_text(errors="replace").strip()
    return hmac.compare_digest(recorded.encode(), _signature(pathlib.Path(path) if content is None else content).encode())
