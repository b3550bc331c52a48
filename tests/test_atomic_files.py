"""
``save`` and ``save_replay_buffer`` are atomic (deep_sarsa.atomic.atomic_path): threads and processes
saving one path, permission bits, symbolic links, the temporary files of killed processes, a full
disk (a real 2 MB tmpfs where it can be mounted, else a writer failing with ENOSPC) and SIGKILL.
"""

import errno
import hashlib
import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import disk
import numpy as np
import pytest
import torch as th

from deep_sarsa import DeepSARSA
from deep_sarsa.files import STALE_AFTER_S, TEMPORARY_PATTERN, remove_stale_temporaries, temporary_path

SMALL: dict[str, Any] = dict(policy_kwargs=dict(net_arch=[8]), learning_starts=10, buffer_size=500, device="cpu")
ROOT = pathlib.Path(__file__).resolve().parents[1]


def parameter_hash(model: DeepSARSA) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.policy.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.cpu().numpy().tobytes())
    return digest.hexdigest()


def buffer_hash(model: DeepSARSA) -> str:
    buffer = model.replay_buffer
    assert buffer is not None
    digest = hashlib.sha256(str(buffer.pos).encode())
    for array in (buffer.observations, buffer.actions, buffer.rewards, buffer.dones):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def trained(seed: int, steps: int = 50, **kwargs: Any) -> DeepSARSA:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", seed=seed, **{**SMALL, **kwargs})
    model.learn(steps)
    return model


def temporaries(folder: pathlib.Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if TEMPORARY_PATTERN.match(path.name))


def test_threads_saving_one_path(tmp_path: pathlib.Path) -> None:
    """4 threads x 8 saves of two different models on one path, a reader loading it throughout."""
    models = [trained(0), trained(1)]
    expected = {parameter_hash(model) for model in models}
    assert len(expected) == 2
    target = tmp_path / "model.zip"
    models[0].save(target)
    errors: list[BaseException] = []
    seen: set[str] = set()
    done = threading.Event()

    def writer(index: int) -> None:
        try:
            for _ in range(8):
                models[index % 2].save(target)
        except BaseException as error:  # collected: the test fails on any
            errors.append(error)

    def reader() -> None:
        try:
            while not done.is_set():
                seen.add(parameter_hash(DeepSARSA.load(target, device="cpu")))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(4)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()
    assert errors == []
    assert seen and seen <= expected  # every published file was complete and one of the two
    assert parameter_hash(DeepSARSA.load(target, device="cpu")) in expected
    assert temporaries(tmp_path) == []


def test_threads_saving_one_replay_buffer(tmp_path: pathlib.Path) -> None:
    models = [trained(0, steps=60), trained(1, steps=90)]
    expected = {buffer_hash(model) for model in models}
    target = tmp_path / "buffer.pkl"
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            for _ in range(8):
                models[index % 2].save_replay_buffer(target)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    reader = trained(2, steps=0)
    seen = set()
    while any(thread.is_alive() for thread in threads):
        if target.exists():
            reader.load_replay_buffer(target)
            seen.add(buffer_hash(reader))
    for thread in threads:
        thread.join()
    assert errors == []
    assert seen <= expected
    assert temporaries(tmp_path) == []


WRITER = textwrap.dedent(
    """
    import sys
    from deep_sarsa import DeepSARSA
    model = DeepSARSA.load(sys.argv[1], device="cpu")
    print("ready", flush=True)
    for _ in range(int(sys.argv[3])):
        model.save(sys.argv[2])
    """
)


def test_processes_saving_one_path(tmp_path: pathlib.Path) -> None:
    """3 processes x 10 saves of three models on one path; the test loads the file throughout."""
    sources = []
    expected = set()
    for seed in range(3):
        model = trained(seed)
        model.save(tmp_path / f"source{seed}.zip")
        sources.append(tmp_path / f"source{seed}.zip")
        expected.add(parameter_hash(model))
    target = tmp_path / "shared" / "model.zip"
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(source), str(target), "10"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        for source in sources
    ]
    seen = set()
    while any(process.poll() is None for process in processes):
        if target.exists():
            seen.add(parameter_hash(DeepSARSA.load(target, device="cpu")))
    for process in processes:
        _, stderr = process.communicate()
        assert process.returncode == 0, stderr
    seen.add(parameter_hash(DeepSARSA.load(target, device="cpu")))
    assert seen <= expected
    assert temporaries(target.parent) == []


@pytest.mark.parametrize("kind", ["model", "buffer"])
def test_permission_bits_are_kept(tmp_path: pathlib.Path, kind: str) -> None:
    model = trained(0)
    target = tmp_path / ("model.zip" if kind == "model" else "buffer.pkl")
    save = model.save if kind == "model" else model.save_replay_buffer
    save(target)
    os.chmod(target, 0o600)
    save(target)
    assert target.stat().st_mode & 0o777 == 0o600
    os.chmod(target, 0o640)
    save(target)
    assert target.stat().st_mode & 0o777 == 0o640


def test_a_symbolic_link_is_written_through(tmp_path: pathlib.Path) -> None:
    real = tmp_path / "runs" / "v3" / "model.zip"
    old, new = trained(0), trained(1)
    old.save(real)
    link = tmp_path / "latest.zip"
    link.symlink_to(os.path.relpath(real, tmp_path))  # a relative link
    chain = tmp_path / "current.zip"
    chain.symlink_to(link)  # a link to the link
    new.save(link)
    assert link.is_symlink() and os.readlink(link) == os.path.relpath(real, tmp_path)
    assert parameter_hash(DeepSARSA.load(real, device="cpu")) == parameter_hash(new)
    old.save(chain)
    assert chain.is_symlink() and link.is_symlink()
    assert parameter_hash(DeepSARSA.load(real, device="cpu")) == parameter_hash(old)
    assert temporaries(tmp_path) == [] and temporaries(real.parent) == []
    # a replay buffer too
    buffer_link = tmp_path / "buffer.pkl"
    buffer_link.symlink_to(real.parent / "buffer.pkl")  # dangling: the file is created where it points
    new.save_replay_buffer(buffer_link)
    assert buffer_link.is_symlink() and (real.parent / "buffer.pkl").is_file()


@pytest.fixture
def dead_pid() -> int:
    """The process id of a process that has exited (and been waited for)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    process = subprocess.Popen(["sleep", "300"])
    yield process.pid
    process.kill()
    process.wait()


def make_temporary(folder: pathlib.Path, name: str, pid: int, age_s: float) -> pathlib.Path:
    path = folder / f".{name}.{pid}.{uuid.uuid4().hex[:12]}.tmp"
    path.write_bytes(b"x" * 1000)
    moment = time.time() - age_s
    os.utime(path, (moment, moment))
    return path


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: pathlib.Path, dead_pid: int, live_pid: int) -> None:
    old = 2 * STALE_AFTER_S
    dead = [make_temporary(tmp_path, "model.zip", dead_pid, old), make_temporary(tmp_path, "replay_buffer.pkl", dead_pid, old)]
    kept = [
        make_temporary(tmp_path, "model.zip", live_pid, old),  # a live process's, however old
        make_temporary(tmp_path, "model.zip", os.getpid(), old),  # this process's (another thread may be writing it)
        make_temporary(tmp_path, "model.zip", dead_pid, 0),  # modified just now: maybe another machine's process
    ]
    others = [tmp_path / ".model.zip.123.tmp", tmp_path / "notes.tmp", tmp_path / f".x.{dead_pid}.ABCDEF123456.tmp"]
    for path in others:
        path.write_text("not ours")
        os.utime(path, (time.time() - old, time.time() - old))
    folder = tmp_path / f".model.zip.{dead_pid}.{uuid.uuid4().hex[:12]}.tmp"  # not a plain file
    folder.mkdir()
    os.utime(folder, (time.time() - old, time.time() - old))
    trained(0).save(tmp_path / "model.zip")
    for path in dead:
        assert not path.exists(), path
    for path in [*kept, *others, folder]:
        assert path.exists(), path
    assert remove_stale_temporaries(tmp_path) == []  # nothing left to remove


def test_temporary_names_match_the_pattern(tmp_path: pathlib.Path) -> None:
    name = temporary_path(tmp_path / "model.zip").name
    match = TEMPORARY_PATTERN.match(name)
    assert match is not None and match["name"] == "model.zip" and int(match["pid"]) == os.getpid()
    assert temporary_path(tmp_path / "model.zip") != temporary_path(tmp_path / "model.zip")


@pytest.fixture(params=["tmpfs", "fake"])
def small_disk(tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> Iterator[pathlib.Path | None]:
    """A 2 MB tmpfs (we may be root), or ``None`` where it cannot be mounted and for the "fake" case (a failing writer)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if request.param == "fake":
        yield None
        return
    with disk.tmpfs(mount_point, "2m") as problem:
        yield mount_point if problem is None else None


def fill(folder: pathlib.Path, leave_bytes: int) -> pathlib.Path:
    """Fill the file system of ``folder`` but ``leave_bytes``."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    filler = folder / "filler"
    with open(filler, "wb") as file:
        file.write(b"\0" * max(free - leave_bytes, 0))
    return filler


def no_space(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("kind", ["model", "buffer"])
def test_a_full_disk_leaves_the_previous_file(
    small_disk: pathlib.Path | None, tmp_path: pathlib.Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a real 2 MB tmpfs where it can be mounted; else (not root, no mount) a writer failing with ENOSPC."""
    folder = small_disk if small_disk is not None else tmp_path / "disk"
    old = trained(0, steps=200, buffer_size=12_000)  # a buffer file of about 600 kB
    new = trained(1, steps=300, buffer_size=12_000)
    name = "model.zip" if kind == "model" else "buffer.pkl"
    target = folder / name
    (old.save if kind == "model" else old.save_replay_buffer)(target)
    before = target.read_bytes()
    if small_disk is not None:
        filler = fill(folder, leave_bytes=4096 if kind == "model" else 200_000)
    else:
        monkeypatch.setattr(th, "save", no_space)
        monkeypatch.setattr("pickle.dump", no_space)
    with pytest.raises(OSError, match=rf"{name}: not saved \(no space left on the device\); the previous file") as caught:
        (new.save if kind == "model" else new.save_replay_buffer)(target)
    assert caught.value.errno == errno.ENOSPC
    assert target.read_bytes() == before
    assert temporaries(folder) == []  # the partial file is gone: its space is free again
    monkeypatch.undo()
    if small_disk is not None:
        filler.unlink()
    (new.save if kind == "model" else new.save_replay_buffer)(target)  # with room again, it saves
    if kind == "model":
        assert parameter_hash(DeepSARSA.load(target, device="cpu")) == parameter_hash(new)
    else:
        reader = trained(2, steps=0, buffer_size=12_000)
        reader.load_replay_buffer(target)
        assert buffer_hash(reader) == buffer_hash(new)


def test_an_error_names_the_file_and_keeps_its_type(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    model = trained(0)
    (folder / "model.zip").mkdir()
    with pytest.raises(IsADirectoryError, match=r"model.zip is a folder"):
        model.save(folder / "model.zip")
    (folder / "model.zip").rmdir()
    if os.geteuid() != 0:  # root writes anywhere
        folder.chmod(0o500)
        with pytest.raises(PermissionError, match=r"model.zip: not saved"):
            model.save(folder / "model.zip")


#: Loads the new model and buffer, then writes one of them (argv[1]: ``save`` or ``save_replay_buffer``) over the
#: target in a loop, without end
LOOP = textwrap.dedent(
    """
    import sys
    from deep_sarsa import DeepSARSA
    model = DeepSARSA.load(sys.argv[2], device="cpu")
    model.load_replay_buffer(sys.argv[3])
    save = getattr(model, sys.argv[1])
    print("ready", flush=True)
    while True:
        save(sys.argv[4])
    """
)


@pytest.fixture(scope="module")
def old_and_new(tmp_path_factory: pytest.TempPathFactory) -> tuple[DeepSARSA, DeepSARSA, pathlib.Path]:
    """Two models whose parameters, steps and buffers differ, the new one saved (model and buffer) in a folder."""
    old, new = trained(0, steps=300, buffer_size=20_000), trained(1, steps=2000, buffer_size=20_000)
    folder = tmp_path_factory.mktemp("new")
    new.save(folder / "new.zip")
    new.save_replay_buffer(folder / "new.pkl")
    return old, new, folder


@pytest.mark.parametrize("save", ["save", "save_replay_buffer"])
def test_sigkill_during_save_leaves_the_old_or_the_new_file(
    tmp_path: pathlib.Path, save: str, old_and_new: tuple[DeepSARSA, DeepSARSA, pathlib.Path]
) -> None:
    """
    A process writing the new model zip (``save``) or replay buffer over the old one in a loop is SIGKILLed at a
    random moment: what is left loads (``DeepSARSA.load``, ``load_replay_buffer``) and is the old or the new content,
    whole. DEEP_SARSA_SAVE_KILLS kills (3 by default, then on until one lands mid-write), DEEP_SARSA_KILL_SEED
    repeats the delays.
    """
    old, new, folder = old_and_new
    if save == "save":
        target = tmp_path / "run" / "model.zip"

        def content(model: DeepSARSA) -> tuple[str, int]:
            return parameter_hash(model), model.num_timesteps

        def load() -> tuple[str, int]:
            return content(DeepSARSA.load(target, device="cpu"))
    else:
        target = tmp_path / "run" / "buffer.pkl"
        reader = trained(2, steps=0, buffer_size=20_000)

        def content(model: DeepSARSA) -> tuple[str, int]:
            return buffer_hash(model), model.replay_buffer.pos  # type: ignore[union-attr]

        def load() -> tuple[str, int]:
            reader.load_replay_buffer(target)
            return content(reader)

    expected = {content(old): "old", content(new): "new"}
    assert len(expected) == 2
    seed = int(os.environ.get("DEEP_SARSA_KILL_SEED", random.SystemRandom().randrange(2**32)))
    kills = int(os.environ.get("DEEP_SARSA_SAVE_KILLS", "3"))
    chance = random.Random(seed)
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    interrupted = 0
    for trial in range(kills + 9):
        if trial >= kills and interrupted:
            break
        getattr(old, save)(target)
        process = subprocess.Popen(
            [sys.executable, "-c", LOOP, save, str(folder / "new.zip"), str(folder / "new.pkl"), str(target)],
            stdout=subprocess.PIPE,
            env=environment,
        )
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        time.sleep(chance.uniform(0.0, 0.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert load() in expected, f"seed {seed}, kill {trial}: neither the old nor the new content"  # and loadable
        left = temporaries(target.parent)
        interrupted += bool(left)
        for path in left:  # as they are once older than STALE_AFTER_S: the next save removes them
            os.utime(target.parent / path, (time.time() - 2 * STALE_AFTER_S,) * 2)
    assert interrupted >= 1, f"seed {seed}: no kill landed during a write"
    getattr(old, save)(target)
    assert temporaries(target.parent) == []
