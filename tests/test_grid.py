"""
The benchmark grid claimed from a shared store (benchmarks/jobstore.py, benchmarks/harness.py grid):
every job runs once with any number of workers, a SIGKILLed or stopped worker's job is taken over
once its lease expires, a worker that cannot renew its lease ends itself, and bad input is refused.

The workers are real processes running a fake job (no training) that logs when it starts and ends.
"""

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from disk import small_disk

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import jobstore  # noqa: E402
from jobstore import DONE, FAILED, FENCED_EXIT, PENDING, RUNNING, Job, JobStore, StoreError  # noqa: E402

TASK = "CartPole-v1"  # a real task of the harness, so that report() can read the fake results
ALGORITHMS = ["dqn", "sarsa-sampled"]


def grid_jobs(seeds: int) -> list[Job]:
    return [Job(TASK, algorithm, seed, 2) for seed in range(seeds) for algorithm in ALGORITHMS]


def fake_job(job: Job, runs: Path) -> dict[str, Any]:
    """No training: logs its start and end in ``RUNS/log.jsonl`` (or ``$GRID_FAKE_LOG``), lasts ``$GRID_FAKE_SECONDS``."""

    def log(event: str) -> None:
        line = json.dumps({"event": event, "job": list(job.key), "pid": os.getpid(), "time": time.time()}) + "\n"
        folder = Path(os.environ.get("GRID_FAKE_LOG", runs))
        descriptor = os.open(folder / "log.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(descriptor, line.encode())  # one small O_APPEND write: lines of several processes never mix
        finally:
            os.close(descriptor)

    log("start")
    time.sleep(float(os.environ.get("GRID_FAKE_SECONDS", "0.2")))
    if os.environ.get("GRID_FAKE_FAIL") == f"{job.algorithm}/{job.seed}":
        raise RuntimeError(f"the fake job {job} fails")
    log("end")
    return {
        "task": job.task,
        "algorithm": job.algorithm,
        "seed": job.seed,
        "episodes": job.episodes,
        "steps": 10,
        "curve": [[5, float(job.seed), 0.0], [10, float(job.seed) + 1, 0.0]],
        "train_seconds": 0.5,
        "steps_per_second": 20.0,
        "machine": "fake",
        "pid": os.getpid(),
    }


def events(runs: Path) -> list[dict[str, Any]]:
    path = runs / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def runs_of(runs: Path, job: Job) -> list[tuple[str, int]]:
    """(event, pid) of every start and end of ``job``, in order."""
    return [(event["event"], event["pid"]) for event in events(runs) if event["job"] == list(job.key)]


def worker_main(url: str, lease: str, seeds: str, runs: str, broken_renewal: str = "") -> None:
    """A worker process of these tests: adds the grid (as each machine's grid command does), then works on it."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where the test runner's SIGINT is ignored
    store = JobStore(url, lease=float(lease))
    jobs = grid_jobs(int(seeds))
    store.add(jobs)
    if broken_renewal:

        def unreachable(claim: jobstore.Claim) -> bool:
            raise sa.exc.OperationalError("UPDATE", {}, Exception("the database is unreachable"))

        setattr(store, "renew", unreachable)  # noqa: B010 (a test double for one method)
    jobstore.work(store, jobs, lambda job: fake_job(job, Path(runs)), poll=0.1, log=lambda line: print(line, flush=True))


class Workers:
    """Worker processes started by one test (all of them killed at its end if still there)."""

    def __init__(self, url: str, runs: Path, seeds: int, lease: float) -> None:
        self.url, self.runs, self.seeds, self.lease = url, runs, seeds, lease
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, seconds: float = 0.2, broken_renewal: bool = False) -> "subprocess.Popen[bytes]":
        code = (
            f"import sys; sys.path[:0] = {[str(Path(__file__).parent), str(BENCHMARKS)]!r}; "
            "import test_grid; test_grid.worker_main(*sys.argv[1:])"
        )
        arguments = [self.url, str(self.lease), str(self.seeds), str(self.runs), "broken" if broken_renewal else ""]
        env = dict(os.environ, GRID_FAKE_SECONDS=str(seconds))
        process = subprocess.Popen(
            [sys.executable, "-c", code, *arguments], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.processes.append(process)
        return process

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
                process.wait()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'grid.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    """A fresh store on each engine."""
    return sqlite_url if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def workers_at(tmp_path: Path) -> Iterator[Any]:
    started: list[Workers] = []

    def make(url: str, seeds: int, lease: float) -> Workers:
        runs = tmp_path / "runs"
        runs.mkdir(exist_ok=True)
        started.append(Workers(url, runs, seeds, lease))
        return started[-1]

    yield make
    for workers in started:
        workers.kill_all()


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def finish(process: "subprocess.Popen[bytes]", timeout: float = 90) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output.decode()


def check_every_job_ran_once(url: str, workers: Workers, count: int, processes: int) -> None:
    """``processes`` workers started together on a fresh database (each creating the table and adding the grid)."""
    started = [workers.start(seconds=0.3) for _ in range(processes)]
    for process in started:
        code, output = finish(process)
        assert code == 0, output
    jobs = grid_jobs(workers.seeds)
    assert len(jobs) == count
    pids = {process.pid for process in started}
    for job in jobs:
        trace = runs_of(workers.runs, job)
        assert [event for event, _ in trace] == ["start", "end"], (job, trace)  # once, and never two at a time
        assert trace[0][1] == trace[1][1] and trace[0][1] in pids
    assert len({pid for event in events(workers.runs) for pid in [event["pid"]]}) >= 2  # the work was shared
    store = JobStore(url)
    rows = store.rows()
    assert [row.job for row in rows] == jobs and all(row.status == DONE and row.attempts == 1 for row in rows)
    assert all(row.result is not None and row.result["pid"] == runs_of(workers.runs, row.job)[0][1] for row in rows)
    assert store.counts() == {PENDING: 0, RUNNING: 0, DONE: count, FAILED: 0}
    store.close()


def test_workers_on_one_sqlite_store_run_every_job_once(sqlite_url: str, workers_at: Any) -> None:
    check_every_job_ran_once(sqlite_url, workers_at(sqlite_url, seeds=6, lease=30), count=12, processes=3)


def creating_fails(monkeypatch: pytest.MonkeyPatch, message: str, times: int) -> list[float]:
    """SQLite's CREATE answers ``message`` at once the first ``times`` times; returns the attempts' clock times."""
    create_all, attempts = jobstore._metadata.create_all, []

    def failing(bind: Any, checkfirst: bool = True) -> None:
        attempts.append(time.monotonic())
        if len(attempts) <= times:
            raise sa.exc.OperationalError("CREATE TABLE deep_sarsa_grid_jobs", {}, sqlite3.OperationalError(message))
        create_all(bind, checkfirst=checkfirst)

    monkeypatch.setattr(jobstore._metadata, "create_all", failing)
    return attempts


def test_a_store_waits_out_sqlite_answering_locked_at_once(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLITE_BUSY without the busy timeout (seen in CI: three workers creating one fresh file): try again."""
    attempts = creating_fails(monkeypatch, "database is locked", times=3)
    store = JobStore(sqlite_url)
    assert len(attempts) == 4
    store.add(grid_jobs(1))
    assert store.counts()[PENDING] == 2
    store.close()


def test_a_store_that_stays_locked_or_breaks_otherwise_is_refused(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobstore, "SQLITE_BUSY_SECONDS", 0.5)
    attempts = creating_fails(monkeypatch, "database is locked", times=10**6)
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"^--store: cannot use sqlite:///.*grid\.db: .*database is locked"):
        JobStore(sqlite_url)
    assert time.monotonic() - started >= 0.5 and len(attempts) >= 3
    attempts = creating_fails(monkeypatch, "disk I/O error", times=1)
    with pytest.raises(StoreError, match="disk I/O error"):
        JobStore(sqlite_url)
    assert len(attempts) == 1  # not a lock: no second try


def test_two_workers_on_one_postgresql_store_run_every_job_once(postgres_url: str, workers_at: Any) -> None:
    assert postgres_url.startswith("postgresql")
    check_every_job_ran_once(postgres_url, workers_at(postgres_url, seeds=5, lease=30), count=10, processes=2)


def test_a_sigkilled_workers_job_is_claimed_again_once_its_lease_expires(sqlite_url: str, workers_at: Any) -> None:
    workers = workers_at(sqlite_url, seeds=2, lease=2.0)
    doomed = workers.start(seconds=60)  # its jobs never end on their own
    wait_for(lambda: any(event["pid"] == doomed.pid for event in events(workers.runs)), 60, "the first job to start")
    doomed.kill()  # SIGKILL, mid-job: no chance to give the job back
    killed_at = time.time()
    doomed.wait()
    survivor = workers.start(seconds=0.1)
    code, output = finish(survivor)
    assert code == 0, output
    (taken,) = [event for event in events(workers.runs) if event["pid"] == doomed.pid]
    job = Job(TASK, taken["job"][1], taken["job"][2], 2)
    assert runs_of(workers.runs, job) == [("start", doomed.pid), ("start", survivor.pid), ("end", survivor.pid)]
    again = next(e["time"] for e in events(workers.runs) if e["pid"] == survivor.pid and e["job"] == list(job.key))
    assert again >= killed_at + 0.7 * workers.lease  # not before its lease (renewed every lease/4 until the kill) expired
    for other in grid_jobs(2):
        if other != job:
            assert runs_of(workers.runs, other) == [("start", survivor.pid), ("end", survivor.pid)]
    store = JobStore(sqlite_url)
    row = next(row for row in store.rows() if row.job == job)
    assert row.status == DONE and row.attempts == 2 and row.result is not None and row.result["pid"] == survivor.pid
    assert store.counts()[DONE] == 4
    store.close()


def test_two_workers_and_one_sigkilled_mid_job_complete_the_grid(sqlite_url: str, workers_at: Any) -> None:
    """Killed while the other worker runs: the other one waits for the lease, takes the job over and ends."""
    workers = workers_at(sqlite_url, seeds=3, lease=2.0)
    doomed = workers.start(seconds=60)
    other = workers.start(seconds=0.3)
    wait_for(lambda: any(event["pid"] == doomed.pid for event in events(workers.runs)), 60, "the doomed worker's job")
    doomed.kill()
    code, output = finish(other)
    assert code == 0, output
    for job in grid_jobs(3):
        trace = runs_of(workers.runs, job)
        assert trace[-2:] == [("start", other.pid), ("end", other.pid)] and len(trace) in (2, 3), trace
    assert sum(len(runs_of(workers.runs, job)) == 3 for job in grid_jobs(3)) == 1  # one job was taken over
    store = JobStore(sqlite_url)
    assert store.counts() == {PENDING: 0, RUNNING: 0, DONE: 6, FAILED: 0}
    store.close()


def stop_outside_a_transaction(process: "subprocess.Popen[bytes]", database: Path) -> None:
    """SIGSTOP ``process``, but not while its heartbeat holds SQLite's write lock (which would block every other worker)."""
    while True:
        process.send_signal(signal.SIGSTOP)
        probe = sqlite3.connect(database, timeout=0.2)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            process.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        finally:
            probe.close()


def test_a_stopped_worker_never_records_a_job_taken_over_meanwhile(sqlite_url: str, workers_at: Any) -> None:
    """SIGSTOP past the lease: the job is run by another worker; resumed, the stopped one ends itself (fenced)."""
    workers = workers_at(sqlite_url, seeds=1, lease=2.0)
    stopped = workers.start(seconds=20)
    wait_for(lambda: any(event["pid"] == stopped.pid for event in events(workers.runs)), 60, "the first job to start")
    stop_outside_a_transaction(stopped, Path(sqlite_url.removeprefix("sqlite:///")))
    other = workers.start(seconds=0.1)
    code, output = finish(other)
    assert code == 0, output
    stopped.send_signal(signal.SIGCONT)
    code, output = finish(stopped, timeout=10)  # well before its 20 s job could end
    assert code == FENCED_EXIT and "never runs twice" in output, output
    (taken,) = [event for event in events(workers.runs) if event["pid"] == stopped.pid]
    job = Job(TASK, taken["job"][1], taken["job"][2], 2)
    assert runs_of(workers.runs, job) == [("start", stopped.pid), ("start", other.pid), ("end", other.pid)]
    store = JobStore(sqlite_url)
    row = next(row for row in store.rows() if row.job == job)
    assert row.status == DONE and row.result is not None and row.result["pid"] == other.pid
    store.close()


def test_a_worker_that_cannot_renew_its_lease_ends_before_the_lease_expires(sqlite_url: str, workers_at: Any) -> None:
    workers = workers_at(sqlite_url, seeds=1, lease=5.0)
    cut_off = workers.start(seconds=30, broken_renewal=True)
    wait_for(lambda: any(event["pid"] == cut_off.pid for event in events(workers.runs)), 60, "the job to start")
    (started,) = events(workers.runs)
    code, output = finish(cut_off, timeout=30)
    assert code == FENCED_EXIT and "could not renew the lease" in output and "the database is unreachable" in output, output
    store = JobStore(sqlite_url)
    (row,) = [row for row in store.rows() if row.job.key == tuple(started["job"])]
    # Gone (read after its exit) while its lease still runs: nobody else could have claimed the job yet
    assert row.status == RUNNING and row.lease_left is not None and 0 < row.lease_left < (1 - 0.75) * workers.lease
    store.close()
    survivor = workers.start(seconds=0.1)
    code, output = finish(survivor)
    assert code == 0, output
    assert JobStore(sqlite_url).counts()[DONE] == 2


def test_an_interrupted_worker_gives_its_job_back_at_once(sqlite_url: str, workers_at: Any) -> None:
    workers = workers_at(sqlite_url, seeds=1, lease=60.0)
    interrupted = workers.start(seconds=30)
    wait_for(lambda: any(event["pid"] == interrupted.pid for event in events(workers.runs)), 60, "the job to start")
    interrupted.send_signal(signal.SIGINT)  # Ctrl-C: KeyboardInterrupt in the job
    code, output = finish(interrupted, timeout=30)
    assert code != 0 and "KeyboardInterrupt" in output
    store = JobStore(sqlite_url)
    assert store.counts() == {PENDING: 2, RUNNING: 0, DONE: 0, FAILED: 0}  # not running until a 60 s lease expires
    assert all(row.attempts == 0 and row.worker is None for row in store.rows())
    store.close()
    survivor = workers.start(seconds=0.1)
    started = time.monotonic()
    code, output = finish(survivor)
    assert code == 0 and time.monotonic() - started < 30, output


def test_a_failing_job_is_failed_not_retried_until_asked(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRID_FAKE_SECONDS", "0")
    monkeypatch.setenv("GRID_FAKE_FAIL", "dqn/1")
    store = JobStore(sqlite_url, lease=30)
    jobs = grid_jobs(2)
    assert store.add(jobs) == 4 and store.add(jobs) == 0
    written: list[Job] = []
    summary = jobstore.work(store, jobs, lambda job: fake_job(job, tmp_path), on_result=lambda job, _: written.append(job))
    assert summary.failed == [Job(TASK, "dqn", 1, 2)] and len(summary.done) == 3 and written == summary.done
    (failed,) = [row for row in store.rows() if row.status == FAILED]
    assert failed.error is not None and failed.error.startswith("RuntimeError: the fake job CartPole-v1 dqn seed 1 fails")
    assert "Traceback" in failed.error
    status = list(jobstore.iterate_status(store))
    assert "3 done, 1 failed" in status[0] and "failed   CartPole-v1 dqn seed 1  after 1 attempts: RuntimeError" in status[1]
    assert jobstore.work(store, jobs, lambda job: fake_job(job, tmp_path)).done == []  # nothing is left to run
    monkeypatch.delenv("GRID_FAKE_FAIL")
    assert store.retry_failed(jobs) == 1
    assert jobstore.work(store, jobs, lambda job: fake_job(job, tmp_path)).done == [Job(TASK, "dqn", 1, 2)]
    assert store.counts() == {PENDING: 0, RUNNING: 0, DONE: 4, FAILED: 0}
    assert sum(event["event"] == "end" for event in events(tmp_path)) == 4  # the done ones never ran again


def test_concurrent_claims_never_hand_out_a_job_twice(any_url: str) -> None:
    """Eight threads, each with its own engine (its own connections), claim 40 jobs as fast as they can."""
    jobs = grid_jobs(20)
    stores = [JobStore(any_url, lease=30) for _ in range(8)]
    stores[0].add(jobs)
    claimed: list[list[jobstore.Claim]] = [[] for _ in stores]
    start = threading.Barrier(len(stores))

    def claim_all(index: int) -> None:
        start.wait()
        while (claim := stores[index].claim(f"thread {index}", jobs)) is not None:
            claimed[index].append(claim)

    threads = [threading.Thread(target=claim_all, args=(index,)) for index in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    every = [claim.job for claims in claimed for claim in claims]
    assert sorted(every) == sorted(jobs)  # each job once
    assert sum(bool(claims) for claims in claimed) >= 2
    rows = {row.job: row for row in stores[0].rows()}
    for index, claims in enumerate(claimed):
        assert all(rows[claim.job].worker == f"thread {index}" and rows[claim.job].attempts == 1 for claim in claims)
    for store in stores:
        store.close()


def test_claims_are_exclusive_and_a_lost_claim_records_nothing(any_url: str) -> None:
    jobs = grid_jobs(1)
    first, second = JobStore(any_url, lease=0.5, max_attempts=2), JobStore(any_url, lease=0.5, max_attempts=2)
    first.add(jobs)
    a = first.claim("a", jobs)
    b = second.claim("b", jobs)
    assert a is not None and b is not None and a.job != b.job  # one job each
    assert second.claim("c", jobs) is None  # both held
    assert first.renew(a) and not second.renew(jobstore.Claim(a.row_id, a.job, "forged", 0.0))
    time.sleep(0.6)  # neither renews: both leases expire
    assert not first.renew(a)  # an expired lease cannot be renewed...
    c = second.claim("c", [a.job])
    assert c is not None and c.job == a.job and c.token != a.token
    assert not first.finish(a, {"stale": True}) and not first.fail(a, "stale") and not first.release(a)  # ...nor recorded
    assert second.finish(c, {"fresh": True})
    assert [row.result for row in first.rows() if row.job == a.job] == [{"fresh": True}]
    d = second.claim("d", jobs)  # b's lease expired too
    assert d is not None and d.job == b.job  # its second attempt
    time.sleep(0.6)
    assert first.claim("e", jobs) is None  # the job lost its worker twice (max_attempts=2): failed, not claimed
    (row,) = [row for row in first.rows() if row.job == b.job]
    assert row.status == FAILED and row.error is not None and "stopped without finishing it 2 times" in row.error
    first.close()
    second.close()


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    import harness

    return harness


def grid_args(harness: ModuleType, runs: Path, **overrides: Any) -> Any:
    arguments = dict(
        tasks=[TASK], algorithms=ALGORITHMS, seeds=2, episodes=2, workers=2, store=None, lease=30.0, retry_failed=False,
        shard=(1, 1), runs=runs,
    )  # fmt: skip
    arguments.update(overrides)
    return harness.argparse.Namespace(**arguments)


def test_the_grid_command_runs_workers_on_its_store_and_resumes(
    harness: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("GRID_FAKE_SECONDS", "0.2")
    old = fake_job(Job(TASK, "dqn", 0, 2), runs)  # a result from before the store: it counts as done
    (runs / TASK / "dqn").mkdir(parents=True)
    (runs / TASK / "dqn" / "seed0.json").write_text(json.dumps(old))
    assert harness.grid(grid_args(harness, runs), job=fake_job) == 0
    out = capsys.readouterr().out
    assert "4 jobs in this grid (4 new to sqlite:///" in out and "1 done already" in out and "4 of 4 jobs done" in out
    for job in grid_jobs(2):
        result = json.loads(harness.job_path(runs, *job.key).read_text())
        assert result["seed"] == job.seed and result["algorithm"] == job.algorithm
        assert len(runs_of(runs, job)) == 2  # dqn seed 0: the old run only
    assert sum(event["pid"] == os.getpid() for event in events(runs)) == 2  # the old run only: the rest ran in workers
    assert (runs / "grid.db").is_file()
    before = len(events(runs))
    assert harness.grid(grid_args(harness, runs), job=fake_job) == 0  # done: nothing runs again
    assert len(events(runs)) == before and "4 done already" in capsys.readouterr().out
    assert harness.main(["status", "--runs", str(runs)]) == 0
    assert "4 jobs, 0 pending, 0 running, 4 done, 0 failed" in capsys.readouterr().out
    # Results collected from the store: exported as JSON files elsewhere, and reported from the store itself
    elsewhere = tmp_path / "elsewhere"
    assert harness.main(["export", "--store", f"sqlite:///{runs / 'grid.db'}", "--runs", str(elsewhere)]) == 0
    assert "4 results in the store, 4 JSON files written" in capsys.readouterr().out
    assert sorted(p.relative_to(elsewhere) for p in elsewhere.glob("*/*/*.json")) == sorted(
        p.relative_to(runs) for p in runs.glob("*/*/*.json")
    )
    output = tmp_path / "learning.md"
    harness.report(harness.argparse.Namespace(runs=tmp_path / "nothing", store=f"sqlite:///{runs / 'grid.db'}", output=output))
    assert "| CartPole-v1 | dqn | 2 |" in output.read_text() and "| CartPole-v1 | sarsa-sampled | 2 |" in output.read_text()


def test_a_failed_job_makes_the_grid_command_fail(
    harness: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GRID_FAKE_SECONDS", "0")
    monkeypatch.setenv("GRID_FAKE_FAIL", "sarsa-sampled/0")
    assert harness.grid(grid_args(harness, tmp_path, workers=1, seeds=1), job=fake_job) == 1
    out = capsys.readouterr().out
    assert "1 of 2 jobs done, 1 failed" in out and "RuntimeError: the fake job" in out
    monkeypatch.delenv("GRID_FAKE_FAIL")
    assert harness.grid(grid_args(harness, tmp_path, workers=1, seeds=1), job=fake_job) == 1  # failed stays failed
    assert harness.grid(grid_args(harness, tmp_path, workers=1, seeds=1, retry_failed=True), job=fake_job) == 0
    assert "(1 made pending again)" in capsys.readouterr().out


def test_sigterm_to_the_grid_command_gives_the_running_jobs_back(harness: ModuleType, tmp_path: Path) -> None:
    code = (
        f"import sys; from pathlib import Path; sys.path[:0] = {[str(Path(__file__).parent), str(BENCHMARKS)]!r}\n"
        "import harness, test_grid\n"
        "try:\n"
        "    harness.grid(test_grid.grid_args(harness, Path(sys.argv[1])), job=test_grid.fake_job)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
    )
    env = dict(os.environ, GRID_FAKE_SECONDS="60")
    command = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for(lambda: len(events(tmp_path)) == 2, 120, "both workers to start a job")
        command.send_signal(signal.SIGTERM)
        returncode, output = finish(command, timeout=60)
    finally:
        if command.poll() is None:  # the test failed: end the command and its workers (their pids are in the log)
            command.kill()
            for pid in {event["pid"] for event in events(tmp_path)}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert returncode == 130, output
    for pid in {event["pid"] for event in events(tmp_path)}:  # the workers are gone too

        def gone(pid: int = pid) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(gone, 30, f"worker {pid} to end")
    store = JobStore(f"sqlite:///{tmp_path / 'grid.db'}")
    assert store.counts() == {PENDING: 4, RUNNING: 0, DONE: 0, FAILED: 0}  # claimable at once, not after a lease
    assert all(row.attempts == 0 for row in store.rows())
    store.close()


def test_a_full_disk_loses_no_result_and_leaves_no_partial_file(
    harness: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The runs folder on a full tmpfs: the JSON files cannot be written, the results are in the store, export writes them."""
    with small_disk(tmp_path, "64k") as disk:
        with open(disk / "filler", "wb", buffering=0) as filler:
            try:
                while filler.write(b"x" * 4096):
                    pass
            except OSError:
                pass  # full
        monkeypatch.setenv("GRID_FAKE_SECONDS", "0")
        monkeypatch.setenv("GRID_FAKE_LOG", str(tmp_path))
        url = f"sqlite:///{tmp_path / 'grid.db'}"
        jobs = grid_jobs(2)
        store = JobStore(url)
        store.add(jobs)
        handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        try:
            harness._worker(url, 30.0, jobs, disk, fake_job)  # one worker, in this process
        finally:
            signal.signal(signal.SIGTERM, handlers[0])
            signal.signal(signal.SIGINT, handlers[1])
        out = capsys.readouterr().out
        assert out.count("could not write") == 4 and "[Errno 28]" in out and "harness.py export" in out
        assert sorted(path.name for path in disk.rglob("*") if path.is_file()) == ["filler"]  # no partial file
        assert store.counts()[DONE] == 4
        (disk / "filler").unlink()
        assert harness.main(["export", "--store", url, "--runs", str(disk)]) == 0
        assert {json.dumps(json.loads(path.read_text()), sort_keys=True) for path in disk.glob("*/*/*.json")} == {
            json.dumps(result, sort_keys=True) for result in store.results()
        }
        store.close()


@pytest.mark.parametrize("value", ["0/2", "3/2", "1/0", "0/0", "-1/2", "a/b", "1", "1/2/3", ""])
def test_a_bad_shard_is_refused(harness: ModuleType, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        harness.main(["grid", f"--shard={value}"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "argument --shard: expected i/n with whole numbers 1 <= i <= n" in error and repr(value) in error


def test_shards_split_the_grid(harness: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRID_FAKE_SECONDS", "0")
    assert harness.shard("2/3") == (2, 3) and harness.shard(" 1 / 1 ") == (1, 1)
    stores = []
    for index in (1, 2):
        runs = tmp_path / f"machine{index}"  # two machines without a shared store, each with its own SQLite file
        assert harness.grid(grid_args(harness, runs, workers=1, seeds=3, shard=(index, 2)), job=fake_job) == 0
        stores.append({row.job for row in JobStore(f"sqlite:///{runs / 'grid.db'}").rows()})
    assert not stores[0] & stores[1] and stores[0] | stores[1] == set(grid_jobs(3)) and len(stores[0]) == 3


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--workers", "0"], "argument --workers: expected a positive whole number, got '0'"),
        (["--seeds", "-1"], "argument --seeds: expected a positive whole number, got '-1'"),
        (["--lease", "nan"], "argument --lease: expected a positive number, got 'nan'"),
        (["--lease", "0"], "argument --lease: expected a positive number, got '0'"),
    ],
)
def test_bad_numbers_are_refused(
    harness: ModuleType, arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        harness.main(["grid", *arguments])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def store_error(harness: ModuleType, capsys: pytest.CaptureFixture[str], *arguments: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        harness.main(list(arguments))
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_bad_stores_are_refused(harness: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = ["--runs", str(tmp_path)]

    def refused(store: str, command: str = "grid") -> str:
        return store_error(harness, capsys, command, "--store", store, *runs)

    assert "grid: error: --store: 'not a url' is not a database URL; expected sqlite:///" in refused("not a url")
    assert "--store: 'mysql' databases are not supported; expected sqlite:///" in refused("mysql://user@host/db")
    assert "in-memory SQLite database is private to one process" in refused("sqlite://")
    assert "in-memory SQLite database is private to one process" in refused("sqlite:///:memory:")
    missing = tmp_path / "no such folder" / "grid.db"
    assert f"--store: the folder of the SQLite file, {missing.parent}, does not exist" in refused(f"sqlite:///{missing}")
    text_file = tmp_path / "notes.db"
    text_file.write_text("not a database, just notes\n" * 100)
    assert f"--store: cannot use sqlite:///{text_file}: " in refused(f"sqlite:///{text_file}")
    assert "file is not a database" in refused(f"sqlite:///{text_file}")
    assert text_file.read_text().startswith("not a database")  # left as it was
    # A closed port: the error names the store without its password
    error = refused("postgresql+psycopg://bench:s3cret@127.0.0.1:9/bench")
    assert "--store: cannot use postgresql+psycopg://bench:***@127.0.0.1:9/bench: " in error and "s3cret" not in error
    assert "postgresql+psycopg://bench:***@127.0.0.1:9/bench" in refused("postgresql://bench:s3cret@127.0.0.1:9/bench")
    # status and export read a grid: they never create an empty one
    absent = tmp_path / "absent.db"
    assert f"status: error: --store: {absent} does not exist (a grid command creates it)" in refused(
        f"sqlite:///{absent}", "status"
    )
    assert not absent.exists()
    empty = tmp_path / "empty.db"
    with sa.create_engine(f"sqlite:///{empty}").begin() as connection:
        connection.execute(sa.text("CREATE TABLE other (x INTEGER)"))
    assert "holds no grid (no table deep_sarsa_grid_jobs)" in refused(f"sqlite:///{empty}", "export")
    foreign = tmp_path / "foreign.db"
    with sa.create_engine(f"sqlite:///{foreign}").begin() as connection:
        connection.execute(sa.text("CREATE TABLE deep_sarsa_grid_jobs (id INTEGER PRIMARY KEY, task TEXT)"))
    assert "lacks the columns algorithm, attempts" in refused(f"sqlite:///{foreign}")


def test_a_store_with_other_evaluation_episodes_is_refused(
    harness: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'grid.db'}")
    store.add(grid_jobs(1))  # 2 evaluation episodes
    store.close()
    error = store_error(harness, capsys, "grid", "--tasks", TASK, "--seeds", "1", "--episodes", "5", "--runs", str(tmp_path))
    assert "--episodes: the store sqlite:///" in error and "has CartPole-v1 dqn seed 0 with 2 evaluation episodes" in error
    assert "this grid asks for 5" in error


def test_a_runs_folder_json_that_is_not_a_result_is_named(harness: ModuleType, tmp_path: Path) -> None:
    path = harness.job_path(tmp_path, TASK, "dqn", 0)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"seed0.json: not a readable result .*delete it to run the job again"):
        harness.finished_here(tmp_path, grid_jobs(1))
    path.write_text(json.dumps({"task": TASK, "algorithm": "dqn", "seed": 3}))
    with pytest.raises(ValueError, match=r"seed0.json: not the result of CartPole-v1 dqn seed 0"):
        harness.finished_here(tmp_path, grid_jobs(1))


def test_the_lease_must_be_positive(sqlite_url: str) -> None:
    for lease in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(StoreError, match="--lease: expected a positive number of seconds"):
            JobStore(sqlite_url, lease=lease)
