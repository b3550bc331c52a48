"""Tuning with Optuna through ``python -m deep_sarsa.zoo``: one study shared by several processes (SQLite, journal
file, PostgreSQL); and the PostgreSQL fixture the shared-store tests use."""

import re

import pytest


def _connect(url: str):  # type: ignore[no-untyped-def]
    psycopg = pytest.importorskip("psycopg")
    return psycopg.connect(re.sub(r"^postgresql\+psycopg://", "postgresql://", url))


def test_postgres_url_is_a_new_empty_database_on_postgresql_15(postgres_url: str, postgres_server_url: str) -> None:
    assert re.fullmatch(r"postgresql\+psycopg://[^:@/]+:[^@/]+@127\.0\.0\.1:\d+/test_[0-9a-f]{32}", postgres_url)
    with _connect(postgres_url) as connection:
        assert connection.execute("SHOW server_version_num").fetchone()[0].startswith("15")
        assert connection.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
        connection.execute("CREATE TABLE leftover (x int)")
    database = postgres_url.rsplit("/", 1)[1]
    with _connect(postgres_server_url) as connection:
        names = [row[0] for row in connection.execute("SELECT datname FROM pg_database").fetchall()]
    assert database in names
