"""Settings shared by the tests: the signing key of checkpoints lives in a temporary folder; PostgreSQL fixtures."""

import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from deep_sarsa.signing import CONFIG_DIR_VARIABLE

sys.path.insert(0, str(Path(__file__).parent))
import postgres_server


@pytest.fixture(autouse=True, scope="session")
def temporary_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Never write a key into the user's config folder (subprocesses inherit the variable)."""
    previous = os.environ.get(CONFIG_DIR_VARIABLE)
    os.environ[CONFIG_DIR_VARIABLE] = str(tmp_path_factory.mktemp("config"))
    yield
    if previous is None:
        del os.environ[CONFIG_DIR_VARIABLE]
    else:
        os.environ[CONFIG_DIR_VARIABLE] = previous


def _unavailable(reason: str) -> None:
    """In CI (``CI`` set) a missing PostgreSQL fails the test; elsewhere it skips it, with the reason."""
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is needed in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable: {reason}")


def _libpq_url(url: str) -> str:
    """The libpq form of a SQLAlchemy URL: ``postgresql+psycopg://`` becomes ``postgresql://``."""
    return re.sub(r"^postgresql\+psycopg://", "postgresql://", url)


def _with_database(url: str, database: str) -> str:
    """``url`` with its database name replaced."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """The SQLAlchemy URL (``postgresql+psycopg://``) of a PostgreSQL server's maintenance database.

    The server of ``DEEP_SARSA_POSTGRES_URL`` when set (.ci/run starts one and sets it), otherwise a throwaway
    cluster on 127.0.0.1 for this test session (one per xdist worker), stopped and deleted at its end.
    """
    given = os.environ.get(postgres_server.URL_VARIABLE)
    if given:
        if not given.startswith(("postgresql+psycopg://", "postgresql://")):
            pytest.fail(f"{postgres_server.URL_VARIABLE} must be a postgresql+psycopg:// URL, got {given!r}", pytrace=False)
        yield "postgresql+psycopg://" + given.split("://", 1)[1]
        return
    try:
        postgres_server.find_binaries()
    except postgres_server.PostgresUnavailable as error:
        _unavailable(str(error))
    # Under /tmp, not pytest's tmp_path: the server runs as an unprivileged user, who cannot enter root's 0700 folders
    folder = Path(tempfile.mkdtemp(prefix="deep-sarsa-pg-", dir="/tmp"))
    folder.chmod(0o755)
    cluster_folder = folder / "cluster"
    try:
        cluster = postgres_server.start(cluster_folder)
    except BaseException:
        postgres_server.stop(cluster_folder)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:
        yield cluster.url
    finally:
        postgres_server.stop(cluster_folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """The SQLAlchemy URL (``postgresql+psycopg://USER:PASSWORD@127.0.0.1:PORT/DB``) of a new, empty database.

    Created for this test on the server of :func:`postgres_server_url` and dropped after it (connections still open
    are closed).
    """
    try:
        import psycopg
    except ImportError:
        _unavailable("psycopg 3 is not installed (pip install -e '.[zoo]')")
    name = f"test_{uuid.uuid4().hex}"
    admin = _libpq_url(postgres_server_url)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(postgres_server_url, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
