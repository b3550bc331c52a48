"""
The Optuna search space of ``--algo deep_sarsa`` in rl-zoo3: DQN's (``rl_zoo3.hyperparams_opt.sample_dqn_params``,
the same parameter names and ranges) plus ``next_action`` and ``loss``, and the converter that turns a finished
trial's parameters back into DeepSARSA keywords (``--trial-id``).

A trial never gets an invalid combination:

- ``batch_size`` (``2 ** batch_size_pow``) is at most ``buffer_size``: the upper bound of ``batch_size_pow`` is
  lowered to ``log2(buffer_size)`` when the experiment's ``buffer_size`` (its yml entry, DeepSARSA's default
  otherwise) is below DQN's largest batch (2048);
- ``learning_starts`` leaves the trial something to learn from: when the yml's value is at least half the trial's
  ``n_timesteps``, the trial uses ``n_timesteps // 2`` (recorded as the trial's user attribute
  ``learning_starts``);
- ``gradient_steps`` is at least 1 and ``subsample_steps`` at most ``train_freq`` (as in DQN's sampler).
"""

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna

from deep_sarsa.validation import LOSSES, NEXT_ACTIONS

#: DQN's largest batch in rl-zoo3's search space (``batch_size_pow`` from 2 to 11)
MAX_BATCH_SIZE_POW = 11
#: DeepSARSA's (and DQN's) default buffer_size and learning_starts
DEFAULT_BUFFER_SIZE = 1_000_000
DEFAULT_LEARNING_STARTS = 100
NET_ARCHS: dict[str, list[int]] = {"small": [64, 64], "medium": [256, 256], "big": [400, 300]}

_experiment = threading.local()  # rl-zoo3 may run trials in threads (--n-jobs)


@contextmanager
def experiment_settings(hyperparams: dict[str, Any], n_timesteps: int) -> Iterator[None]:
    """
    Tell the sampler, for the trials run inside the ``with`` block (in this thread), the experiment's own
    hyperparameters (its yml entry) and each trial's budget, which bound ``batch_size`` and ``learning_starts``.

    :param hyperparams: the experiment's hyperparameters before sampling
    :param n_timesteps: the steps each trial trains for
    """
    previous = getattr(_experiment, "settings", None)
    _experiment.settings = (dict(hyperparams), int(n_timesteps))
    try:
        yield
    finally:
        _experiment.settings = previous


def _settings() -> tuple[dict[str, Any], int | None]:
    settings = getattr(_experiment, "settings", None)
    return (settings[0], settings[1]) if settings is not None else ({}, None)


def max_batch_size_pow(buffer_size: int) -> int:
    """
    :param buffer_size: the replay buffer's size
    :return: the largest ``batch_size_pow`` with ``2 ** batch_size_pow <= buffer_size``, at most DQN's 11
    """
    if not isinstance(buffer_size, int) or buffer_size < 4:
        raise ValueError(f"buffer_size must be an integer >= 4 to tune batch_size (2**2 to 2**11), got {buffer_size!r}")
    return min(MAX_BATCH_SIZE_POW, math.floor(math.log2(buffer_size)))


def sample_deep_sarsa_params(
    trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict[str, Any]
) -> dict[str, Any]:
    """
    Sample DeepSARSA keywords for one trial (rl-zoo3's ``HYPERPARAMS_SAMPLER`` signature).

    :param trial: the Optuna trial
    :param n_actions: unused (rl-zoo3 passes it for the action noise of continuous-action algorithms)
    :param n_envs: unused (as in DQN's sampler)
    :param additional_args: rl-zoo3's extra arguments (HER's, unused: DeepSARSA takes no HER buffer in rl-zoo3)
    :return: the keywords, as :func:`convert_deep_sarsa_params` makes them
    """
    hyperparams, n_timesteps = _settings()
    buffer_size = int(hyperparams.get("buffer_size", DEFAULT_BUFFER_SIZE))

    one_minus_gamma = trial.suggest_float("one_minus_gamma", 0.0001, 0.03, log=True)
    batch_size_pow = trial.suggest_int("batch_size_pow", 2, max_batch_size_pow(buffer_size))
    learning_rate = trial.suggest_float("learning_rate", 1e-5, 0.002, log=True)
    train_freq = trial.suggest_int("train_freq", 1, 10)
    subsample_steps = trial.suggest_int("subsample_steps", 1, min(train_freq, 8))
    exploration_final_eps = trial.suggest_float("exploration_final_eps", 0, 0.2)
    exploration_fraction = trial.suggest_float("exploration_fraction", 0, 0.5)
    target_update_interval = trial.suggest_int("target_update_interval", 1, 20000, log=True)
    net_arch = trial.suggest_categorical("net_arch", list(NET_ARCHS))
    next_action = trial.suggest_categorical("next_action", list(NEXT_ACTIONS))
    loss = trial.suggest_categorical("loss", list(LOSSES))

    params = {
        "one_minus_gamma": one_minus_gamma,
        "batch_size_pow": batch_size_pow,
        "learning_rate": learning_rate,
        "train_freq": train_freq,
        "subsample_steps": subsample_steps,
        "exploration_final_eps": exploration_final_eps,
        "exploration_fraction": exploration_fraction,
        "target_update_interval": target_update_interval,
        "net_arch": net_arch,
        "next_action": next_action,
        "loss": loss,
    }
    converted = convert_deep_sarsa_params(params, hyperparams.get("policy_kwargs"))
    trial.set_user_attr("gamma", converted["gamma"])
    trial.set_user_attr("batch_size", converted["batch_size"])
    if n_timesteps is not None:
        learning_starts = int(hyperparams.get("learning_starts", DEFAULT_LEARNING_STARTS))
        if learning_starts >= n_timesteps // 2 and learning_starts > 0:
            converted["learning_starts"] = n_timesteps // 2
            trial.set_user_attr("learning_starts", n_timesteps // 2)
    return converted


def convert_deep_sarsa_params(params: dict[str, Any], policy_kwargs: dict[str, Any] | str | None = None) -> dict[str, Any]:
    """
    Turn a trial's parameters into DeepSARSA keywords (rl-zoo3's ``HYPERPARAMS_CONVERTER``, used by ``--trial-id``).

    :param params: the trial's parameters (``study.trials[i].params``)
    :param policy_kwargs: the experiment's own ``policy_kwargs`` (a dict; rl-zoo3's string form is left out), whose
        other keys are kept beside the sampled ``net_arch``
    :return: the keywords
    """
    expected = {
        "one_minus_gamma", "batch_size_pow", "learning_rate", "train_freq", "subsample_steps",
        "exploration_final_eps", "exploration_fraction", "target_update_interval", "net_arch", "next_action", "loss",
    }  # fmt: skip
    missing = sorted(expected - set(params))
    if missing:
        raise ValueError(f"trial parameters of --algo deep_sarsa must include {sorted(expected)}; missing {missing}")
    if params["net_arch"] not in NET_ARCHS:
        raise ValueError(f"trial parameter net_arch must be one of {sorted(NET_ARCHS)}, got {params['net_arch']!r}")
    base = dict(policy_kwargs) if isinstance(policy_kwargs, dict) else {}
    train_freq = int(params["train_freq"])
    return {
        "gamma": 1 - float(params["one_minus_gamma"]),
        "batch_size": 2 ** int(params["batch_size_pow"]),
        "learning_rate": float(params["learning_rate"]),
        "train_freq": train_freq,
        "gradient_steps": max(train_freq // int(params["subsample_steps"]), 1),
        "exploration_final_eps": float(params["exploration_final_eps"]),
        "exploration_fraction": float(params["exploration_fraction"]),
        "target_update_interval": int(params["target_update_interval"]),
        "next_action": str(params["next_action"]),
        "loss": str(params["loss"]),
        "policy_kwargs": {**base, "net_arch": list(NET_ARCHS[params["net_arch"]])},
    }
