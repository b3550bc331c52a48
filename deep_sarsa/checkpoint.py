"""
Checkpoints that resume training exactly where it stopped.

SB3's ``save`` keeps the networks, the optimizer and the counters, and ``save_replay_buffer``
the transitions, but three things a run depends on are not in either file: the state of the
random number generators (NumPy's, PyTorch's, Python's, the action space's), the state of the
envs (mid-episode, with their own generators), and where the stop happened (SB3's callbacks stop
in the middle of a rollout, dropping the step in which they stop). A checkpoint saves all of it,
taken at a rollout boundary (:meth:`deep_sarsa.DeepSARSA.request_stop`), so that::

    model.learn(N)

and::

    model.learn(N, callback=...)  # stopped (e.g. by Ctrl-C with SaveOnInterrupt) and checkpointed
    # ... later, in a fresh process:
    resume("checkpoint/")          # learns the remaining steps

give the same parameters bit for bit on the CPU (tests/test_resume.py).

The envs are saved by pickling the VecEnv, which works for ``DummyVecEnv`` (and ``VecNormalize``
over it) with picklable envs; ``SubprocVecEnv`` keeps its envs in other processes and is refused.
"""

import os
import pathlib
import random
from typing import Any

import cloudpickle
import numpy as np
import torch as th
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv, VecEnvWrapper

from deep_sarsa.deep_sarsa import DeepSARSA

MODEL_FILE = "model.zip"
BUFFER_FILE = "replay_buffer.pkl"
STATE_FILE = "state.pkl"


def _innermost(env: VecEnv) -> VecEnv:
    while isinstance(env, VecEnvWrapper):
        env = env.venv
    return env


def save_checkpoint(model: DeepSARSA, folder: str | pathlib.Path) -> pathlib.Path:
    """
    Save the model, its replay buffer, its envs and every random generator into ``folder``.

    Call it when ``learn()`` has returned (or from a callback's ``_on_training_end``), not in the
    middle of a rollout.

    :param model: the model
    :param folder: where to write ``model.zip``, ``replay_buffer.pkl`` and ``state.pkl``
    :return: the folder
    """
    env = model.get_env()
    if env is None:
        raise ValueError("save_checkpoint needs the model's env: the model has none (set it with model.set_env)")
    if isinstance(_innermost(env), SubprocVecEnv):
        raise ValueError(
            "save_checkpoint pickles the envs to resume them mid-episode, which SubprocVecEnv does not allow "
            "(its envs live in other processes): use DummyVecEnv, or save with model.save + save_replay_buffer"
        )
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {
        "env": env,
        "numpy": np.random.get_state(),
        "torch": th.get_rng_state(),
        "cuda": th.cuda.get_rng_state_all() if th.cuda.is_available() else None,
        "python": random.getstate(),
        "action_space": model.action_space.np_random.bit_generator.state,
    }
    temporary = folder / f".{STATE_FILE}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb") as file:
            cloudpickle.dump(state, file)
        model.save(folder / MODEL_FILE)
        model.save_replay_buffer(folder / BUFFER_FILE)
        os.replace(temporary, folder / STATE_FILE)
    finally:
        temporary.unlink(missing_ok=True)
    return folder


def load_checkpoint(folder: str | pathlib.Path, device: th.device | str = "auto") -> DeepSARSA:
    """
    Load what :func:`save_checkpoint` saved: the model with its replay buffer and envs, every
    random generator restored, ready to go on with ``learn(..., reset_num_timesteps=False)``.

    :param folder: the checkpoint folder
    :param device: the device to load the model on
    :return: the model
    """
    folder = pathlib.Path(folder)
    missing = [name for name in (MODEL_FILE, BUFFER_FILE, STATE_FILE) if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete checkpoint: {', '.join(missing)} missing")
    with open(folder / STATE_FILE, "rb") as file:
        state = cloudpickle.load(file)
    # force_reset=False keeps the envs mid-episode, with the observation the model last saw
    model = DeepSARSA.load(folder / MODEL_FILE, env=state["env"], device=device, force_reset=False)
    model.load_replay_buffer(folder / BUFFER_FILE)
    # Loading re-seeds every generator with the model's seed: put back where they were
    np.random.set_state(state["numpy"])
    th.set_rng_state(state["torch"])
    if state["cuda"] is not None and th.cuda.is_available():
        th.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    model.action_space.np_random.bit_generator.state = state["action_space"]
    return model


def resume(folder: str | pathlib.Path, device: th.device | str = "auto", **learn_kwargs: Any) -> DeepSARSA:
    """
    Load a checkpoint and learn the steps that were left of the interrupted ``learn()`` call.

    :param folder: the checkpoint folder
    :param device: the device to load the model on
    :param learn_kwargs: other arguments of ``learn`` (callback, log_interval, progress_bar, ...)
    :return: the trained model
    """
    model = load_checkpoint(folder, device)
    remaining = max(model._total_timesteps - model.num_timesteps, 0)
    return model.learn(remaining, reset_num_timesteps=False, **learn_kwargs)
