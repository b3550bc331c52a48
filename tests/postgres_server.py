"""A throwaway PostgreSQL cluster on 127.0.0.1, for the tests and for .ci/run.

Only the standard library is needed to start and stop a cluster (``.ci/run`` calls this file before any virtual
environment exists); creating and dropping the tests' databases needs psycopg 3 (see tests/conftest.py).

From the command line::

    python3 tests/postgres_server.py start FOLDER   # prints the server's SQLAlchemy URL
    python3 tests/postgres_server.py stop FOLDER

The cluster lives in FOLDER (created, must not exist yet or be empty), listens on 127.0.0.1 only, on a free port,
with a random password for its superuser ``deep_sarsa`` (no trust authentication) and its socket in FOLDER.
When run as root, the server runs as an unprivileged user (``postgres`` if it exists, otherwise ``nobody``):
PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

#: Where Debian's postgresql-15 package puts the server binaries (they are not on PATH there)
POSTGRES_BIN_DIRS = ("/usr/lib/postgresql/15/bin",)
#: The variable .ci/run sets to the URL of the server it started; the tests then use that server
URL_VARIABLE = "DEEP_SARSA_POSTGRES_URL"
SUPERUSER = "deep_sarsa"
UNPRIVILEGED_USERS = ("postgres", "nobody")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries were found (or they cannot be run here)."""


@dataclass(frozen=True)
class Cluster:
    """A running throwaway cluster.

    :param folder: the folder holding the data directory, the socket, the log and the password
    :param port: the TCP port on 127.0.0.1
    :param password: the superuser's password
    """

    folder: Path
    port: int
    password: str

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the ``postgres`` database (psycopg 3 driver)."""
        return f"postgresql+psycopg://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/postgres"


def find_binaries() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres`` (PostgreSQL 15's, or the ones on PATH).

    :return: the folder
    :raises PostgresUnavailable: when none is found
    """
    for name in POSTGRES_BIN_DIRS:
        if all((Path(name) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(name)
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        folder = Path(on_path).resolve().parent
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise PostgresUnavailable(
        f"no PostgreSQL server binaries (initdb, pg_ctl, postgres) in {', '.join(POSTGRES_BIN_DIRS)} or on PATH; "
        "install them (Debian: apt-get install postgresql-15) or set "
        f"{URL_VARIABLE}=postgresql+psycopg://USER:PASSWORD@127.0.0.1:PORT/DB to an existing server"
    )


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable(f"running as root and none of the users {UNPRIVILEGED_USERS} exists to run PostgreSQL as")


def _run(command: list[str], user: pwd.struct_passwd | None, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool, as ``user`` when given, with a clean locale; raise with its output on failure."""
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    if user is not None:
        environment["HOME"] = "/"
    result = subprocess.run(
        command,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/",
        user=None if user is None else user.pw_uid,
        group=None if user is None else user.pw_gid,
        extra_groups=None if user is None else [],
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(folder: Path, timeout: float = 60.0) -> Cluster:
    """Create a cluster in ``folder`` and start it on 127.0.0.1.

    :param folder: a folder that does not exist yet, or an empty one
    :param timeout: seconds that initdb and the server's start may take
    :return: the running cluster
    :raises PostgresUnavailable: when there are no server binaries
    """
    binaries = find_binaries()
    user = _server_user()
    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise ValueError(f"PostgreSQL cluster folder {folder} is not empty")
    password = secrets.token_hex(16)
    password_file = folder / "password"
    password_file.write_text(password + "\n")
    if user is not None:
        # The server's user must reach the folder: every parent needs search permission for it
        for parent in folder.parents:
            if parent.stat().st_mode & 0o001 == 0:
                raise PostgresUnavailable(
                    f"{folder}: its parent {parent} is not searchable by others, so user {user.pw_name} "
                    "cannot reach the cluster; choose a folder under /tmp"
                )
        os.chown(folder, user.pw_uid, user.pw_gid)
        os.chown(password_file, user.pw_uid, user.pw_gid)
    password_file.chmod(0o600)
    data = folder / "data"
    _run(
        [
            str(binaries / "initdb"),
            "--pgdata",
            str(data),
            "--username",
            SUPERUSER,
            "--pwfile",
            str(password_file),
            "--auth",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--no-sync",
        ],
        user,
        timeout,
    )
    last_error: Exception | None = None
    for _attempt in range(5):  # another process may take the free port between the probe and the start
        port = _free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c full_page_writes=off"
        try:
            _run(
                [
                    str(binaries / "pg_ctl"),
                    "start",
                    "--pgdata",
                    str(data),
                    "--log",
                    str(folder / "server.log"),
                    "--wait",
                    "--timeout",
                    str(int(timeout)),
                    "-o",
                    options,
                ],
                user,
                timeout + 10,
            )
        except RuntimeError as error:
            last_error = error
            continue
        (folder / "port").write_text(f"{port}\n")
        return Cluster(folder, port, password)
    log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
    raise RuntimeError(f"PostgreSQL did not start in {folder}: {last_error}\n{log[-4000:]}")


def stop(folder: Path, timeout: float = 60.0) -> None:
    """Stop the cluster in ``folder`` (fast shutdown) if it runs; its files stay.

    :param folder: the folder given to :func:`start`
    :param timeout: seconds the shutdown may take
    """
    data = Path(folder).absolute() / "data"
    if not (data / "postmaster.pid").exists():
        return
    _run(
        [
            str(find_binaries() / "pg_ctl"),
            "stop",
            "--pgdata",
            str(data),
            "--mode",
            "fast",
            "--wait",
            "--timeout",
            str(int(timeout)),
        ],
        _server_user(),
        timeout + 10,
    )


def _main(arguments: list[str]) -> int:
    if len(arguments) != 2 or arguments[0] not in ("start", "stop"):
        print("usage: postgres_server.py start|stop FOLDER", file=sys.stderr)
        return 2
    command, folder = arguments
    try:
        if command == "start":
            started = time.monotonic()
            cluster = start(Path(folder))
            print(cluster.url)
            print(f"PostgreSQL started on 127.0.0.1:{cluster.port} in {time.monotonic() - started:.1f} s", file=sys.stderr)
        else:
            stop(Path(folder))
    except PostgresUnavailable as error:
        print(f"postgres_server.py: {error}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
