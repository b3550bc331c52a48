"""
Hyperparameter presets.

:func:`preset` reads DeepSARSA's own presets, shipped with the package in rl-baselines3-zoo's
YAML format (``deep_sarsa/hyperparams/deep_sarsa.yml``; how each entry was chosen is written
beside it there and in ``benchmarks/RESULTS.md``)::

    entry = preset("CartPole-v1")
    model = DeepSARSA(entry.policy, "CartPole-v1", **entry.hyperparameters).learn(entry.n_timesteps)

Each task's preset uses the ``next_action`` that tuned best on it. Where another variant's results were weak
with the preset's (or rl-zoo's) hyperparameters and a sweep found better ones for it, a per-variant preset
holds them (``deep_sarsa/hyperparams/deep_sarsa_VARIANT.yml``, the same format; ``preset(env_id,
next_action="stored")``). ``README.md`` ("Which next_action") lists them with their results.

``RL_ZOO_DQN`` holds rl-baselines3-zoo's DQN entries (``hyperparams/dqn.yml``) for the classic
control tasks, without the zoo-only keys (``n_timesteps``, ``policy``): since DeepSARSA accepts
every DQN keyword with the same meaning, each entry can be passed as is,
``DeepSARSA("MlpPolicy", "CartPole-v1", **RL_ZOO_DQN["CartPole-v1"])``.
"""

import ast
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import torch as th
import yaml

#: DeepSARSA's presets, in rl-zoo's format
PRESETS_FILE = Path(str(resources.files("deep_sarsa") / "hyperparams" / "deep_sarsa.yml"))
#: the ``next_action`` variants of DeepSARSA
NEXT_ACTIONS = ("sampled", "expected", "stored")
#: per-variant presets, in rl-zoo's format (a file for each variant that has one)
VARIANT_PRESETS_FILES = {
    variant: Path(str(resources.files("deep_sarsa") / "hyperparams" / f"deep_sarsa_{variant}.yml")) for variant in NEXT_ACTIONS
}
#: rl-zoo3's entries for env ids a file does not list (``default``) and for Atari games (``atari``): not presets
ZOO_FALLBACK_ENTRIES = ("default", "atari")

_ACROBOT_AND_LUNAR_LANDER: dict[str, Any] = dict(
    learning_rate=6.3e-4,
    batch_size=128,
    buffer_size=50_000,
    learning_starts=0,
    gamma=0.99,
    target_update_interval=250,
    train_freq=4,
    gradient_steps=-1,
    exploration_fraction=0.12,
    exploration_final_eps=0.1,
    policy_kwargs=dict(net_arch=[256, 256]),
)

RL_ZOO_DQN: dict[str, dict[str, Any]] = {
    "CartPole-v1": dict(
        learning_rate=2.3e-3,
        batch_size=64,
        buffer_size=100_000,
        learning_starts=1000,
        gamma=0.99,
        target_update_interval=10,
        train_freq=256,
        gradient_steps=128,
        exploration_fraction=0.16,
        exploration_final_eps=0.04,
        policy_kwargs=dict(net_arch=[256, 256]),
    ),
    "MountainCar-v0": dict(
        learning_rate=4e-3,
        batch_size=128,
        buffer_size=10_000,
        learning_starts=1000,
        gamma=0.98,
        target_update_interval=600,
        train_freq=16,
        gradient_steps=8,
        exploration_fraction=0.2,
        exploration_final_eps=0.07,
        policy_kwargs=dict(net_arch=[256, 256]),
    ),
    # rl-zoo tunes Acrobot-v1 and LunarLander with the same entry
    "Acrobot-v1": _ACROBOT_AND_LUNAR_LANDER,
    "LunarLander-v3": _ACROBOT_AND_LUNAR_LANDER,
}


def rl_zoo_dqn(env_id: str) -> dict[str, Any]:
    """
    A copy of rl-zoo's DQN hyperparameters for ``env_id`` (safe to modify).

    :param env_id: one of ``RL_ZOO_DQN``'s keys
    :return: the keyword arguments
    """
    if env_id not in RL_ZOO_DQN:
        raise ValueError(f"env_id must be one of {sorted(RL_ZOO_DQN)}, got {env_id!r}")
    entry = RL_ZOO_DQN[env_id]
    return {**entry, "policy_kwargs": dict(entry["policy_kwargs"])}


#: The Deep SARSA lecture's MountainCar-v0 setting (its notebook, ``beginner_master_rl`` section 8), as
#: DeepSARSA keywords: [128, 64] ReLU network, AdamW 1e-3, batch 32, γ = 0.99, learning from 320
#: stored transitions, one gradient step per env step, ε = 0.01 throughout, target network synced
#: every 10 episodes, MSE, a' drawn from the acting (online) network's ε-greedy policy; 2500 episodes ≈ 500k
#: steps. ``examples/mountain_car_lecture.py`` runs it.
LECTURE_MOUNTAIN_CAR: dict[str, Any] = dict(
    learning_rate=1e-3,
    buffer_size=1_000_000,
    learning_starts=320,
    batch_size=32,
    gamma=0.99,
    train_freq=1,
    gradient_steps=1,
    target_update_interval=(10, "episode"),
    exploration_fraction=0.0,
    exploration_initial_eps=0.01,
    exploration_final_eps=0.01,
    next_action="sampled",
    next_action_net="online",
    loss="mse",
    policy_kwargs=dict(net_arch=[128, 64], optimizer_class=th.optim.AdamW),
)


#: keys of an entry that are not DeepSARSA keywords
ENV_KEYS = ("n_timesteps", "policy", "env_wrapper", "env_kwargs")


class Preset(NamedTuple):
    """One entry of a presets file."""

    #: the policy name, e.g. ``"MlpPolicy"``
    policy: str
    #: the training budget in env steps
    n_timesteps: int
    #: DeepSARSA keywords (``policy_kwargs`` parsed into a dict)
    hyperparameters: dict[str, Any]
    #: rl-zoo's ``env_wrapper``: a wrapper's import path, ``{path: kwargs}``, or a list of them,
    #: applied innermost first (wrappers the env needs, e.g. action masks); None if there are none
    env_wrapper: Any = None
    #: rl-zoo's ``env_kwargs``: keywords of ``gym.make`` (e.g. ``max_episode_steps``)
    env_kwargs: dict[str, Any] = {}


def parse_policy_kwargs(text: str, name: str = "policy_kwargs") -> dict[str, Any]:
    """
    Parse rl-zoo's ``policy_kwargs`` string, ``"dict(net_arch=[256, 256])"``, without ``eval``:
    only literal values (numbers, strings, lists, tuples, dicts) are accepted.

    :param text: the string
    :param name: the hyperparameter it is the value of, for the error message
    :return: the keyword arguments
    """
    try:
        call = ast.parse(text.strip(), mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "dict" and not call.args):
            raise ValueError("expected dict(key=value, ...)")
        return {str(keyword.arg): ast.literal_eval(keyword.value) for keyword in call.keywords}
    except (ValueError, SyntaxError) as error:
        raise ValueError(f"{name} must be a literal 'dict(key=value, ...)', got {text!r}: {error}") from error


def load_presets(path: str | Path = PRESETS_FILE) -> dict[str, Preset]:
    """
    Read a presets file in rl-zoo's format.

    :param path: the YAML file (DeepSARSA's own by default)
    :return: the presets by env id
    """
    path = Path(path)
    try:
        entries = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: not a readable YAML presets file: {error}") from error
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: expected a mapping of env ids to hyperparameters, got {type(entries).__name__}")
    presets = {}
    for env_id, entry in entries.items():
        if env_id in ZOO_FALLBACK_ENTRIES:
            continue
        if not isinstance(entry, dict) or "n_timesteps" not in entry:
            raise ValueError(f"{path}: the entry {env_id!r} must be a mapping with n_timesteps")
        hyperparameters = {key: value for key, value in entry.items() if key not in ENV_KEYS}
        if isinstance(hyperparameters.get("policy_kwargs"), str):
            hyperparameters["policy_kwargs"] = parse_policy_kwargs(hyperparameters["policy_kwargs"])
        env_kwargs = entry.get("env_kwargs") or {}
        if not isinstance(env_kwargs, dict):
            raise ValueError(f"{path}: env_kwargs of {env_id!r} must be a mapping of gym.make keywords, got {env_kwargs!r}")
        policy, n_timesteps = str(entry.get("policy", "MlpPolicy")), int(entry["n_timesteps"])
        presets[env_id] = Preset(policy, n_timesteps, hyperparameters, entry.get("env_wrapper"), dict(env_kwargs))
    return presets


def variant_presets(next_action: str) -> dict[str, Preset]:
    """
    The per-variant presets of ``next_action`` (:data:`VARIANT_PRESETS_FILES`), without the task presets that
    already use it.

    :param next_action: one of :data:`NEXT_ACTIONS`
    :return: the presets by env id (empty where the variant has none)
    """
    if next_action not in NEXT_ACTIONS:
        raise ValueError(f"next_action must be one of {list(NEXT_ACTIONS)}, got {next_action!r}")
    path = VARIANT_PRESETS_FILES[next_action]
    presets = load_presets(path) if path.is_file() else {}
    for env_id, entry in presets.items():
        if entry.hyperparameters.get("next_action") != next_action:
            raise ValueError(f"{path}: the entry {env_id!r} must have next_action {next_action!r}")
    return presets


def preset(env_id: str, next_action: str | None = None) -> Preset:
    """
    DeepSARSA's preset for ``env_id`` (a fresh copy each call, safe to modify).

    :param env_id: one of the env ids in :data:`PRESETS_FILE`
    :param next_action: a variant (one of :data:`NEXT_ACTIONS`): the hyperparameters tuned for it, which are the
        task's preset where it uses that variant, else its per-variant preset (:func:`variant_presets`); None: the
        task's preset, whichever variant it uses
    :return: the policy name, the budget and the keyword arguments
    """
    presets = load_presets()
    if env_id not in presets:
        raise ValueError(f"no DeepSARSA preset for env_id={env_id!r}; presets exist for {sorted(presets)}")
    if next_action is None or presets[env_id].hyperparameters.get("next_action") == next_action:
        return presets[env_id]
    per_variant = variant_presets(next_action)
    if env_id not in per_variant:
        tuned = sorted(per_variant) + sorted(
            other for other, entry in presets.items() if entry.hyperparameters.get("next_action") == next_action
        )
        raise ValueError(
            f"no DeepSARSA preset for env_id={env_id!r} with next_action={next_action!r} (its preset uses "
            f"{presets[env_id].hyperparameters.get('next_action')!r}; {next_action!r} has presets for {sorted(tuned)}). "
            f"Untuned, pass next_action={next_action!r} with preset({env_id!r}).hyperparameters"
        )
    return per_variant[env_id]
