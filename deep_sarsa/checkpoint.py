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

Resuming envs mid-episode needs their pickled state, and unpickling runs code: every file of a
checkpoint is signed with the user's secret key (:mod:`deep_sarsa.signing`), and
:func:`load_checkpoint` unpickles ``state.pkl`` only when its signature is valid (checked before
anything is unpickled), so that a checkpoint written on this machine resumes without ceremony
and one from elsewhere is refused unless ``trusted=True``. ``model.zip`` is checked first
(:func:`deep_sarsa.files.check_model_safely`: a broken or unsafe model fails before
``state.pkl`` is touched); an unsigned ``model.zip`` or ``replay_buffer.pkl`` is loaded safely
(allowlist), a signed one as SB3 loads it.

The envs are saved by pickling the VecEnv, which works for ``DummyVecEnv`` (and ``VecNormalize``
over it) with picklable envs; ``SubprocVecEnv`` keeps its envs in other processes and is refused.
"""

import os
import pathlib
import random
import warnings
from typing import Any

import cloudpickle
import numpy as np
import torch as th
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv, VecEnvWrapper

from deep_sarsa.deep_sarsa import DeepSARSA
from deep_sarsa.files import check_model_safely
from deep_sarsa.safe_pickle import TRUST_HINT, UnsafeFileError, one_line
from deep_sarsa.signing import key_path, sign, signature_path, verify

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
    _sign_all(folder)
    return folder


def _sign_all(folder: pathlib.Path) -> None:
    """Sign the checkpoint's files; a checkpoint that cannot be signed is kept (it resumes with trusted=True)."""
    try:
        for name in (MODEL_FILE, BUFFER_FILE, STATE_FILE):
            sign(folder / name)
    except (OSError, ValueError) as error:
        warnings.warn(
            f"{folder}: the checkpoint is saved but could not be signed with the key {key_path()} ({error}): "
            "resume it with trusted=True",
            stacklevel=3,
        )


def _signed_state(path: pathlib.Path, trusted: bool) -> Any:
    """Unpickle state.pkl: only after its signature is checked, on the bytes that were checked."""
    content = path.read_bytes()
    if not (trusted or verify(path, content)):
        problem = (
            "its signature does not match (the file was changed, or signed with another key)"
            if signature_path(path).exists()
            else "it is not signed"
        )
        raise UnsafeFileError(
            f"{path}: {problem}: a checkpoint's state.pkl holds the pickled envs, which can run any code, so only "
            f"checkpoints written with this user's key ({key_path()}) are resumed without asking; {TRUST_HINT}"
        )
    try:
        state = cloudpickle.loads(content)
    except Exception as error:  # signed or trusted: its code ran; report what it raised, naming the file
        raise ValueError(f"{path} is not a readable checkpoint state ({type(error).__name__}: {one_line(error)})") from error
    if not isinstance(state, dict) or not {"env", "numpy", "torch", "cuda", "python", "action_space"} <= state.keys():
        raise ValueError(f"{path} is not the state of a checkpoint written by save_checkpoint")
    return state


def load_checkpoint(folder: str | pathlib.Path, device: th.device | str = "auto", trusted: bool = False) -> DeepSARSA:
    """
    Load what :func:`save_checkpoint` saved: the model with its replay buffer and envs, every
    random generator restored, ready to go on with ``learn(..., reset_num_timesteps=False)``.

    :param folder: the checkpoint folder
    :param device: the device to load the model on
    :param trusted: unpickle the checkpoint's files even without a valid signature (runs any
        code they name): only for a checkpoint you trust
    :return: the model
    """
    folder = pathlib.Path(folder)
    missing = [name for name in (MODEL_FILE, BUFFER_FILE, STATE_FILE) if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete checkpoint: {', '.join(missing)} missing")
    model_trusted = trusted or verify(folder / MODEL_FILE)
    check_model_safely(folder / MODEL_FILE, DeepSARSA, model_trusted)
    state = _signed_state(folder / STATE_FILE, trusted)
    # force_reset=False keeps the envs mid-episode, with the observation the model last saw
    model = DeepSARSA.load(folder / MODEL_FILE, env=state["env"], device=device, force_reset=False, trusted=model_trusted)
    model.load_replay_buffer(folder / BUFFER_FILE, trusted=trusted or verify(folder / BUFFER_FILE))
    # Loading re-seeds every generator with the model's seed: put back where they were
    np.random.set_state(state["numpy"])
    th.set_rng_state(state["torch"])
    if state["cuda"] is not None and th.cuda.is_available():
        th.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    model.action_space.np_random.bit_generator.state = state["action_space"]
    return model


def resume(
    folder: str | pathlib.Path, device: th.device | str = "auto", trusted: bool = False, **learn_kwargs: Any
) -> DeepSARSA:
    """
    Load a checkpoint and learn the steps that were left of the interrupted ``learn()`` call.

    :param folder: the checkpoint folder
    :param device: the device to load the model on
    :param trusted: resume a checkpoint that is not signed with this user's key (:func:`load_checkpoint`)
    :param learn_kwargs: other arguments of ``learn`` (callback, log_interval, progress_bar, ...)
    :return: the trained model
    """
    model = load_checkpoint(folder, device, trusted)
    remaining = max(model._total_timesteps - model.num_timesteps, 0)
    return model.learn(remaining, reset_num_timesteps=False, **learn_kwargs)
