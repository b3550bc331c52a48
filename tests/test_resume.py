"""
A run of N steps equals the same run stopped near N/2, checkpointed, and resumed in a fresh
process: parameters equal bit for bit (CPU), with a decaying ε, several envs, each variant.
The same after a SIGKILL at a random moment of a run with periodic checkpoints, and after
SIGTERM (once, or twice with the second during the save); the Monitor logs equal the
uninterrupted run's.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from deep_sarsa import DeepSARSA
from deep_sarsa.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint

TOTAL = 800


class RequestStopAt(BaseCallback):
    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def _on_step(self) -> bool:
        if self.num_timesteps == self.at:
            self.model.request_stop()  # type: ignore[attr-defined]
        return True


def make_model(next_action: str) -> DeepSARSA:
    env = make_vec_env("CartPole-v1", n_envs=2, seed=5, env_kwargs=dict(max_episode_steps=40))
    return DeepSARSA(
        "MlpPolicy",
        env,
        next_action=next_action,  # type: ignore[arg-type]
        learning_starts=60,
        buffer_size=300,  # wraps around before the stop
        batch_size=16,
        train_freq=4,
        target_update_interval=(3, "episode"),
        exploration_fraction=0.8,  # ε still decaying across the stop
        seed=5,
    )


def parameters(model: DeepSARSA) -> list[np.ndarray]:
    return [p.detach().cpu().numpy() for p in model.policy.parameters()]


@pytest.mark.parametrize("next_action", ["sampled", "expected", "stored"])
def test_resume_in_a_fresh_process_is_bit_for_bit(next_action: str, tmp_path: Path) -> None:
    th.set_num_threads(1)
    continuous = make_model(next_action).learn(TOTAL)

    interrupted = make_model(next_action).learn(TOTAL, callback=RequestStopAt(TOTAL // 2))
    assert TOTAL // 2 <= interrupted.num_timesteps < TOTAL
    save_checkpoint(interrupted, tmp_path / "checkpoint")
    script = (
        "import numpy as np, torch as th\n"
        "from deep_sarsa.checkpoint import resume\n"
        "th.set_num_threads(1)\n"
        f"model = resume(r'{tmp_path / 'checkpoint'}')\n"
        f"np.savez(r'{tmp_path / 'resumed.npz'}', *[p.detach().numpy() for p in model.policy.parameters()])\n"
        "print(model.num_timesteps, model._n_updates, model._episode_num, model.exploration_rate)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    resumed = np.load(tmp_path / "resumed.npz")
    for i, expected in enumerate(parameters(continuous)):
        np.testing.assert_array_equal(resumed[f"arr_{i}"], expected)
    counters = out.stdout.split()
    assert counters[:3] == [str(continuous.num_timesteps), str(continuous._n_updates), str(continuous._episode_num)]
    assert float(counters[3]) == continuous.exploration_rate


# -- killed at any moment: SIGKILL, SIGTERM ------------------------------------------------------------

#: The child process: trains (plain, or with periodic checkpoints), or resumes; prints the parameter hash.
CHILD = r"""
import hashlib, os, signal, sys, time
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from deep_sarsa import DeepSARSA, checkpoint
from deep_sarsa.callbacks import SaveOnInterrupt
from deep_sarsa.checkpoint import resume

th.set_num_threads(1)
mode, folder, monitor = sys.argv[1:4]
TOTAL, EVERY = 3000, 400


class Started(BaseCallback):  # says when training starts (SaveOnInterrupt's handlers are installed by then)

    def _on_training_start(self) -> None:
        print("training", flush=True)

    def _on_step(self) -> bool:
        return True


class SignalAt(BaseCallback):
    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def _on_step(self) -> bool:
        if self.num_timesteps == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return True


if mode == "double-term":  # the second SIGTERM arrives while the checkpoint's files are being written
    write = checkpoint._write_generation

    def write_and_terminate(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        return write(*args)

    checkpoint._write_generation = write_and_terminate
callbacks = [SaveOnInterrupt(folder, save_freq=EVERY if mode in ("train", "resume") else 0, keep=2), Started()]
if mode == "double-term":
    callbacks.append(SignalAt(1000))
start = time.perf_counter()
if mode == "resume":
    model = resume(folder, callback=callbacks)
else:
    env = make_vec_env("CartPole-v1", n_envs=2, seed=7, monitor_dir=monitor, env_kwargs=dict(max_episode_steps=100))
    model = DeepSARSA("MlpPolicy", env, learning_starts=100, buffer_size=2000, batch_size=32, train_freq=4,
                      target_update_interval=(3, "episode"), exploration_fraction=0.7, seed=7,
                      policy_kwargs=dict(net_arch=[32, 32]))
    model.learn(TOTAL, callback=callbacks if mode != "plain" else Started())
seconds = time.perf_counter() - start
digest = hashlib.sha256()
for parameter in model.policy.state_dict().values():
    digest.update(parameter.detach().cpu().numpy().tobytes())
model.get_env().close()
print("done", digest.hexdigest(), model.num_timesteps, f"{seconds:.3f}", flush=True)
"""


def run_child(mode: str, folder: Path, monitor: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, str(folder), str(monitor)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(child: subprocess.Popen[str]) -> list[str]:
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-3000:]
    (line,) = [line for line in out.splitlines() if line.startswith("done")]
    return line.split()[1:]


def monitor_rows(folder: Path) -> list[list[tuple[str, str]]]:
    """(return, length) of each episode in each Monitor log (the time column differs from run to run)."""
    logs = []
    for path in sorted(folder.glob("*.monitor.csv")):
        lines = path.read_text().splitlines()
        assert lines[0].startswith("#{") and lines[1] == "r,l,t"
        rows = [line.split(",") for line in lines[2:]]
        logs.append([(row[0], row[1]) for row in rows])
    return logs


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, float, list[list[tuple[str, str]]]]:
    """The run without checkpoints: its parameter hash, its training time and its Monitor logs."""
    folder = tmp_path_factory.mktemp("plain")
    digest, steps, seconds = finish(run_child("plain", folder / "checkpoint", folder / "monitor"))
    assert steps == "3000"
    return digest, float(seconds), monitor_rows(folder / "monitor")


def test_sigkill_at_random_moments_then_resume_is_bit_for_bit(
    uninterrupted: tuple[str, float, list[list[tuple[str, str]]]], tmp_path: Path
) -> None:
    """
    Trials: a run with a checkpoint every 400 steps is SIGKILLed after a random delay, then
    resumed in a fresh process. DEEP_SARSA_KILL_SEED repeats a sequence of delays,
    DEEP_SARSA_KILL_TRIALS sets how many (3 here; benchmarks run more).
    """
    expected, seconds, expected_log = uninterrupted
    seed = int(os.environ.get("DEEP_SARSA_KILL_SEED", random.SystemRandom().randrange(2**32)))
    trials = int(os.environ.get("DEEP_SARSA_KILL_TRIALS", "3"))
    delays = random.Random(seed).sample(range(1000), trials)
    outcomes = []
    for trial, permille in enumerate(delays):
        delay = 1.1 * seconds * permille / 1000
        folder, monitor = tmp_path / f"trial{trial}" / "checkpoint", tmp_path / f"trial{trial}" / "monitor"
        child = run_child("train", folder, monitor)
        assert child.stdout is not None and child.stdout.readline() == "training\n"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        context = f"seed {seed}, trial {trial}, killed {delay:.3f} s into training ({child.returncode})"
        mid_save = any(entry.name.startswith(".tmp-") for entry in folder.iterdir()) if folder.exists() else False
        if not list_checkpoints(folder):  # killed before the first checkpoint was complete: nothing to resume
            with pytest.raises(FileNotFoundError, match=r"holds no complete checkpoint|no such checkpoint folder"):
                load_checkpoint(folder)
            outcomes.append(f"{context}: before the first checkpoint")
            print(outcomes[-1], flush=True)
            continue
        digest, steps, _ = finish(run_child("resume", folder, monitor))
        assert (digest, steps) == (expected, "3000"), context
        assert monitor_rows(monitor) == expected_log, f"{context}: the Monitor logs are not the uninterrupted run's"
        outcomes.append(f"{context}: resumed exactly{' (killed while a checkpoint was being written)' if mid_save else ''}")
        print(outcomes[-1], flush=True)  # seen with pytest -s


def test_sigterm_writes_a_checkpoint_that_resumes_bit_for_bit(
    uninterrupted: tuple[str, float, list[list[tuple[str, str]]]], tmp_path: Path
) -> None:
    expected, _, expected_log = uninterrupted
    folder, monitor = tmp_path / "checkpoint", tmp_path / "monitor"
    child = run_child("interrupt", folder, monitor)
    assert child.stdout is not None and child.stdout.readline() == "training\n"
    time.sleep(0.3)  # well inside the run (about 2 s of training when the machine is idle)
    child.send_signal(signal.SIGTERM)  # what SLURM, Kubernetes and docker stop send
    _, steps, _ = finish(child)  # learn() returned normally, with the checkpoint written
    assert 0 < int(steps) < 3000 and [g.name.endswith(f"-step-{steps}") for g in list_checkpoints(folder)] == [True]
    digest, steps, _ = finish(run_child("resume", folder, monitor))
    assert (digest, steps) == (expected, "3000")
    assert monitor_rows(monitor) == expected_log


def test_a_second_sigterm_during_the_save_ends_the_process_after_the_checkpoint_is_complete(
    uninterrupted: tuple[str, float, list[list[tuple[str, str]]]], tmp_path: Path
) -> None:
    expected, _, _ = uninterrupted
    folder, monitor = tmp_path / "checkpoint", tmp_path / "monitor"
    child = run_child("double-term", folder, monitor)
    out, err = child.communicate(timeout=300)
    assert child.returncode == -signal.SIGTERM, err[-3000:]  # the second SIGTERM's default action, deferred
    assert "done" not in out
    assert [g.name for g in list_checkpoints(folder)] == ["gen-00000001-step-1000"]
    assert not [entry for entry in folder.iterdir() if entry.name.startswith(".tmp-")]
    digest, steps, _ = finish(run_child("resume", folder, monitor))
    assert (digest, steps) == (expected, "3000")
