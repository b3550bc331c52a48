"""A checkpoint of the layout before generations, written as deep-sarsa wrote it then (tests of its loading)."""

import random
from pathlib import Path

import cloudpickle
import numpy as np
import torch as th

from deep_sarsa import DeepSARSA
from deep_sarsa.checkpoint import BUFFER_FILE, MODEL_FILE, STATE_FILE
from deep_sarsa.signing import sign


def older_state(model: DeepSARSA) -> dict[str, object]:
    """What the older layout's ``state.pkl`` held: the envs and every random generator's state."""
    return {
        "env": model.get_env(),
        "numpy": np.random.get_state(),
        "torch": th.get_rng_state(),
        "cuda": None,
        "python": random.getstate(),
        "action_space": model.action_space.np_random.bit_generator.state,
    }


def write_older_checkpoint(model: DeepSARSA, folder: Path) -> dict[str, object]:
    """``model.zip``, ``replay_buffer.pkl`` and ``state.pkl`` directly in ``folder``, each signed on its own; the state."""
    model.save(folder / MODEL_FILE)
    model.save_replay_buffer(folder / BUFFER_FILE)
    state = older_state(model)
    (folder / STATE_FILE).write_bytes(cloudpickle.dumps(state))
    for name in (MODEL_FILE, BUFFER_FILE, STATE_FILE):
        sign(folder / name)
    return state
