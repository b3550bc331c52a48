"""Tuning with Optuna through ``python -m deep_sarsa.zoo``: one study shared by several processes (SQLite, journal
file, PostgreSQL); and the PostgreSQL fixture the shared-store tests use."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from deep_sarsa.zoo.__main__ import main


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


# --- one study, two worker processes -------------------------------------------------------------------------------

N_TRIALS = 3  # per worker


def _start_worker(storage: str, study: str, folder: Path, seed: int) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-m", "deep_sarsa.zoo", "train", "--algo", "deep_sarsa", "--env", "CartPole-v1",
        "--optimize", "--storage", storage, "--study-name", study, "--n-trials", str(N_TRIALS), "-n", "200",
        "--n-evaluations", "1", "--eval-episodes", "1", "--sampler", "random", "--pruner", "none", "--no-optim-plots",
        "--seed", str(seed), "-f", str(folder / f"worker{seed}"), "--verbose", "0",
        "--hyperparams", "buffer_size:64",  # so batches of at most 64 (the sampler keeps batch_size <= buffer_size)
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)


def _run_two_workers(storage: str, study: str, folder: Path) -> list[optuna.trial.FrozenTrial]:
    workers = [_start_worker(storage, study, folder, seed) for seed in (1, 2)]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-3000:]
    opened = JournalStorage(JournalFileBackend(storage)) if storage.endswith(".log") else storage
    return optuna.load_study(study_name=study, storage=opened).trials


def _check_shared_study(trials: list[optuna.trial.FrozenTrial]) -> None:
    # nothing lost: every trial of both workers is in the one study, complete, numbered once
    assert len(trials) == 2 * N_TRIALS
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * (2 * N_TRIALS)
    assert sorted(trial.number for trial in trials) == list(range(2 * N_TRIALS))
    assert all(trial.value is not None for trial in trials)
    # both workers ran trials, N_TRIALS each, at the same time (their spans of trials overlap)
    by_worker: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for trial in trials:
        by_worker.setdefault(trial.user_attrs["worker"], []).append(trial)
    assert sorted(len(own) for own in by_worker.values()) == [N_TRIALS, N_TRIALS], by_worker.keys()
    spans = [
        (min(t.datetime_start for t in own if t.datetime_start), max(t.datetime_complete for t in own if t.datetime_complete))
        for own in by_worker.values()
    ]
    (first_start, first_end), (second_start, second_end) = spans
    assert first_start < second_end and second_start < first_end, spans


def test_two_workers_share_one_study_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    # The study is created first: workers started together on a fresh database race in Optuna's table creation
    assert main(["create-study", "--storage", postgres_url, "--study-name", "cartpole"]) == 0
    _check_shared_study(_run_two_workers(postgres_url, "cartpole", tmp_path))


def test_two_workers_share_one_study_in_a_journal_file(tmp_path: Path) -> None:
    storage = str(tmp_path / "study.log")
    assert main(["create-study", "--storage", storage, "--study-name", "cartpole"]) == 0
    _check_shared_study(_run_two_workers(storage, "cartpole", tmp_path))


@pytest.mark.slow
def test_two_workers_share_one_study_in_sqlite(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["create-study", "--storage", storage, "--study-name", "cartpole"]) == 0
    _check_shared_study(_run_two_workers(storage, "cartpole", tmp_path))


def test_create_study_is_idempotent_and_checks_its_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["create-study", "--storage", storage, "--study-name", "s"]) == 0
    assert "study 's' created" in capsys.readouterr().out
    assert main(["create-study", "--storage", storage, "--study-name", "s"]) == 0
    assert "study 's' already exists" in capsys.readouterr().out
    assert main(["create-study", "--storage", storage, "--study-name", "s", "--direction", "minimize"]) == 2
    assert "exists with direction ['maximize'], not minimize" in capsys.readouterr().err
    assert main(["create-study", "--storage", "postgresql://u:p@127.0.0.1/db", "--study-name", "s"]) == 2
    assert "write postgresql+psycopg://" in capsys.readouterr().err
    assert main(["create-study", "--storage", "study.txt", "--study-name", "s"]) == 2
    assert "journal file ending in .log" in capsys.readouterr().err
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 0


@pytest.mark.slow
def test_a_worker_killed_mid_study_loses_only_its_running_trial(tmp_path: Path) -> None:
    storage = str(tmp_path / "study.log")
    assert main(["create-study", "--storage", storage, "--study-name", "s"]) == 0
    opened = JournalStorage(JournalFileBackend(storage))
    victim, survivor = (_start_worker(storage, "s", tmp_path, seed) for seed in (1, 2))
    try:
        # SIGKILL the first worker as soon as it has finished a trial (in the middle of its next one)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and victim.poll() is None:
            trials = optuna.load_study(study_name="s", storage=opened).trials
            own = [t for t in trials if t.user_attrs.get("worker", "").endswith(f":{victim.pid}")]
            if any(t.state == TrialState.COMPLETE for t in own):
                break
            time.sleep(0.05)
        assert victim.poll() is None, "the worker to kill ended before it could be killed"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        output = survivor.communicate(timeout=300)[0]
        assert survivor.returncode == 0, output[-3000:]
    finally:
        for worker in (victim, survivor):
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    trials = optuna.load_study(study_name="s", storage=opened).trials
    killed = [t for t in trials if t.user_attrs.get("worker", "").endswith(f":{victim.pid}")]
    others = [t for t in trials if t not in killed]
    assert [t.state for t in others] == [TrialState.COMPLETE] * N_TRIALS  # the other worker's trials, all there
    assert sum(t.state == TrialState.COMPLETE for t in killed) >= 1
    assert all(t.state in (TrialState.COMPLETE, TrialState.RUNNING) for t in killed)
    assert sum(t.state == TrialState.RUNNING for t in killed) <= 1  # at most the trial it was in
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    # the study goes on: a new worker adds its trials after the dead one's
    replacement = _start_worker(storage, "s", tmp_path, 3)
    output = replacement.communicate(timeout=300)[0]
    assert replacement.returncode == 0, output[-3000:]
    after = optuna.load_study(study_name="s", storage=opened).trials
    assert len(after) == len(trials) + N_TRIALS
    assert sum(t.state == TrialState.COMPLETE for t in after) == sum(t.state == TrialState.COMPLETE for t in trials) + N_TRIALS
