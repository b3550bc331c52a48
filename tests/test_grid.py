"""
benchmarks/harness.py's grid on a real Dask cluster, on 127.0.0.1 only: a local cluster and a ``dask scheduler`` with
two ``dask worker`` processes started here run every job once; a worker SIGKILLed in the middle of a job has its job
rescheduled and recorded once; a SIGKILLed driver's command, run again, runs only what was not finished; an
unreachable scheduler is a one-line error naming its address. The jobs are :func:`fake_job`, a fraction of a second each.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).parent.parent
BENCHMARKS = ROOT / "benchmarks"
#: the environment of the processes started here: the fake job importable, one thread each
PYTHONPATH = os.pathsep.join([str(Path(__file__).parent), str(BENCHMARKS), str(ROOT)])
#: the grid of the tests on the Dask CLI cluster: 3 algorithms x 2 seeds
SIX = ["--tasks", "CartPole-v1", "--algorithms", "dqn", "sarsa-sampled", "sarsa-expected", "--seeds", "2", "--episodes", "1"]


def fake_job(task: str, algorithm: str, seed: int, episodes: int) -> dict[str, Any]:
    """
    A job in place of training: appends ``PID OMP_NUM_THREADS`` to ``$GRID_TEST_MARKERS/TASK-ALGORITHM-SEED`` as it
    starts (one line per run), sleeps ``$GRID_TEST_SECONDS``, raises where the job is ``$GRID_TEST_FAIL``.
    """
    name = f"{task}-{algorithm}-{seed}"
    with open(Path(os.environ["GRID_TEST_MARKERS"]) / name, "a") as file:
        file.write(f"{os.getpid()} {os.environ.get('OMP_NUM_THREADS')}\n")
    time.sleep(float(os.environ.get("GRID_TEST_SECONDS", "0.2")))
    if os.environ.get("GRID_TEST_FAIL") == name:
        raise RuntimeError(f"{name} is broken")
    curve = [[100, float(seed), 0.0]]
    return dict(task=task, algorithm=algorithm, seed=seed, episodes=episodes, curve=curve, train_seconds=0.5, pid=os.getpid())


def runs_of(markers: Path) -> dict[str, list[str]]:
    """Each job that started: the ``PID OMP_NUM_THREADS`` line of each of its runs."""
    return {path.name: path.read_text().splitlines() for path in sorted(markers.iterdir())}


@pytest.fixture
def harness() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    import harness

    return harness


def test_a_local_cluster_runs_every_job_once(
    harness: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    markers, runs = tmp_path / "markers", tmp_path / "runs"
    markers.mkdir()
    monkeypatch.setenv("GRID_TEST_MARKERS", str(markers))  # the worker processes inherit it
    monkeypatch.setenv("GRID_TEST_FAIL", "CartPole-v1-sarsa-stored-1")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the workers get 1 all the same
    grid = ["grid", "--tasks", "CartPole-v1", "--seeds", "2", "--episodes", "1", "--runs", str(runs), "--workers", "2"]

    # 8 jobs on 2 worker processes; the broken one raises, is tried once more (--retries 1), and is reported
    assert harness.main(grid, job=fake_job) == 1
    out = capsys.readouterr().out
    assert "8 jobs in this grid, 0 done already, 8 to run on a local cluster of 2 worker processes" in out
    assert sum(line.startswith("[") for line in out.splitlines()) == 8 and "[8/8]" in out
    assert "FAILED CartPole-v1 sarsa-stored seed 1: RuntimeError: CartPole-v1-sarsa-stored-1 is broken" in out
    assert "7 of 8 jobs done (0 before, 7 now), 1 failed (the same command runs them again):" in out
    started = runs_of(markers)
    assert len(started.pop("CartPole-v1-sarsa-stored-1")) == 2, "the broken job: once and one retry"
    assert len(started) == 7 and all(len(lines) == 1 for lines in started.values()), "every other job ran once"
    lines = [line.split() for lines in runs_of(markers).values() for line in lines]
    assert {omp for _, omp in lines} == {"1"} and len({pid for pid, _ in lines}) == 2, "both workers, one thread each"
    results = sorted(runs.glob("*/*/seed*.json"))
    assert len(results) == 7
    for path in results:
        result = json.loads(path.read_text())
        assert path == harness.job_path(runs, result["task"], result["algorithm"], result["seed"])
        assert result["curve"] == [[100, float(result["seed"]), 0.0]] and result["episodes"] == 1

    # the same command runs the failed job only (it is fixed now), then nothing
    monkeypatch.delenv("GRID_TEST_FAIL")
    assert harness.main(grid, job=fake_job) == 0
    out = capsys.readouterr().out
    assert "8 jobs in this grid, 7 done already, 1 to run" in out and "8 of 8 jobs done (7 before, 1 now)" in out
    assert len(runs_of(markers)["CartPole-v1-sarsa-stored-1"]) == 3
    assert harness.main(grid, job=fake_job) == 0
    assert "8 jobs in this grid, 8 done already, 0 to run" in capsys.readouterr().out
    assert sum(len(lines) for lines in runs_of(markers).values()) == 10, "nothing ran again"


def test_a_local_cluster_slow_to_close_does_not_fail_a_finished_grid(
    harness: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # seen on a loaded 2-core machine: a worker process slow to exit, and LocalCluster.close raising TimeoutError
    # after every result was written; the grid's exit status is its jobs', not the shutdown's
    from distributed import LocalCluster

    close = LocalCluster.close
    closed: list[bool] = []

    def slow_close(self: LocalCluster, timeout: float | None = None) -> None:
        close(self, timeout)
        closed.append(True)
        raise TimeoutError

    monkeypatch.setattr(LocalCluster, "close", slow_close)
    markers, runs = tmp_path / "markers", tmp_path / "runs"
    markers.mkdir()
    monkeypatch.setenv("GRID_TEST_MARKERS", str(markers))
    grid = ["grid", "--tasks", "CartPole-v1", "--algorithms", "dqn", "--seeds", "2", "--runs", str(runs), "--workers", "1"]
    assert harness.main(grid, job=fake_job) == 0
    assert closed and "2 of 2 jobs done (0 before, 2 now)" in capsys.readouterr().out
    assert len(list(runs.glob("CartPole-v1/dqn/seed*.json"))) == 2


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """
    ``dask scheduler --host 127.0.0.1`` and two ``dask worker`` processes (a nanny each, one thread), their jobs 1 s
    each; yields the scheduler's address and the folder of the jobs' markers (emptied by each test).
    """
    folder = tmp_path_factory.mktemp("cluster")
    markers = folder / "markers"
    markers.mkdir()
    environment = {**os.environ, "PYTHONPATH": PYTHONPATH, "OMP_NUM_THREADS": "1"}
    environment |= {"GRID_TEST_MARKERS": str(markers), "GRID_TEST_SECONDS": "1.0"}
    dask = str(Path(sys.executable).parent / "dask")
    loopback = ["--host", "127.0.0.1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
    file = folder / "scheduler.json"
    log = (folder / "cluster.log").open("w")  # the servers' log, not the test's output
    scheduler = [dask, "scheduler", *loopback, "--port", "0", "--scheduler-file", str(file)]
    processes = [subprocess.Popen(scheduler, env=environment, stdout=log, stderr=log)]
    try:
        deadline = time.monotonic() + 60
        while not file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(file.read_text())["address"]
        worker = [dask, "worker", address, *loopback, "--nthreads", "1", "--nworkers", "1", "--death-timeout", "60"]
        processes += [subprocess.Popen(worker, env=environment, stdout=log, stderr=log) for _ in range(2)]
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address, markers
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def start_driver(address: str, runs: Path) -> subprocess.Popen[str]:
    """``harness.py grid`` (six jobs of :func:`fake_job`) on the scheduler at ``address``, as a process of its own."""
    code = "import sys, harness, test_grid; sys.exit(harness.main(sys.argv[1:], job=test_grid.fake_job))"
    command = [sys.executable, "-c", code, "grid", *SIX, "--runs", str(runs), "--scheduler", address]
    environment = {**os.environ, "PYTHONPATH": PYTHONPATH, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)


def wait_for(condition: Any, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def progress_lines(output: str) -> dict[str, int]:
    """How many progress lines the driver printed for each job."""
    counts: dict[str, int] = {}
    for line in output.splitlines():
        if line.startswith("[") and "] CartPole-v1 " in line:
            job = line.split("] ", 1)[1].split(":")[0]
            counts[job] = counts.get(job, 0) + 1
    return counts


def read_until(driver: subprocess.Popen[str], results: int) -> str:
    """The driver's output up to its ``results``-th progress line (it has written that many results by then)."""
    assert driver.stdout is not None
    output = ""
    while sum(line.startswith("[") for line in output.splitlines()) < results:
        line = driver.stdout.readline()
        assert line, f"the driver ended early: {output}"
        output += line
    return output


def last_started(markers: Path) -> tuple[str, int]:
    """The job that started last (it sleeps 1 s: it is running) and the worker process that runs it."""
    name = max(runs_of(markers), key=lambda name: (markers / name).stat().st_mtime)
    return name, int(runs_of(markers)[name][-1].split()[0])


def test_a_worker_sigkilled_in_the_middle_of_a_job(cli_cluster: tuple[str, Path], tmp_path: Path) -> None:
    address, markers = cli_cluster
    for path in markers.iterdir():
        path.unlink()
    driver = start_driver(address, tmp_path / "runs")
    try:
        # two results are in: the two jobs that started next are running (1 s each)
        output = read_until(driver, 2)
        victim, pid = last_started(markers)
        os.kill(pid, signal.SIGKILL)  # its nanny starts a new worker process; the scheduler gives the job to a worker
        output += driver.communicate(timeout=120)[0]
    finally:
        driver.kill()
    assert driver.returncode == 0, output
    assert "6 of 6 jobs done (0 before, 6 now)" in output, output
    runs = runs_of(markers)
    assert len(runs) == 6 and len(list((tmp_path / "runs").rglob("seed*.json"))) == 6
    assert len(runs[victim]) == 2 and runs[victim][0].split()[0] == str(pid) != runs[victim][1].split()[0], runs
    assert all(len(lines) == 1 for name, lines in runs.items() if name != victim), runs
    assert sorted(progress_lines(output).values()) == [1] * 6, "one result per job: the killed one recorded once"


def test_a_sigkilled_driver_run_again_reruns_nothing_finished(cli_cluster: tuple[str, Path], tmp_path: Path) -> None:
    address, markers = cli_cluster
    for path in markers.iterdir():
        path.unlink()
    runs = tmp_path / "runs"
    driver = start_driver(address, runs)
    try:
        output = read_until(driver, 2)
        driver.kill()  # SIGKILL, with two results written and two jobs running
        driver.wait(timeout=30)
    finally:
        driver.kill()
    finished = {path.relative_to(runs) for path in runs.glob("*/*/seed*.json")}
    assert len(finished) == 2, output
    before = runs_of(markers)
    again = start_driver(address, runs)
    try:
        output = again.communicate(timeout=120)[0]
    finally:
        again.kill()
    assert again.returncode == 0, output
    assert "6 jobs in this grid, 2 done already, 4 to run on tcp://127.0.0.1:" in output
    assert "6 of 6 jobs done (2 before, 4 now)" in output and len(progress_lines(output)) == 4, output
    assert len(list(runs.glob("*/*/seed*.json"))) == 6
    after = runs_of(markers)
    for path in finished:  # TASK/ALGORITHM/seedN.json: its job did not run again
        name = f"{path.parts[0]}-{path.parts[1]}-{path.stem.removeprefix('seed')}"
        assert after[name] == before[name] and len(after[name]) == 1, (name, after)
    assert len(after) == 6


def test_an_unreachable_scheduler_is_a_one_line_error_naming_it(
    harness: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import dask

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), pytest.raises(SystemExit) as exit_:
        harness.main(["grid", *SIX, "--runs", str(tmp_path), "--scheduler", address], job=fake_job)
    assert exit_.value.code == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and " grid: error: cannot reach the Dask scheduler at " in error, error
    assert address in error and "Timed out" in error


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--seeds", "0"], "--seeds: expected a positive whole number, got '0'"),
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"], "not allowed with argument"),
        (["--tasks", "Pong-v5"], "--tasks: invalid choice: 'Pong-v5'"),
    ],
)
def test_bad_arguments_are_refused(
    harness: ModuleType, arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        harness.main(["grid", *arguments])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_runs_folder_json_that_is_not_a_result_is_named(
    harness: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = harness.job_path(tmp_path, "CartPole-v1", "dqn", 1)
    path.parent.mkdir(parents=True)
    wrong = "not the result of CartPole-v1 dqn seed 1"
    for text, expected in (("{", "not a readable result"), ('{"task": "Acrobot-v1"}', wrong)):
        path.write_text(text)
        with pytest.raises(SystemExit) as exit_:
            harness.main(["grid", *SIX, "--runs", str(tmp_path)], job=fake_job)
        assert exit_.value.code == 2 and f"{path}: {expected}" in capsys.readouterr().err
