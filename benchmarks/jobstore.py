"""
A shared store of benchmark jobs that workers claim, so that one grid runs once however many
processes on however many machines work on it, and resumes after any crash.

The store is one table (``deep_sarsa_grid_jobs``) in a SQL database reached through SQLAlchemy, so
one URL form serves both engines: SQLite for one machine (the default, a file such as
``benchmarks/runs/grid.db``) and PostgreSQL for several (``postgresql+psycopg://user:password@host/db``;
a plain ``postgresql://`` URL is read as psycopg 3, the driver the ``bench`` extra installs). Each row is
one (task, algorithm, seed) job with its state: ``pending``, ``running`` (claimed by a worker, under a
lease), ``done`` (its result, the job's JSON document, is in the row) or ``failed`` (its error is).

How a job is run once:

- **Claiming is a compare-and-swap.** A worker reads the claimable rows (pending, or running with an
  expired lease), then for one of them issues ``UPDATE ... SET status='running', token=<new random
  token>, lease_until=now+lease WHERE id=... AND status=<as read> AND token=<as read>`` (and, for a
  running row, ``AND lease_until < now``) and owns the job only if the UPDATE changed one row. On
  PostgreSQL the second of two concurrent UPDATEs waits for the first one's row lock and then finds the
  token changed; SQLite runs one writer at a time. ``rowcount`` is portable, so no engine-specific
  locking (``SELECT ... FOR UPDATE SKIP LOCKED`` has no SQLite form) is needed.
- **A lease, renewed by a heartbeat.** "now" is the database's clock (``clock_timestamp()`` on
  PostgreSQL, ``julianday('now')`` on SQLite), so the machines' clocks need not agree. While a job runs, a
  thread of its worker renews the lease every quarter of it, with the same token and only while the lease
  has not expired; a worker SIGKILLed mid-job stops renewing, its lease expires, and the next worker that
  looks claims the job again. Results are recorded the same way (``WHERE token=<mine> AND lease_until >=
  now``), so a worker that lost its job can never record it.
- **Fencing.** A live worker never runs a job that someone else has claimed: a watchdog thread ends the
  worker's process (exit code :data:`FENCED_EXIT`) when its last successful renewal is 80% of a lease old
  (the database unreachable, the process stopped and resumed) or as soon as a renewal finds the lease
  taken, so it is gone before the lease it held can expire on the database's clock. (A process that was
  stopped, SIGSTOP, past its lease and then resumed may run a few milliseconds of its job before its
  watchdog ends it; it can record nothing.)
- **Finished jobs never run again.** Nothing moves a row out of ``done``. A job that raised is
  ``failed`` (with its traceback) and stays so until a ``grid --retry-failed``; a job whose workers died
  ``max_attempts`` times running it is failed too, instead of killing workers forever.

Why not Optuna's storage with a ``GridSampler``: the sampler picks a grid point from the trials it sees,
and a point counts as taken only once its trial finishes, so concurrent workers can be given the same
point (Optuna documents that the number of trials may exceed the grid's size); there is no claim, so a
job could run twice at once. A trial whose worker died stays ``RUNNING`` unless Optuna's heartbeat is on,
and is then retried as a new trial, and the (task, algorithm, seed) grid has to be encoded as parameters.
One small table with an atomic claim says exactly what we need and nothing else, on the same engines.

This module imports no training code (SQLAlchemy only): the job itself is a function given to
:func:`work`, so tests inject a fast fake one.
"""

import math
import os
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

TABLE = "deep_sarsa_grid_jobs"
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATUSES = (PENDING, RUNNING, DONE, FAILED)
#: the exit code of a worker that ended itself because it could no longer prove it holds its job
FENCED_EXIT = 75
#: a worker ends itself when its last successful renewal is this fraction of a lease old
FENCE_FRACTION = 0.8
#: seconds a SQLite writer waits for another (its busy timeout), and keeps trying to create the table
SQLITE_BUSY_SECONDS = 60.0
EXAMPLE_URLS = "sqlite:///benchmarks/runs/grid.db (one machine) or postgresql+psycopg://user:password@host:5432/database"

_metadata = sa.MetaData()
jobs_table = sa.Table(
    TABLE,
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task", sa.String(200), nullable=False),
    sa.Column("algorithm", sa.String(200), nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("episodes", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("token", sa.String(32)),
    sa.Column("worker", sa.String(300)),
    sa.Column("lease_until", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("claimed_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("result", sa.Text),
    sa.Column("error", sa.Text),
    sa.UniqueConstraint("task", "algorithm", "seed", name=f"{TABLE}_key"),
)
_columns = jobs_table.c


class StoreError(ValueError):
    """A store URL that cannot be used, or a store that does not hold what a grid expects (the message says which)."""


class Job(NamedTuple):
    """One job of a grid: train ``algorithm`` on ``task`` with ``seed``, evaluating with ``episodes`` episodes."""

    task: str
    algorithm: str
    seed: int
    episodes: int

    @property
    def key(self) -> tuple[str, str, int]:
        """What identifies the job in the store (its evaluation episodes are a setting of the grid)."""
        return (self.task, self.algorithm, self.seed)

    def __str__(self) -> str:
        return f"{self.task} {self.algorithm} seed {self.seed}"


@dataclass(frozen=True)
class Claim:
    """A job this worker holds: the row, the token that proves it, and when (monotonic clock) it asked for the lease."""

    row_id: int
    job: Job
    token: str
    asked_at: float


@dataclass(frozen=True)
class JobRow:
    """One row of the store, as :meth:`JobStore.rows` reads it (``lease_left``: seconds, on the database's clock)."""

    job: Job
    status: str
    worker: str | None
    attempts: int
    lease_left: float | None
    result: dict[str, Any] | None
    error: str | None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) < 300 else text[:297] + "..."


def parse_url(url: str) -> URL:
    """
    The SQLAlchemy URL of a store, checked: SQLite on a file whose folder exists, or PostgreSQL (psycopg 3).

    :param url: e.g. ``sqlite:///benchmarks/runs/grid.db`` or ``postgresql+psycopg://user:password@host/db``
    :return: the URL (``postgresql://`` becomes ``postgresql+psycopg://``)
    :raises StoreError: naming ``--store`` and what is expected
    """
    try:
        parsed = sa.make_url(url)
    except ArgumentError:
        raise StoreError(f"--store: {url!r} is not a database URL; expected {EXAMPLE_URLS}") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(f"--store: {backend!r} databases are not supported; expected {EXAMPLE_URLS}")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:") or (parsed.database or "").startswith("file::memory:"):
            raise StoreError(
                "--store: an in-memory SQLite database is private to one process, so workers cannot share it; "
                "give a file, e.g. sqlite:///benchmarks/runs/grid.db"
            )
        folder = Path(parsed.database or "").parent
        if not folder.is_dir():
            raise StoreError(f"--store: the folder of the SQLite file, {folder}, does not exist")
    return parsed


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


class JobStore:
    """
    The jobs of a grid in a SQL table, claimed under leases (see the module's docstring).

    :param url: the database URL (see :func:`parse_url`); its table is created if missing
    :param lease: seconds a claim lasts without a renewal (a worker renews every quarter of it)
    :param max_attempts: how many times a job may be claimed and lost (its worker died) before it is failed
    :param create: create the table if the database has none (else: a :class:`StoreError`, as for a missing SQLite file)
    :raises StoreError: a bad URL, a missing driver, a database that cannot be reached or whose table is not ours
    """

    def __init__(self, url: str, lease: float = 60.0, max_attempts: int = 3, create: bool = True) -> None:
        if not (isinstance(lease, int | float) and math.isfinite(lease) and lease > 0):
            raise StoreError(f"--lease: expected a positive number of seconds, got {lease!r}")
        if not (isinstance(max_attempts, int) and max_attempts >= 1):
            raise StoreError(f"max_attempts: expected a whole number >= 1, got {max_attempts!r}")
        self.url = parse_url(url)
        self.lease, self.max_attempts = float(lease), max_attempts
        self.shown_url = _shown(self.url)
        self.backend = self.url.get_backend_name()
        if not create and self.backend == "sqlite" and not Path(self.url.database or "").is_file():
            raise StoreError(f"--store: {self.url.database} does not exist (a grid command creates it)")
        options: dict[str, Any] = {"pool_pre_ping": True}
        if self.backend == "sqlite":
            # Writers wait for each other (up to a minute) instead of failing with "database is locked";
            # the heartbeat thread and the worker's thread share the pool
            options["connect_args"] = {"timeout": SQLITE_BUSY_SECONDS, "check_same_thread": False}
        else:
            options["connect_args"] = {"connect_timeout": 10}
        try:
            self.engine: Engine = sa.create_engine(self.url, **options)
        except (NoSuchModuleError, ImportError) as error:
            raise StoreError(
                f"--store: the database driver for {self.shown_url} is not installed ({_one_line(error)}); "
                "pip install -e '.[bench]' installs SQLAlchemy and psycopg 3"
            ) from None
        if self.backend == "sqlite":
            # WAL, so that readers (status, polling workers) do not block the writers (one machine: WAL needs local files)
            sa.event.listen(self.engine, "connect", _sqlite_on_connect)
        self._now = (
            sa.cast(sa.extract("epoch", sa.func.clock_timestamp()), sa.Float)
            if self.backend == "postgresql"
            else (sa.func.julianday("now") - 2440587.5) * 86400.0
        )
        if create:
            self._create_table()
        elif not self._has_table():
            raise StoreError(f"--store: {self.shown_url} holds no grid (no table {TABLE}); a grid command creates it")
        self._check_columns()

    # --- setting up -------------------------------------------------------------------------------------------

    def _connect_error(self, error: BaseException) -> StoreError:
        return StoreError(f"--store: cannot use {self.shown_url}: {_one_line(error)}")

    def _create_table(self) -> None:
        """Create the table if missing; several workers starting together on a fresh database must not race."""
        deadline = time.monotonic() + SQLITE_BUSY_SECONDS
        while True:
            try:
                with self.engine.begin() as connection:
                    if self.backend == "postgresql":
                        # Serialize the creators (concurrent CREATE TABLE fails with a unique violation in pg_type)
                        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": 0x5A55A_6121D})
                    _metadata.create_all(connection, checkfirst=True)
                return
            except DBAPIError as error:
                # SQLite: another process created it between our check and our CREATE; fine if it is there now
                try:
                    if self._has_table():
                        return
                except StoreError:
                    pass  # still locked: try again below, or report the first error
                # SQLite answers SQLITE_BUSY at once, without waiting its busy timeout, where waiting would
                # deadlock: two connections switching a fresh file to WAL together (our connect hook) both read
                # its header, and the one that wants to write while the other holds the PENDING lock is told
                # "database is locked". Three workers starting together hit it in CI; 3 processes running
                # `PRAGMA journal_mode=WAL` at one instant on a fresh file, 52 of 300 did here. So try again.
                if not (_sqlite_busy(self.backend, error) and time.monotonic() < deadline):
                    raise self._connect_error(error) from None
                time.sleep(0.05)
            except SQLAlchemyError as error:
                raise self._connect_error(error) from None

    def _check_columns(self) -> None:
        try:
            columns = {column["name"] for column in sa.inspect(self.engine).get_columns(TABLE)}
        except SQLAlchemyError as error:
            raise self._connect_error(error) from None
        missing = sorted(set(_columns.keys()) - columns)
        if missing:
            raise StoreError(
                f"--store: the table {TABLE} in {self.shown_url} lacks the columns {', '.join(missing)}: "
                "it was not made by this harness; use another database"
            )

    def _has_table(self) -> bool:
        try:
            return sa.inspect(self.engine).has_table(TABLE)
        except SQLAlchemyError as error:
            raise self._connect_error(error) from None

    def close(self) -> None:
        """Close the store's connections."""
        self.engine.dispose()

    def now(self) -> float:
        """The database's clock, seconds since the epoch."""
        with self.engine.connect() as connection:
            return float(connection.execute(sa.select(self._now)).scalar_one())

    # --- the grid ---------------------------------------------------------------------------------------------

    def add(self, jobs: Iterable[Job], finished: Mapping[tuple[str, str, int], dict[str, Any]] | None = None) -> int:
        """
        Add the jobs the store does not have yet (several machines may add the same grid at once).

        :param jobs: the grid
        :param finished: results obtained outside the store (a runs folder's JSON files), by job key: a job
            in it is added as done with that result, or marked done if it is pending
        :return: how many jobs were added
        :raises StoreError: a job is in the store with other evaluation episodes than asked (``--episodes``)
        """
        finished = finished or {}
        jobs = list(jobs)
        existing = {(row.task, row.algorithm, row.seed): row for row in self._select(_columns.episodes, _columns.status)}
        for job in jobs:
            row = existing.get(job.key)
            if row is not None and row.episodes != job.episodes:
                raise StoreError(
                    f"--episodes: the store {self.shown_url} has {job} with {row.episodes} evaluation episodes, this grid "
                    f"asks for {job.episodes}; use the same --episodes or another --store"
                )
        insert = (postgresql.insert if self.backend == "postgresql" else sqlite.insert)(jobs_table)
        values = []
        for job in jobs:
            if job.key in existing:
                continue
            result = finished.get(job.key)
            values.append(
                dict(
                    task=job.task,
                    algorithm=job.algorithm,
                    seed=job.seed,
                    episodes=job.episodes,
                    status=PENDING if result is None else DONE,
                    attempts=0,
                    result=None if result is None else _dumps(result),
                    worker=None if result is None else "imported from the runs folder",
                )
            )
        added = 0
        if values:
            with self.engine.begin() as connection:
                for value in values:  # one statement each: an executemany's rowcount is not portable
                    statement = insert.values(**value).on_conflict_do_nothing(index_elements=["task", "algorithm", "seed"])
                    added += connection.execute(statement).rowcount
        for job in jobs:
            row = existing.get(job.key)
            if row is not None and row.status == PENDING and job.key in finished:
                with self.engine.begin() as connection:
                    connection.execute(
                        sa.update(jobs_table)
                        .where(*_key_is(job), _columns.status == PENDING, _columns.token.is_(None))
                        .values(status=DONE, result=_dumps(finished[job.key]), worker="imported from the runs folder")
                    )
        return added

    def retry_failed(self, jobs: Iterable[Job]) -> int:
        """Make the failed ones of ``jobs`` pending again; return how many."""
        count = 0
        with self.engine.begin() as connection:
            for job in jobs:
                count += connection.execute(
                    sa.update(jobs_table)
                    .where(*_key_is(job), _columns.status == FAILED)
                    .values(status=PENDING, token=None, lease_until=None, attempts=0, error=None, worker=None)
                ).rowcount
        return count

    def _select(self, *extra: Any, where: Any = None) -> list[Any]:
        query = sa.select(_columns.id, _columns.task, _columns.algorithm, _columns.seed, *extra).order_by(_columns.id)
        if where is not None:
            query = query.where(where)
        with self.engine.connect() as connection:
            return list(connection.execute(query).all())

    # --- claiming ---------------------------------------------------------------------------------------------

    def claim(self, worker: str, among: Collection[Job]) -> Claim | None:
        """
        Claim one job of ``among`` that nobody holds (pending, or running under an expired lease).

        :param worker: who claims (shown by ``status``)
        :param among: the jobs this worker may run (its grid)
        :return: the claim, or None if there is nothing to claim now
        """
        wanted = {job.key: job for job in among}
        with self.engine.connect() as connection:
            now = float(connection.execute(sa.select(self._now)).scalar_one())
        claimable = sa.or_(_columns.status == PENDING, sa.and_(_columns.status == RUNNING, _columns.lease_until < now))
        for row in self._select(_columns.episodes, _columns.status, _columns.token, _columns.attempts, where=claimable):
            job = wanted.get((row.task, row.algorithm, row.seed))
            if job is None:
                continue
            same = [_columns.id == row.id, _columns.status == row.status]
            same.append(_columns.token.is_(None) if row.token is None else _columns.token == row.token)
            if row.status == RUNNING:
                same.append(_columns.lease_until < self._now)
                if row.attempts >= self.max_attempts:
                    self._update(
                        same,
                        status=FAILED,
                        token=None,
                        lease_until=None,
                        finished_at=self._now,
                        error=f"its worker stopped without finishing it {row.attempts} times (the lease expired)",
                    )
                    continue
            token = uuid.uuid4().hex
            asked_at = time.monotonic()
            if self._update(
                same,
                status=RUNNING,
                token=token,
                worker=worker,
                lease_until=self._now + self.lease,
                attempts=_columns.attempts + 1,
                claimed_at=self._now,
            ):
                return Claim(row.id, Job(row.task, row.algorithm, row.seed, row.episodes), token, asked_at)
        return None

    def _update(self, where: list[Any], **values: Any) -> bool:
        with self.engine.begin() as connection:
            return bool(connection.execute(sa.update(jobs_table).where(*where).values(**values)).rowcount == 1)

    def _mine(self, claim: Claim) -> list[Any]:
        """The row still held by ``claim``: its token, running, its lease not expired."""
        return [
            _columns.id == claim.row_id,
            _columns.token == claim.token,
            _columns.status == RUNNING,
            _columns.lease_until >= self._now,
        ]

    def renew(self, claim: Claim) -> bool:
        """Extend the claim's lease by one lease from now; False if the claim is no longer held."""
        return self._update(self._mine(claim), lease_until=self._now + self.lease)

    def finish(self, claim: Claim, result: dict[str, Any]) -> bool:
        """Record the job's result (it is done); False if the claim was no longer held (the result is not recorded)."""
        return self._update(
            self._mine(claim), status=DONE, result=_dumps(result), token=None, lease_until=None, finished_at=self._now
        )

    def fail(self, claim: Claim, error: str) -> bool:
        """Record that the job raised ``error`` (it is failed); False if the claim was no longer held."""
        return self._update(self._mine(claim), status=FAILED, error=error, token=None, lease_until=None, finished_at=self._now)

    def release(self, claim: Claim) -> bool:
        """Give the job back unfinished (pending again, this attempt not counted); False if it was no longer held."""
        return self._update(
            self._mine(claim), status=PENDING, token=None, worker=None, lease_until=None, attempts=_columns.attempts - 1
        )

    # --- reading ----------------------------------------------------------------------------------------------

    def rows(self, among: Collection[Job] | None = None) -> list[JobRow]:
        """Every row of the store (or those of ``among``), in the order they were added."""
        wanted = None if among is None else {job.key for job in among}
        with self.engine.connect() as connection:
            now = float(connection.execute(sa.select(self._now)).scalar_one())
            rows = connection.execute(sa.select(jobs_table).order_by(_columns.id)).all()
        return [
            JobRow(
                job=Job(row.task, row.algorithm, row.seed, row.episodes),
                status=row.status,
                worker=row.worker,
                attempts=row.attempts,
                lease_left=None if row.lease_until is None else row.lease_until - now,
                result=None if row.result is None else _loads(row.result, f"the result of {row.task} {row.algorithm}"),
                error=row.error,
            )
            for row in rows
            if wanted is None or (row.task, row.algorithm, row.seed) in wanted
        ]

    def counts(self, among: Collection[Job] | None = None) -> Counter[str]:
        """How many jobs (of ``among``, else all) are in each status; an unknown job counts as pending."""
        statuses = {(row.task, row.algorithm, row.seed): row.status for row in self._select(_columns.status)}
        counts: Counter[str] = Counter(dict.fromkeys(STATUSES, 0))
        if among is None:
            counts.update(statuses.values())
        else:
            counts.update(statuses.get(job.key, PENDING) for job in among)
        return counts

    def results(self) -> list[dict[str, Any]]:
        """The results of the done jobs."""
        return [row.result for row in self.rows() if row.status == DONE and row.result is not None]


def _sqlite_busy(backend: str, error: DBAPIError) -> bool:
    """Whether ``error`` is SQLite's "database is locked" / "database is busy" (SQLITE_BUSY, SQLITE_LOCKED)."""
    message = str(error.orig).lower()
    return backend == "sqlite" and ("database is locked" in message or "database is busy" in message)


def _sqlite_on_connect(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _key_is(job: Job) -> list[Any]:
    return [_columns.task == job.task, _columns.algorithm == job.algorithm, _columns.seed == job.seed]


def _dumps(result: dict[str, Any]) -> str:
    import json

    return json.dumps(result)


def _loads(text: str, name: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(text)
    except ValueError as error:
        raise StoreError(f"--store: {name} is not JSON ({_one_line(error)})") from None
    if not isinstance(value, dict):
        raise StoreError(f"--store: {name} is not a JSON object")
    return value


# --- the worker ---------------------------------------------------------------------------------------------------


def _fence_by_exit(message: str) -> None:
    print(
        f"worker {worker_name()}: {message}; ending this process so that the job never runs twice", file=sys.stderr, flush=True
    )
    os._exit(FENCED_EXIT)


def worker_name() -> str:
    """``host:pid``, how ``status`` shows a worker."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """
    While a job runs: one thread renews its lease every quarter of a lease, another ends the process
    (``fence``) once the last successful renewal is :data:`FENCE_FRACTION` of a lease old, or as soon as a
    renewal finds the lease taken.

    :param store: the store
    :param claim: the job held
    :param fence: called with the reason when the worker can no longer prove it holds the job (default: exit)
    """

    def __init__(self, store: JobStore, claim: Claim, fence: Callable[[str], None] = _fence_by_exit) -> None:
        self.store, self.claim, self.fence = store, claim, fence
        self.deadline = claim.asked_at + FENCE_FRACTION * store.lease
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._renew_loop, name="lease renewal", daemon=True),
            threading.Thread(target=self._watch_loop, name="lease watchdog", daemon=True),
        ]

    def start(self) -> "Heartbeat":
        """Start renewing and watching."""
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop renewing and watching (and wait for the threads), before the claim is finished or given back."""
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.store.lease / 4):
            asked_at = time.monotonic()
            try:
                held = self.store.renew(self.claim)
            except Exception as error:  # the database is unreachable: the watchdog ends the worker if it stays so
                print(
                    f"worker {worker_name()}: could not renew the lease of {self.claim.job}: {_one_line(error)}",
                    file=sys.stderr,
                )
                continue
            if not held:
                self._stop.set()
                self.fence(f"the lease of {self.claim.job} was taken by another worker")
                return
            with self._lock:
                self.deadline = asked_at + FENCE_FRACTION * self.store.lease

    def _watch_loop(self) -> None:
        while True:
            with self._lock:
                left = self.deadline - time.monotonic()
            if left <= 0:
                self._stop.set()
                self.fence(f"could not renew the lease of {self.claim.job} for {FENCE_FRACTION * self.store.lease:.1f} s")
                return
            if self._stop.wait(min(left, self.store.lease / 8)):
                return


@dataclass
class Summary:
    """What one worker did: the jobs it finished and failed, and those whose result it could not record."""

    done: list[Job] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)
    lost: list[Job] = field(default_factory=list)


def work(
    store: JobStore,
    jobs: Collection[Job],
    run: Callable[[Job], dict[str, Any]],
    on_result: Callable[[Job, dict[str, Any]], None] | None = None,
    worker: str | None = None,
    poll: float | None = None,
    log: Callable[[str], None] = print,
    fence: Callable[[str], None] = _fence_by_exit,
) -> Summary:
    """
    Claim and run jobs of ``jobs`` until every one is done or failed (waiting, while others run jobs,
    to take over those whose worker dies).

    :param store: the store (the jobs must have been added)
    :param jobs: the grid this worker works on
    :param run: the job function: a job's result, a JSON-serializable dict
    :param on_result: called with each result this worker recorded in the store (e.g. to write its JSON file)
    :param worker: the name ``status`` shows (default ``host:pid``)
    :param poll: seconds between looks at the store while nothing is claimable (default: a quarter lease, at most 5)
    :param log: where progress lines go
    :param fence: what to do when the lease is lost while a job runs (default: end the process, :data:`FENCED_EXIT`)
    :return: what this worker did
    """
    worker = worker or worker_name()
    poll = min(5.0, store.lease / 4) if poll is None else poll
    summary = Summary()
    while True:
        claim = store.claim(worker, jobs)
        if claim is None:
            counts = store.counts(jobs)
            if counts[PENDING] + counts[RUNNING] == 0:
                return summary
            time.sleep(poll)
            continue
        log(f"{worker}: running {claim.job}")
        # The heartbeat stops before the claim is finished, failed or given back (a renewal after
        # that would find the row no longer running and take it for a lost lease)
        heartbeat = Heartbeat(store, claim, fence).start()
        try:
            result = run(claim.job)
        except (KeyboardInterrupt, SystemExit):
            heartbeat.stop()
            store.release(claim)  # at once claimable by another worker
            raise
        except Exception as error:
            heartbeat.stop()
            store.fail(claim, f"{type(error).__name__}: {_one_line(error)}\n{traceback.format_exc()}")
            log(f"{worker}: {claim.job} failed: {type(error).__name__}: {_one_line(error)}")
            summary.failed.append(claim.job)
            continue
        finally:
            heartbeat.stop()
        if not store.finish(claim, result):
            log(f"{worker}: {claim.job} finished after its lease was lost: its result is not recorded")
            summary.lost.append(claim.job)
            continue
        summary.done.append(claim.job)
        if on_result is not None:
            on_result(claim.job, result)
        log(f"{worker}: {claim.job} done")


def iterate_status(store: JobStore, among: Collection[Job] | None = None) -> Iterator[str]:
    """The lines of ``status``: the counts, then the running and the failed jobs."""
    rows = store.rows(among)
    counts = Counter(row.status for row in rows)
    yield f"{store.shown_url}: {len(rows)} jobs, " + ", ".join(f"{counts[status]} {status}" for status in STATUSES)
    for row in rows:
        if row.status == RUNNING:
            left = row.lease_left or 0.0
            state = f"lease {left:.0f} s left" if left >= 0 else f"lease expired {-left:.0f} s ago (its worker stopped?)"
            yield f"  running  {row.job}  by {row.worker}, attempt {row.attempts}, {state}"
    for row in rows:
        if row.status == FAILED:
            reason = row.error.splitlines()[0] if row.error else ""
            yield f"  failed   {row.job}  after {row.attempts} attempts: {reason}"
