"""Checks of DeepSARSA's arguments: each failure names the parameter and says what was expected."""

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

NEXT_ACTIONS: tuple[str, ...] = ("sampled", "expected", "stored")
LOSSES: tuple[str, ...] = ("mse", "huber")
TARGET_UPDATE_UNITS: tuple[str, ...] = ("step", "episode")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _require(ok: bool, name: str, expected: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def parse_target_update_interval(value: Any) -> tuple[int, str]:
    """
    Turn ``target_update_interval`` into ``(frequency, unit)``.

    :param value: an int (environment steps) or a tuple ``(K, "step")`` / ``(K, "episode")``
    :return: the frequency and its unit
    """
    if isinstance(value, (tuple, list)):
        _require(
            len(value) == 2 and value[1] in TARGET_UPDATE_UNITS,
            "target_update_interval",
            "an int or a tuple (K, 'step') / (K, 'episode')",
            value,
        )
        frequency, unit = value
    else:
        frequency, unit = value, "step"
    _require(
        _is_int(frequency) and frequency >= 1, "target_update_interval", f"a positive integer number of {unit}s", frequency
    )
    return int(frequency), unit


def check_hyperparameters(
    *,
    learning_rate: float | Callable[[float], float],
    buffer_size: int,
    learning_starts: int,
    batch_size: int,
    tau: float,
    gamma: float,
    train_freq: int | tuple[int, str],
    gradient_steps: int,
    n_steps: int,
    target_update_interval: int | tuple[int, str],
    exploration_fraction: float,
    exploration_initial_eps: float,
    exploration_final_eps: float,
    max_grad_norm: float,
    next_action: str,
    loss: str,
    **others: Any,
) -> None:
    """
    Refuse hyperparameters that cannot work, before anything is built.

    :param others: the constructor's other keywords (checked by SB3 where they are used)

    :raises ValueError: naming the first bad parameter, what it must be and what it was
    """
    _require(next_action in NEXT_ACTIONS, "next_action", f"one of {NEXT_ACTIONS}", next_action)
    _require(loss in LOSSES, "loss", f"one of {LOSSES}", loss)
    initial_lr = learning_rate(1.0) if callable(learning_rate) else learning_rate
    _require(
        _is_number(initial_lr) and initial_lr > 0, "learning_rate", "a positive number (or a schedule giving one)", initial_lr
    )
    _require(_is_int(buffer_size) and buffer_size >= 1, "buffer_size", "a positive integer", buffer_size)
    _require(_is_int(batch_size) and batch_size >= 1, "batch_size", "a positive integer", batch_size)
    _require(batch_size <= buffer_size, "batch_size", f"at most buffer_size ({buffer_size})", batch_size)
    _require(_is_int(learning_starts) and learning_starts >= 0, "learning_starts", "a non-negative integer", learning_starts)
    _require(_is_number(tau) and 0 < tau <= 1, "tau", "in (0, 1]", tau)
    _require(_is_number(gamma) and 0 <= gamma <= 1, "gamma", "in [0, 1]", gamma)
    frequency = train_freq[0] if isinstance(train_freq, (tuple, list)) else train_freq
    _require(
        _is_int(frequency) and frequency >= 1,
        "train_freq",
        "a positive integer (or a tuple (n, 'step'|'episode'))",
        train_freq,
    )
    _require(
        _is_int(gradient_steps) and gradient_steps >= -1,
        "gradient_steps",
        "an integer >= -1 (-1: one per env step)",
        gradient_steps,
    )
    _require(_is_int(n_steps) and n_steps >= 1, "n_steps", "a positive integer", n_steps)
    parse_target_update_interval(target_update_interval)
    for name, value in [
        ("exploration_fraction", exploration_fraction),
        ("exploration_initial_eps", exploration_initial_eps),
        ("exploration_final_eps", exploration_final_eps),
    ]:
        _require(_is_number(value) and 0 <= value <= 1, name, "in [0, 1]", value)
    _require(_is_number(max_grad_norm) and max_grad_norm > 0, "max_grad_norm", "a positive number", max_grad_norm)


def make_env(env_id: str) -> gym.Env:
    """
    ``gym.make(env_id)`` (``"module:EnvId"`` imports the module first), failing with the name.

    :param env_id: a registered environment id
    :return: the environment
    """
    try:
        return gym.make(env_id)
    except (gym.error.Error, ModuleNotFoundError) as error:
        raise ValueError(f"env={env_id!r} is not an environment Gymnasium can make: {error}") from error
