"""
Checkpoints written as a whole (generation folders swapped in by one rename, a signed manifest
checked on load, fallback to the previous complete one), a full disk, SaveOnInterrupt's
arguments and periodic checkpoints, and exact resumes with the envs users train on: Monitor logs
(make_vec_env(monitor_dir=...)), VecNormalize, VecFrameStack, masked envs, Dict observations.
"""

import csv
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import disk
import gymnasium as gym
import numpy as np
import pytest
import torch as th
from older_checkpoint import write_older_checkpoint
from sb3_contrib.common.wrappers import ActionMasker
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecFrameStack, VecNormalize

from deep_sarsa import DeepSARSA, UnsafeFileError, checkpoint
from deep_sarsa.callbacks import SaveOnInterrupt
from deep_sarsa.checkpoint import (
    BUFFER_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    STATE_FILE,
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from deep_sarsa.masking import toy_text_action_mask

SMALL = dict(
    learning_starts=40,
    buffer_size=300,
    batch_size=16,
    train_freq=4,
    target_update_interval=(2, "episode"),
    exploration_fraction=0.8,  # ε still decaying at every checkpoint
    policy_kwargs=dict(net_arch=[16]),
    seed=3,
)


def parameter_hash(model: DeepSARSA) -> str:
    digest = hashlib.sha256()
    for parameter in model.policy.state_dict().values():
        digest.update(parameter.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def cartpole(steps: int = 0, **kwargs: Any) -> DeepSARSA:
    env = make_vec_env("CartPole-v1", n_envs=2, seed=3, env_kwargs=dict(max_episode_steps=30))
    model = DeepSARSA("MlpPolicy", env, **{**SMALL, **kwargs})
    if steps:
        model.learn(steps)
    return model


def steps_of(folder: Path) -> list[int]:
    """The steps of the checkpoints in a folder, newest first."""
    return [int(generation.name.rsplit("-", 1)[1]) for generation in list_checkpoints(folder)]


# -- the layout: generations, swapped in whole ---------------------------------------------------


def test_checkpoints_are_generations_and_the_newest_keep_are_kept(tmp_path: Path) -> None:
    model = cartpole(64)
    for keep, steps in [(1, 64), (1, 128), (3, 192), (3, 256), (3, 320)]:
        if steps > model.num_timesteps:
            model.learn(steps - model.num_timesteps, reset_num_timesteps=False)
        assert save_checkpoint(model, tmp_path, keep=keep) == tmp_path
    assert steps_of(tmp_path) == [320, 256, 192]
    assert list_checkpoints(tmp_path)[0].name == "gen-00000005-step-320"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", *sorted(g.name for g in list_checkpoints(tmp_path))]
    manifest = json.loads((list_checkpoints(tmp_path)[0] / MANIFEST_FILE).read_text())
    assert manifest["num_timesteps"] == 320 and manifest["sequence"] == 5
    for name, entry in manifest["files"].items():
        content = (list_checkpoints(tmp_path)[0] / name).read_bytes()
        assert entry == {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    assert load_checkpoint(tmp_path).num_timesteps == 320
    assert load_checkpoint(list_checkpoints(tmp_path)[2]).num_timesteps == 192  # one generation, by its folder


def test_leftovers_of_killed_writers_are_ignored_by_loading_and_removed_by_the_next_save(tmp_path: Path) -> None:
    model = cartpole(64)
    save_checkpoint(model, tmp_path)
    unfinished = tmp_path / ".tmp-gen-00000002-step-64-999999-abcdef12"
    unfinished.mkdir()
    (unfinished / MODEL_FILE).write_bytes(b"half a zip")
    half_removed = tmp_path / ".old-gen-00000000-step-0-12345678"
    half_removed.mkdir()
    assert load_checkpoint(tmp_path).num_timesteps == 64
    save_checkpoint(model, tmp_path)
    assert not unfinished.exists() and not half_removed.exists()
    assert steps_of(tmp_path) == [64]


def test_a_folder_without_a_complete_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / ".tmp-gen-00000001-step-64-1-abcdef12").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no complete checkpoint \(only the unfinished \.tmp-gen-00000001"):
        load_checkpoint(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file: a checkpoint folder is expected"):
        save_checkpoint(cartpole(), tmp_path / "file")
    with pytest.raises(ValueError, match="keep must be a positive integer, got 0"):
        save_checkpoint(cartpole(), tmp_path, keep=0)


@pytest.fixture
def two_checkpoints(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """A folder with the checkpoints of steps 64 and 128 (both kept)."""
    model = cartpole(64)
    save_checkpoint(model, tmp_path, keep=2)
    model.learn(64, reset_num_timesteps=False)
    save_checkpoint(model, tmp_path, keep=2)
    newest, previous = list_checkpoints(tmp_path)
    yield tmp_path, newest, previous


@pytest.mark.parametrize("damage", ["truncated buffer", "missing state", "mixed state", "mixed model"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(
    damage: str, two_checkpoints: tuple[Path, Path, Path]
) -> None:
    folder, newest, previous = two_checkpoints
    if damage == "truncated buffer":
        name, problem = BUFFER_FILE, r"\d+ bytes, but the manifest records \d+"
        content = (newest / BUFFER_FILE).read_bytes()
        (newest / BUFFER_FILE).write_bytes(content[: len(content) // 2])
    elif damage == "missing state":
        name, problem = STATE_FILE, "missing .the manifest lists it.: the checkpoint is incomplete"
        (newest / STATE_FILE).unlink()
    else:  # a file of the older checkpoint in the newer one: the silent mix the manifest exists for
        name = STATE_FILE if damage == "mixed state" else MODEL_FILE
        problem = r"(\d+ bytes, but the manifest records|its SHA-256 is \w+, but the manifest records)"
        shutil.copy(previous / name, newest / name)
    with pytest.warns(
        UserWarning, match=rf"{newest / name}: {problem}.*loaded the previous complete one instead, {previous.name}"
    ):
        model = load_checkpoint(folder)
    assert model.num_timesteps == 64
    # The damaged one alone: a clear error naming the file, never a silent mix
    with pytest.raises(CheckpointError, match=rf"{newest / name}: {problem}"):
        load_checkpoint(newest)


def test_when_no_checkpoint_is_complete_every_problem_is_named(two_checkpoints: tuple[Path, Path, Path]) -> None:
    folder, newest, previous = two_checkpoints
    (newest / MODEL_FILE).write_bytes(b"")
    (previous / BUFFER_FILE).unlink()
    with pytest.raises(
        CheckpointError,
        match=rf"no checkpoint in it can be loaded: {newest / MODEL_FILE}: 0 bytes.*{previous / BUFFER_FILE}: missing",
    ):
        load_checkpoint(folder)


def test_a_changed_manifest_is_not_trusted_and_not_papered_over(two_checkpoints: tuple[Path, Path, Path]) -> None:
    folder, newest, _ = two_checkpoints
    manifest = json.loads((newest / MANIFEST_FILE).read_text())
    manifest["num_timesteps"] = 10**6
    (newest / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(UnsafeFileError, match=r"manifest.json: its signature does not match"):
        load_checkpoint(folder)  # no fallback past a signature that does not match
    assert load_checkpoint(folder, trusted=True).num_timesteps == 128  # the files still match their hashes


# -- writing fails: the previous checkpoint is intact ----------------------------------------------


def test_a_failing_write_leaves_the_previous_checkpoint_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = cartpole(64)
    save_checkpoint(model, tmp_path)
    model.learn(64, reset_num_timesteps=False)

    def disk_full(path: Any) -> None:
        with open(path, "wb") as file:
            file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save_replay_buffer", disk_full)
    with pytest.raises(
        OSError,
        match=r"the checkpoint at step 128 could not be written .*No space left on device.*gen-00000001-step-64 is intact",
    ) as info:
        save_checkpoint(model, tmp_path)
    assert info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "gen-00000001-step-64"]  # nothing half-written
    assert load_checkpoint(tmp_path).num_timesteps == 64


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (the simulated full disk above runs everywhere; this one needs root)."""
    with disk.small_disk(tmp_path, "1m") as mount_point:
        yield mount_point


def test_a_full_disk_leaves_the_previous_checkpoint_intact(small_disk: Path) -> None:
    model = cartpole(64, buffer_size=4000)  # about 220 kB of replay buffer: one checkpoint fits in 1 MiB
    folder = small_disk / "checkpoint"
    save_checkpoint(model, folder)
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * max(free - 150_000, 0))  # room for less than one more checkpoint
    model.learn(64, reset_num_timesteps=False)
    # (the words of the inner error are the OS's, or files.py's: "no space left on the device")
    with pytest.raises(OSError, match=r"(?i)could not be written .*no space left on.*gen-00000001-step-64 is intact") as info:
        save_checkpoint(model, folder)
    assert info.value.errno == errno.ENOSPC
    assert [g.name for g in list_checkpoints(folder)] == ["gen-00000001-step-64"]
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]
    filler.unlink()
    assert load_checkpoint(folder).num_timesteps == 64
    save_checkpoint(model, folder)  # with room again, the next one is written
    assert steps_of(folder) == [128]


# -- SaveOnInterrupt -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(save_path=None), "save_path must be a folder .a str or a pathlib.Path., got None"),
        (dict(save_path=""), "save_path must be a folder"),
        (dict(save_freq=-1), "save_freq must be an integer >= 0, got -1"),
        (dict(save_freq=2.5), "save_freq must be an integer >= 0, got 2.5"),
        (dict(save_freq=True), "save_freq must be an integer >= 0, got True"),
        (dict(keep=0), "keep must be a positive integer, got 0"),
        (dict(keep="all"), "keep must be a positive integer, got 'all'"),
        (dict(verbose=-1), "verbose must be an integer >= 0, got -1"),
    ],
)
def test_save_on_interrupt_arguments_are_checked(kwargs: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        SaveOnInterrupt(**{"save_path": tmp_path, **kwargs})


def test_subproc_vec_env_is_refused_when_training_starts(tmp_path: Path) -> None:
    env = make_vec_env("CartPole-v1", n_envs=2, vec_env_cls=SubprocVecEnv, vec_env_kwargs=dict(start_method="fork"))
    try:
        model = DeepSARSA("MlpPolicy", env, **SMALL)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"SaveOnInterrupt: .*SubprocVecEnv does not allow.*use DummyVecEnv"):
            model.learn(100, callback=SaveOnInterrupt(tmp_path, save_freq=10))
        assert model.num_timesteps == 0 and not list_checkpoints(tmp_path)
        with pytest.raises(ValueError, match=r"save_checkpoint: .*SubprocVecEnv"):
            save_checkpoint(model, tmp_path)
    finally:
        env.close()


def test_periodic_checkpoints_do_not_change_the_run(tmp_path: Path) -> None:
    th.set_num_threads(1)
    plain = cartpole(600)
    callback = SaveOnInterrupt(tmp_path, save_freq=100, keep=3)
    checkpointed = cartpole(0)
    checkpointed.learn(600, callback=callback)
    assert parameter_hash(checkpointed) == parameter_hash(plain)
    assert checkpointed._n_updates == plain._n_updates and checkpointed.exploration_rate == plain.exploration_rate
    # At the first rollout boundary at or after each multiple of 100 (rollouts of 2 envs x 4 steps), and at the end
    assert steps_of(tmp_path) == [600, 504, 400]
    assert callback.last_checkpoint == list_checkpoints(tmp_path)[0] and not callback.interrupted
    # A checkpoint written mid-run resumes to the same parameters (in this process: a fresh one is tested below)
    resumed = checkpoint.resume(list_checkpoints(tmp_path)[2])
    assert parameter_hash(resumed) == parameter_hash(plain)


@pytest.fixture
def python_signals() -> Iterator[None]:
    """Python's default SIGINT and SIGTERM handlers for the test (pytest may have its own)."""
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}
    previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


class SignalAt(BaseCallback):
    def __init__(self, at: int, signum: int) -> None:
        super().__init__()
        self.at, self.signum = at, signum

    def _on_step(self) -> bool:
        if self.num_timesteps == self.at:
            os.kill(os.getpid(), self.signum)
        return True


def test_a_second_ctrl_c_during_the_save_waits_for_the_complete_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python_signals: None
) -> None:
    model = cartpole(64)
    save_checkpoint(model, tmp_path)  # a checkpoint already in the folder
    write = checkpoint._write_generation

    def ctrl_c_midway(*args: Any) -> bool:
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, while the checkpoint's files are being written
        return write(*args)

    monkeypatch.setattr(checkpoint, "_write_generation", ctrl_c_midway)
    with pytest.raises(KeyboardInterrupt):
        model.learn(1000, reset_num_timesteps=False, callback=[SignalAt(134, signal.SIGINT), SaveOnInterrupt(tmp_path)])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.undo()
    assert steps_of(tmp_path) == [136]  # written whole, swapped in, then the KeyboardInterrupt
    assert load_checkpoint(tmp_path).num_timesteps == 136


def test_sigterm_is_a_clean_stop_like_ctrl_c(tmp_path: Path, python_signals: None) -> None:
    callback = SaveOnInterrupt(tmp_path, verbose=0)
    model = cartpole()
    model.learn(1000, callback=[SignalAt(70, signal.SIGTERM), callback])
    assert model.num_timesteps == 72 and callback.interrupted and callback.signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert steps_of(tmp_path) == [72]


# -- envs: every wrapper resumes exactly, in a fresh process -----------------------------------------


def make_env(kind: str, monitor_dir: Path) -> VecEnv:
    if kind == "monitor":
        return make_vec_env(
            "CartPole-v1", n_envs=2, seed=3, monitor_dir=str(monitor_dir), env_kwargs=dict(max_episode_steps=30)
        )
    if kind == "vecnormalize":
        return VecNormalize(make_vec_env("CartPole-v1", n_envs=2, seed=3, monitor_dir=str(monitor_dir)), gamma=0.9)
    if kind == "framestack":
        return VecFrameStack(make_vec_env("CartPole-v1", n_envs=2, seed=3, env_kwargs=dict(max_episode_steps=30)), n_stack=3)
    if kind == "masked":

        def masked_taxi() -> gym.Env:
            return ActionMasker(gym.make("Taxi-v4", max_episode_steps=40), toy_text_action_mask)

        env = DummyVecEnv([masked_taxi, masked_taxi])
        env.seed(3)
        return env
    assert kind == "dict"

    class DictCartPole(gym.ObservationWrapper):
        """CartPole's observation as a Dict (no image: oneDNN's convolutions are not bit-reproducible on every CPU)."""

        def __init__(self, env: gym.Env) -> None:
            super().__init__(env)
            box = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
            self.observation_space = gym.spaces.Dict({"position": box, "velocity": box})

        def observation(self, observation: np.ndarray) -> dict[str, np.ndarray]:
            return {"position": observation[[0, 2]], "velocity": observation[[1, 3]]}

    return make_vec_env("CartPole-v1", n_envs=2, seed=3, wrapper_class=DictCartPole, env_kwargs=dict(max_episode_steps=30))


def monitor_rows(folder: Path) -> dict[str, list[tuple[str, str]]]:
    """Each Monitor log's (return, length) rows; the time column differs from run to run."""
    rows = {}
    for path in sorted(folder.glob("*.monitor.csv")):
        with open(path) as file:
            header = file.readline()
            assert header.startswith("#{")
            rows[path.name] = [(row["r"], row["l"]) for row in csv.DictReader(file)]
    return rows


KINDS = ["monitor", "vecnormalize", "framestack", "masked", "dict"]
TOTAL = 480


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """
    For each kind of env: a run without checkpoints, the same run with one every 160 steps, and
    the checkpoint of step 160 resumed in a fresh process (one process resumes all of them).
    """
    th.set_num_threads(1)
    runs: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        folder = tmp_path_factory.mktemp(kind)
        policy = "MultiInputPolicy" if kind == "dict" else "MlpPolicy"
        plain = DeepSARSA(policy, make_env(kind, folder / "plain"), **SMALL).learn(TOTAL)  # type: ignore[arg-type]
        model = DeepSARSA(policy, make_env(kind, folder / "monitor"), **SMALL)  # type: ignore[arg-type]
        model.learn(TOTAL, callback=SaveOnInterrupt(folder / "checkpoint", save_freq=160, keep=5))
        model.get_env().close()  # type: ignore[union-attr]
        runs[kind] = {
            "folder": folder,
            "plain": [parameter_hash(plain), str(TOTAL), str(plain._n_updates), str(plain._episode_num)],
            "checkpointed": parameter_hash(model),
            "finished log": monitor_rows(folder / "monitor"),
            "first": list_checkpoints(folder / "checkpoint")[-1],
        }
    script = (
        "import hashlib, sys, torch as th\n"
        "from deep_sarsa.checkpoint import resume\n"
        "th.set_num_threads(1)\n"
        "for folder in sys.argv[1:]:\n"
        "    model = resume(folder)\n"
        "    digest = hashlib.sha256()\n"
        "    for p in model.policy.state_dict().values(): digest.update(p.detach().cpu().numpy().tobytes())\n"
        "    model.get_env().close()\n"
        "    print(digest.hexdigest(), model.num_timesteps, model._n_updates, model._episode_num)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, *(str(runs[kind]["first"]) for kind in KINDS)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for kind, line in zip(KINDS, out.stdout.splitlines(), strict=True):
        runs[kind]["resumed"] = line.split()
    return runs


@pytest.mark.parametrize("kind", KINDS)
def test_every_env_wrapper_resumes_exactly_in_a_fresh_process(kind: str, resumed_runs: dict[str, dict[str, Any]]) -> None:
    run = resumed_runs[kind]
    assert run["checkpointed"] == run["plain"][0]  # periodic checkpoints changed nothing
    assert run["first"].name.endswith("-step-160")
    if kind == "vecnormalize":
        assert (run["first"] / "vecnormalize.pkl").exists()
    assert run["resumed"] == run["plain"]  # parameters (hash), steps, updates, episodes
    if kind in ("monitor", "vecnormalize"):
        # Reopened for appending, cut back to the checkpoint first: every episode once, in order
        log = monitor_rows(run["folder"] / "monitor")
        assert log == run["finished log"] == monitor_rows(run["folder"] / "plain")
        assert sum(len(rows) for rows in log.values()) > 4


def test_monitor_log_rows_after_the_checkpoint_are_not_duplicated(tmp_path: Path) -> None:
    env = make_env("monitor", tmp_path / "monitor")
    model = DeepSARSA("MlpPolicy", env, **SMALL)  # type: ignore[arg-type]
    model.learn(400, callback=SaveOnInterrupt(tmp_path / "checkpoint", save_freq=100, keep=5))
    first = list_checkpoints(tmp_path / "checkpoint")[-1]
    before = monitor_rows(tmp_path / "monitor")
    env.close()
    resumed = load_checkpoint(first)  # in this process: the log is cut back to the checkpoint
    after_load = monitor_rows(tmp_path / "monitor")
    assert all(after_load[name] == rows[: len(after_load[name])] for name, rows in before.items())
    assert sum(map(len, after_load.values())) < sum(map(len, before.values()))
    resumed.learn(400 - resumed.num_timesteps, reset_num_timesteps=False)
    resumed.get_env().close()  # type: ignore[union-attr]
    assert monitor_rows(tmp_path / "monitor") == before


def test_a_model_without_env_cannot_be_checkpointed(tmp_path: Path) -> None:
    model = cartpole()
    model.env = None
    with pytest.raises(ValueError, match="save_checkpoint needs the model's env"):
        save_checkpoint(model, tmp_path)


def test_writers_in_several_threads_each_write_a_whole_checkpoint(tmp_path: Path) -> None:
    model = cartpole(64)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(3):
                save_checkpoint(model, tmp_path, keep=10)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=write) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert [g.name for g in list_checkpoints(tmp_path)] == [f"gen-{n:08d}-step-64" for n in range(9, 0, -1)]
    for generation in list_checkpoints(tmp_path)[:2]:
        assert load_checkpoint(generation).num_timesteps == 64


class LogsToAFile(gym.Wrapper):
    """A user's wrapper that keeps a file open: not something a checkpoint can pickle."""

    def __init__(self, env: gym.Env, path: Path) -> None:
        super().__init__(env)
        self.log = open(path, "a")  # noqa: SIM115


def test_envs_that_cannot_be_saved_are_refused_when_training_starts(tmp_path: Path) -> None:
    env = make_vec_env("CartPole-v1", n_envs=2, wrapper_class=LogsToAFile, wrapper_kwargs=dict(path=tmp_path / "log.txt"))  # type: ignore[arg-type]
    model = DeepSARSA("MlpPolicy", env, **SMALL)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"SaveOnInterrupt: the envs cannot be saved .*open file, '.*log.txt'"):
        model.learn(100, callback=SaveOnInterrupt(tmp_path / "checkpoint", save_freq=50))
    assert model.num_timesteps == 0
    with pytest.raises(ValueError, match=r"save_checkpoint: the envs cannot be saved .*open file"):
        save_checkpoint(model, tmp_path / "checkpoint")
    assert not list_checkpoints(tmp_path / "checkpoint")
    assert not [p for p in (tmp_path / "checkpoint").iterdir() if p.name.startswith(".tmp-")]


def test_a_checkpoint_of_the_older_layout_still_loads(tmp_path: Path) -> None:
    """The files directly in the folder, each signed on its own (what deep-sarsa wrote before generations)."""
    model = cartpole(64)
    state = write_older_checkpoint(model, tmp_path)
    loaded = load_checkpoint(tmp_path)
    assert loaded.num_timesteps == 64 and parameter_hash(loaded) == parameter_hash(model)
    (tmp_path / STATE_FILE).write_bytes(cloudpickle.dumps(state) + b" ")
    with pytest.raises(UnsafeFileError, match=r"state.pkl: its signature does not match"):
        load_checkpoint(tmp_path)


def test_a_periodic_checkpoint_that_cannot_be_written_stops_training_and_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = checkpoint._write_generation
    calls = []

    def full_after_the_first(*args: Any) -> bool:
        calls.append(args)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(*args)

    monkeypatch.setattr(checkpoint, "_write_generation", full_after_the_first)
    model = cartpole()
    with pytest.raises(OSError, match=r"step 200 could not be written .*No space left.*gen-00000001-step-104 is intact"):
        model.learn(600, callback=SaveOnInterrupt(tmp_path, save_freq=100))
    monkeypatch.undo()
    assert steps_of(tmp_path) == [104]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert checkpoint.resume(tmp_path).num_timesteps == 600


#: Writes checkpoints of a model with a 100k-transition buffer (about 5 MB each) over each other, without end
SAVE_LOOP = r"""
import sys, torch as th
from stable_baselines3.common.env_util import make_vec_env
from deep_sarsa import DeepSARSA
from deep_sarsa.checkpoint import save_checkpoint
th.set_num_threads(1)
env = make_vec_env("CartPole-v1", n_envs=2, seed=1, monitor_dir=sys.argv[2])
model = DeepSARSA("MlpPolicy", env, buffer_size=100_000, learning_starts=10, train_freq=4, seed=1)
model.learn(64)
print("ready", flush=True)
while True:
    model.num_timesteps += 1  # each checkpoint has its own step
    save_checkpoint(model, sys.argv[1])
    print(model.num_timesteps, flush=True)
"""


def test_sigkill_while_checkpoints_are_written_over_each_other_leaves_a_whole_one(tmp_path: Path) -> None:
    """
    A process writing checkpoints in a loop is SIGKILLed after a random delay: loading finds a
    whole checkpoint, the newest complete one (DEEP_SARSA_KILL_SEED, DEEP_SARSA_SAVE_KILLS).
    """
    seed = int(os.environ.get("DEEP_SARSA_KILL_SEED", random.SystemRandom().randrange(2**32)))
    rng = random.Random(seed)
    for trial in range(int(os.environ.get("DEEP_SARSA_SAVE_KILLS", "2"))):
        folder = tmp_path / f"trial{trial}"
        child = subprocess.Popen(
            [sys.executable, "-c", SAVE_LOOP, str(folder / "checkpoint"), str(folder / "monitor")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.2, 1.0))
        child.kill()
        out, _ = child.communicate(timeout=60)
        written = [int(line) for line in out.split()]  # the steps of the checkpoints whose save returned
        context = f"seed {seed}, trial {trial}: {len(written)} saves returned"
        generations = list_checkpoints(folder / "checkpoint")
        if not generations:
            assert not written, context
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the newest generation is whole: no fallback
            model = load_checkpoint(folder / "checkpoint")
        model.get_env().close()  # type: ignore[union-attr]
        # The last save that returned, or the one after it (renamed into place just before the kill)
        assert model.num_timesteps in (max(written, default=64), max(written, default=64) + 1), context
