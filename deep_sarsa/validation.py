"""Checks of DeepSARSA's arguments: each failure names the parameter and says what was expected."""

import inspect
import itertools
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.preprocessing import get_action_dim, get_obs_shape, is_image_space
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, FlattenExtractor, NatureCNN
from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit
from stable_baselines3.dqn.policies import DQNPolicy
from stable_baselines3.her.her_replay_buffer import HerReplayBuffer

NEXT_ACTIONS: tuple[str, ...] = ("sampled", "expected", "stored")
LOSSES: tuple[str, ...] = ("mse", "huber")
NEXT_ACTION_NETS: tuple[str, ...] = ("target", "online")
TARGET_UPDATE_UNITS: tuple[str, ...] = ("step", "episode")
TRAIN_FREQ_UNITS: tuple[str, ...] = ("step", "episode")
#: A replay buffer estimated above this fraction of the available memory is warned about
BUFFER_MEMORY_WARNING_FRACTION = 0.5


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _is_subclass(value: Any, base: type) -> bool:
    return isinstance(value, type) and issubclass(value, base)


def _require(ok: bool, name: str, expected: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=5)


def parse_target_update_interval(value: Any) -> tuple[int, str]:
    """
    Turn ``target_update_interval`` into ``(frequency, unit)``.

    :param value: an int (environment steps) or a tuple ``(K, "step")`` / ``(K, "episode")``
    :return: the frequency and its unit
    """
    if isinstance(value, (tuple, list)):
        _require(
            len(value) == 2 and isinstance(value[1], str) and value[1] in TARGET_UPDATE_UNITS,
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


def check_total_timesteps(total_timesteps: Any) -> int:
    """
    ``learn()``'s step count as an int. 0 is accepted (``learn`` then returns at once, as DQN's),
    and so is a float with an integer value (``1e5``), as SB3 users write it.

    :param total_timesteps: the value given to ``learn()``
    :return: it as an int
    """
    ok = (_is_int(total_timesteps) or (_is_number(total_timesteps) and float(total_timesteps).is_integer())) and (
        total_timesteps >= 0
    )
    _require(ok, "total_timesteps", "a non-negative integer", total_timesteps)
    return int(total_timesteps)


def check_learning_rate_value(value: Any, progress_remaining: float) -> None:
    """
    Refuse a value of the learning-rate schedule that is not a non-negative finite number.

    :param value: what the schedule gave
    :param progress_remaining: where it was evaluated (from 1 to 0)
    """
    if not (_is_number(value) and math.isfinite(value) and value >= 0):
        raise ValueError(
            "learning_rate must be a non-negative finite number (or a schedule giving one), "
            f"got {value!r} from the schedule at progress_remaining={progress_remaining:.4g}"
        )


def _check_train_freq(train_freq: Any) -> None:
    expected = "a positive integer or a tuple (n, 'step'|'episode')"
    if isinstance(train_freq, (tuple, list)):
        _require(len(train_freq) == 2, "train_freq", expected, train_freq)
        frequency, unit = train_freq
        unit_value = unit.value if isinstance(unit, TrainFrequencyUnit) else unit
        _require(isinstance(unit_value, str) and unit_value in TRAIN_FREQ_UNITS, "train_freq", expected, train_freq)
    else:
        frequency = train_freq
    _require(_is_int(frequency) and frequency >= 1, "train_freq", expected, train_freq)


def _check_device(device: Any) -> None:
    expected = "'auto' or a torch device ('cpu', 'cuda', 'cuda:0', 'mps', ...)"
    if isinstance(device, th.device):
        return
    _require(isinstance(device, str), "device", expected, device)
    if device == "auto":
        return
    try:
        th.device(device)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"device must be {expected}, got {device!r}") from error


def check_policy_kwargs(policy_kwargs: Any) -> None:
    """
    Check the type of the keywords SB3's DQN policies take (the policy itself checks the rest).

    :param policy_kwargs: ``None`` or a dict
    """
    _require(
        policy_kwargs is None or (isinstance(policy_kwargs, dict) and all(isinstance(key, str) for key in policy_kwargs)),
        "policy_kwargs",
        "None or a dict of keyword arguments for the policy, e.g. dict(net_arch=[64, 64])",
        policy_kwargs,
    )
    if not policy_kwargs:
        return
    net_arch = policy_kwargs.get("net_arch")
    _require(
        net_arch is None or (isinstance(net_arch, (list, tuple)) and all(_is_int(size) and size >= 1 for size in net_arch)),
        "policy_kwargs['net_arch']",
        "a list of positive layer sizes, e.g. [64, 64]",
        net_arch,
    )
    classes: list[tuple[str, type, str]] = [
        ("activation_fn", th.nn.Module, "a torch.nn.Module class, e.g. torch.nn.Tanh"),
        ("optimizer_class", th.optim.Optimizer, "a torch.optim.Optimizer class, e.g. torch.optim.Adam"),
        ("features_extractor_class", BaseFeaturesExtractor, "a subclass of SB3's BaseFeaturesExtractor"),
    ]
    for key, base, expected in classes:
        if key in policy_kwargs:
            _require(_is_subclass(policy_kwargs[key], base), f"policy_kwargs['{key}']", expected, policy_kwargs[key])
    for key in ("optimizer_kwargs", "features_extractor_kwargs"):
        value = policy_kwargs.get(key)
        _require(value is None or isinstance(value, dict), f"policy_kwargs['{key}']", "None or a dict", value)
    if "normalize_images" in policy_kwargs:
        _require(_is_bool(policy_kwargs["normalize_images"]), "policy_kwargs['normalize_images']", "a bool", policy_kwargs)


def check_policy(policy: Any, aliases: dict[str, type], policy_kwargs: dict[str, Any] | None) -> None:
    """
    Refuse a policy that is not a Q-network policy, and policy keywords it does not take.

    :param policy: the ``policy`` argument (an alias or a class)
    :param aliases: the algorithm's policy aliases
    :param policy_kwargs: the policy's keywords (already type-checked)
    """
    names = ", ".join(repr(name) for name in aliases)
    expected = f"one of {names} or a subclass of stable_baselines3.dqn.policies.DQNPolicy (a Q-network policy)"
    name = policy if isinstance(policy, str) else getattr(policy, "__name__", repr(policy))
    if isinstance(policy, str):
        _require(policy in aliases, "policy", expected, policy)
        policy = aliases[policy]
    _require(_is_subclass(policy, DQNPolicy), "policy", expected, policy)
    if policy_kwargs:
        parameters = inspect.signature(policy.__init__).parameters
        accepted = set(parameters) - {"self", "observation_space", "action_space", "lr_schedule"}
        takes_any = any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values())
        unknown = sorted(set(policy_kwargs) - accepted)
        if unknown and not takes_any:
            raise ValueError(
                f"policy_kwargs must hold keywords of {name}, got unknown keys {unknown}; it takes {sorted(accepted)}"
            )


def check_hyperparameters(
    *,
    learning_rate: float | Callable[[float], float],
    buffer_size: int,
    learning_starts: int,
    batch_size: int,
    tau: float,
    gamma: float,
    train_freq: Any,
    gradient_steps: int,
    n_steps: int,
    target_update_interval: int | tuple[int, str],
    exploration_fraction: float,
    exploration_initial_eps: float,
    exploration_final_eps: float,
    max_grad_norm: float,
    next_action: str,
    loss: str,
    next_action_net: Any = "target",
    policy_kwargs: Any = None,
    replay_buffer_class: Any = None,
    replay_buffer_kwargs: Any = None,
    optimize_memory_usage: Any = False,
    stats_window_size: Any = 100,
    device: Any = "auto",
    use_masking: Any = True,
    check_finite: Any = True,
    flush_denormal: Any = True,
    warn: bool = True,
    **others: Any,
) -> None:
    """
    Refuse hyperparameters that cannot work, before anything is built; warn about those DQN
    accepts but that are probably a mistake (``tau=0``, ``learning_rate=0``, ``max_grad_norm=0``,
    ``batch_size > buffer_size``).

    :param warn: whether to warn (the checks at ``learn()`` leave the warnings to the constructor)
    :param others: the constructor's other keywords (checked by SB3 where they are used)

    :raises ValueError: naming the first bad parameter, what it must be and what it was
    """
    _require(
        isinstance(next_action, str) and next_action in NEXT_ACTIONS, "next_action", f"one of {NEXT_ACTIONS}", next_action
    )
    _require(isinstance(loss, str) and loss in LOSSES, "loss", f"one of {LOSSES}", loss)
    _require(
        isinstance(next_action_net, str) and next_action_net in NEXT_ACTION_NETS,
        "next_action_net",
        f"one of {NEXT_ACTION_NETS}",
        next_action_net,
    )
    initial_lr = learning_rate(1.0) if callable(learning_rate) else learning_rate
    _require(
        _is_number(initial_lr) and math.isfinite(initial_lr) and initial_lr >= 0,
        "learning_rate",
        "a non-negative finite number (or a schedule giving one)",
        initial_lr,
    )
    _require(_is_int(buffer_size) and buffer_size >= 1, "buffer_size", "a positive integer", buffer_size)
    _require(_is_int(batch_size) and batch_size >= 1, "batch_size", "a positive integer", batch_size)
    _require(_is_int(learning_starts) and learning_starts >= 0, "learning_starts", "a non-negative integer", learning_starts)
    _require(_is_number(tau) and 0 <= tau <= 1, "tau", "in [0, 1]", tau)
    _require(_is_number(gamma) and 0 <= gamma <= 1, "gamma", "in [0, 1]", gamma)
    _check_train_freq(train_freq)
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
    _require(_is_number(max_grad_norm) and max_grad_norm >= 0, "max_grad_norm", "a non-negative number", max_grad_norm)
    check_policy_kwargs(policy_kwargs)
    _require(
        replay_buffer_class is None or _is_subclass(replay_buffer_class, ReplayBuffer),
        "replay_buffer_class",
        "None or a subclass of SB3's ReplayBuffer",
        replay_buffer_class,
    )
    _require(
        replay_buffer_kwargs is None or isinstance(replay_buffer_kwargs, dict),
        "replay_buffer_kwargs",
        "None or a dict",
        replay_buffer_kwargs,
    )
    _require(
        _is_int(stats_window_size) and stats_window_size >= 1, "stats_window_size", "a positive integer", stats_window_size
    )
    _check_device(device)
    for name, value in [
        ("optimize_memory_usage", optimize_memory_usage),
        ("use_masking", use_masking),
        ("check_finite", check_finite),
        ("flush_denormal", flush_denormal),
    ]:
        _require(_is_bool(value), name, "True or False", value)
    if warn:
        _warn_probable_mistakes(initial_lr, buffer_size, batch_size, tau, max_grad_norm)


def _warn_probable_mistakes(learning_rate: float, buffer_size: int, batch_size: int, tau: float, max_grad_norm: float) -> None:
    if tau == 0:
        _warn("tau=0: the target network is never updated (it keeps its initial weights); DQN accepts it, as does DeepSARSA")
    if learning_rate == 0:
        _warn("learning_rate=0: the Q-network is never updated; DQN accepts it, as does DeepSARSA")
    if max_grad_norm == 0:
        _warn("max_grad_norm=0: every gradient is clipped to zero, so the Q-network is never updated")
    if batch_size > buffer_size:
        _warn(
            f"batch_size ({batch_size}) is larger than buffer_size ({buffer_size}): minibatches are drawn with "
            "replacement, so they repeat transitions"
        )


def check_n_steps_observations(n_steps: int, replay_buffer_class: Any, observation_space: spaces.Space) -> None:
    """
    Refuse n-step returns on Dict observations, which SB3's ``NStepReplayBuffer`` does not support.

    :param n_steps: the ``n_steps`` argument
    :param replay_buffer_class: the ``replay_buffer_class`` argument (n_steps is ignored with one)
    :param observation_space: the env's observation space
    """
    if n_steps > 1 and replay_buffer_class is None and isinstance(observation_space, spaces.Dict):
        raise ValueError(
            f"n_steps must be 1 with a Dict observation space, got {n_steps}: SB3's NStepReplayBuffer "
            "does not support Dict observations (flatten them with gymnasium.wrappers.FlattenObservation)"
        )


def check_discrete_start(action_space: spaces.Discrete) -> None:
    """
    Refuse a Discrete action space that does not start at 0 (``Discrete(n, start=k)``).

    :param action_space: the env's action space
    """
    if int(action_space.start) != 0:
        raise ValueError(
            f"the env's action_space must start at 0 (the Q-network's outputs are indexed 0..n-1), got {action_space}: "
            "wrap the env with deep_sarsa.wrappers.ZeroBasedActions, which maps action i to i + start"
        )


def _space_bytes(space: spaces.Space) -> int:
    """Bytes of one observation of ``space`` as SB3's replay buffers store it."""
    if isinstance(space, spaces.Dict):
        return sum(_space_bytes(subspace) for subspace in space.spaces.values())
    shape = get_obs_shape(space)
    assert isinstance(shape, tuple)
    dtype = np.dtype(space.dtype) if space.dtype is not None else np.dtype(np.float32)
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def replay_buffer_bytes(
    observation_space: spaces.Space,
    action_space: spaces.Space,
    buffer_size: int,
    n_envs: int,
    optimize_memory_usage: bool,
) -> int:
    """
    Estimate the memory of SB3's replay buffer: observations, next observations (unless
    ``optimize_memory_usage``, which a Dict observation space does not use), actions, rewards,
    episode ends and time-outs, for ``buffer_size // n_envs`` rows of ``n_envs`` transitions.

    :param observation_space: the observation space
    :param action_space: the action space
    :param buffer_size: the ``buffer_size`` argument
    :param n_envs: the number of envs
    :param optimize_memory_usage: the ``optimize_memory_usage`` argument
    :return: the estimate in bytes
    """
    transitions = max(buffer_size // n_envs, 1) * n_envs
    observation = _space_bytes(observation_space)
    next_observation = 0 if optimize_memory_usage and not isinstance(observation_space, spaces.Dict) else observation
    action_dtype = np.dtype(action_space.dtype) if action_space.dtype is not None else np.dtype(np.float32)
    action = get_action_dim(action_space) * (4 if action_dtype == np.float64 else action_dtype.itemsize)
    reward_done_timeout = 3 * np.dtype(np.float32).itemsize
    return transitions * (observation + next_observation + action + reward_done_timeout)


def memory_bytes() -> tuple[int | None, int | None]:
    """
    :return: this machine's total and available memory in bytes (``/proc/meminfo``, else ``sysconf``); None where unknown
    """
    found: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    found[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    total = found.get("MemTotal")
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = None
    return total, found.get("MemAvailable", total)


def check_buffer_memory(estimate: int, buffer_size: int, total: int | None, available: int | None, n_envs: int = 1) -> None:
    """
    Refuse a replay buffer that cannot fit in this machine's memory; warn about one that takes
    more than :data:`BUFFER_MEMORY_WARNING_FRACTION` of the available memory.

    :param estimate: the buffer's estimated size in bytes (:func:`replay_buffer_bytes`)
    :param buffer_size: the ``buffer_size`` argument
    :param total: the machine's total memory in bytes (None: unknown, no check)
    :param available: the memory available now in bytes (None: unknown, no warning)
    :param n_envs: the number of envs (the buffer holds a row of each: with more envs than
        ``buffer_size``, ``n_envs`` sets its size)
    """
    name = "n_envs" if n_envs > buffer_size else "buffer_size"
    setting = f"n_envs={n_envs} (one row of the buffer per env)" if n_envs > buffer_size else f"buffer_size={buffer_size}"
    _check_fits(
        estimate, name, setting, "the replay buffer", total, available, " (optimize_memory_usage=True halves the observations)"
    )


def _check_fits(
    estimate: int, name: str, setting: str, use: str, total: int | None, available: int | None, hint: str = ""
) -> None:
    """
    Refuse an allocation larger than this machine's memory; warn about one larger than
    :data:`BUFFER_MEMORY_WARNING_FRACTION` of the memory available now.

    :param estimate: its estimated size in bytes
    :param name: the parameter that sets it, named in the error
    :param setting: that parameter's value as shown (``"batch_size=64"``)
    :param use: what the memory is for (``"the replay buffer"``)
    :param total: the machine's total memory in bytes (None: unknown, no check)
    :param available: the memory available now in bytes (None: unknown, no warning)
    :param hint: what to add to the error (how to need less)
    """
    gigabytes = estimate / 2**30
    if total is not None and estimate > total:
        raise ValueError(
            f"{name} must fit in memory: {setting} needs about {gigabytes:.1f} GiB for {use}, more than this machine's "
            f"{total / 2**30:.1f} GiB{hint}"
        )
    if available is not None and estimate > BUFFER_MEMORY_WARNING_FRACTION * available:
        _warn(
            f"{setting} needs about {gigabytes:.1f} GiB for {use}, more than "
            f"{BUFFER_MEMORY_WARNING_FRACTION:.0%} of the {available / 2**30:.1f} GiB of memory available now"
        )


def _flat_features(space: spaces.Space) -> int:
    """The inputs of an MLP on ``space`` (SB3's ``get_flattened_obs_dim``), in Python integers: nothing is allocated."""
    if isinstance(space, spaces.Dict):
        return sum(_flat_features(subspace) for subspace in space.spaces.values())
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return sum(int(n) for n in np.asarray(space.nvec).reshape(-1))
    shape = space.shape if space.shape is not None else ()
    if not all(isinstance(dim, (int, np.integer)) and dim >= 0 for dim in shape):
        raise ValueError(f"observation_space {space} has the shape {shape!r}, not a tuple of non-negative integers")
    return math.prod(int(dim) for dim in shape)


def _nature_cnn(space: spaces.Space, features_dim: int) -> tuple[int, int]:
    """Parameters and outputs of SB3's ``NatureCNN`` on an image space (channels first, as SB3 feeds it)."""
    shape = tuple(int(dim) for dim in (space.shape or ()))
    if len(shape) != 3:
        return 0, _flat_features(space)
    channels, height, width = shape
    for kernel, stride in ((8, 4), (4, 2), (3, 1)):
        height, width = max((height - kernel) // stride + 1, 0), max((width - kernel) // stride + 1, 0)
    convolutions = (channels * 8 * 8 + 1) * 32 + (32 * 4 * 4 + 1) * 64 + (64 * 3 * 3 + 1) * 64
    return convolutions + (64 * height * width + 1) * features_dim, features_dim


def _extractor(space: spaces.Space, extractor: Any, kwargs: dict[str, Any]) -> tuple[int, int]:
    """Parameters and outputs of a features extractor of SB3's (any other is estimated as a flattening one)."""
    if isinstance(extractor, type) and issubclass(extractor, NatureCNN):
        return _nature_cnn(space, int(kwargs.get("features_dim", 512)))
    if isinstance(extractor, type) and issubclass(extractor, CombinedExtractor) and isinstance(space, spaces.Dict):
        parameters = features = 0
        for subspace in space.spaces.values():
            image = is_image_space(subspace, normalized_image=bool(kwargs.get("normalized_image", False)))
            sizes = _nature_cnn(subspace, int(kwargs.get("cnn_output_dim", 256))) if image else (0, _flat_features(subspace))
            parameters, features = parameters + sizes[0], features + sizes[1]
        return parameters, features
    return 0, _flat_features(space)


def q_network_parameters(
    observation_space: spaces.Space, action_space: spaces.Space, policy_class: Any, policy_kwargs: dict[str, Any] | None
) -> int:
    """
    The parameters of the Q-network SB3's DQN policies build for these spaces and keywords (features
    extractor and MLP), counted from the declaration alone: nothing is built or allocated. The
    policy holds two (``q_net`` and ``q_net_target``).

    :param observation_space: the observation space
    :param action_space: a Discrete action space
    :param policy_class: the policy class (its default features extractor)
    :param policy_kwargs: its keywords (``net_arch``, ``features_extractor_class``, ``features_extractor_kwargs``)
    :return: the parameter count of one Q-network
    """
    if not isinstance(action_space, spaces.Discrete):
        raise ValueError(f"action_space must be Discrete, got {action_space}")
    kwargs = dict(policy_kwargs or {})
    default = inspect.signature(policy_class.__init__).parameters.get("features_extractor_class")
    extractor = kwargs.get("features_extractor_class", FlattenExtractor if default is None else default.default)
    extractor_parameters, features = _extractor(
        observation_space, extractor, dict(kwargs.get("features_extractor_kwargs") or {})
    )
    net_arch = kwargs.get("net_arch")
    if net_arch is None:
        net_arch = [] if extractor is NatureCNN else [64, 64]
    sizes = [features, *(int(size) for size in net_arch), int(action_space.n)]
    return extractor_parameters + sum((inputs + 1) * outputs for inputs, outputs in itertools.pairwise(sizes))


def largest_part(
    observation_space: spaces.Space, action_space: spaces.Space, policy_class: Any, policy_kwargs: dict[str, Any] | None
) -> str:
    """
    :return: which of ``observation_space``, ``action_space`` and ``net_arch`` makes the Q-network
        largest (the one whose replacement by a trivial value shrinks it most), for messages
    """
    smallest, blamed = None, "net_arch"
    for part in ("observation_space", "action_space", "net_arch"):
        count = q_network_parameters(
            spaces.Box(0, 1, (1,)) if part == "observation_space" else observation_space,
            spaces.Discrete(1) if part == "action_space" else action_space,
            policy_class,
            {**(policy_kwargs or {}), "net_arch": []} if part == "net_arch" else policy_kwargs,
        )
        if smallest is None or count < smallest:
            smallest, blamed = count, part
    return blamed


def batch_bytes(observation_space: spaces.Space, action_space: spaces.Space, batch_size: int, net_arch: Any = None) -> int:
    """
    Estimate the memory of one gradient step's minibatch: the sampled transitions (NumPy, then
    torch, observations also as float32), and the activations of the online and target networks
    (forward and backward).

    :param observation_space: the observation space
    :param action_space: the action space
    :param batch_size: the ``batch_size`` argument
    :param net_arch: the hidden layer sizes (None: DQN's [64, 64])
    :return: the estimate in bytes
    """
    observation = _space_bytes(observation_space)
    features = _flat_features(observation_space)
    n_actions = int(action_space.n) if isinstance(action_space, spaces.Discrete) else get_action_dim(action_space)
    hidden = sum(int(size) for size in (net_arch if net_arch is not None else [64, 64]))
    transitions = 2 * (2 * observation + 3 * 8) + 2 * 4 * features
    activations = 2 * 3 * 4 * (features + hidden + n_actions)
    return batch_size * (transitions + activations)


def check_batch_memory(estimate: int, batch_size: int, total: int | None, available: int | None) -> None:
    """
    Refuse a minibatch that cannot fit in this machine's memory; warn about one that takes more than
    :data:`BUFFER_MEMORY_WARNING_FRACTION` of the available memory.

    :param estimate: its estimated size in bytes (:func:`batch_bytes`)
    :param batch_size: the ``batch_size`` argument
    :param total: the machine's total memory in bytes (None: unknown, no check)
    :param available: the memory available now in bytes (None: unknown, no warning)
    """
    _check_fits(estimate, "batch_size", f"batch_size={batch_size}", "each gradient step", total, available)


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


#: ``__init__`` keywords that are not settings of the model
_NOT_SETTINGS = frozenset({"self", "policy", "env", "_init_setup_model", "warn"})


def model_settings(model: Any) -> dict[str, Any]:
    """
    A model's current settings as its constructor takes them: each keyword of
    :func:`check_hyperparameters` and of its class's ``__init__`` (a subclass's ``*args, **kwargs`` pass
    DeepSARSA's on) read from the attribute of that name (or ``_name``), ``train_freq`` as SB3's
    ``TrainFreq`` turned back into ``(n, unit)``. For :func:`check_hyperparameters` after a change
    (an assignment, ``load(..., **kwargs)``, ``custom_objects``, a file's saved values).

    :param model: the model
    :return: the settings by keyword
    """
    settings: dict[str, Any] = {}
    checked, constructor = inspect.signature(check_hyperparameters), inspect.signature(type(model).__init__)
    for parameter in [*checked.parameters.values(), *constructor.parameters.values()]:
        keyword = parameter.name
        if (
            keyword in _NOT_SETTINGS
            or keyword in settings
            or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        ):
            continue
        for attribute in (keyword, f"_{keyword}"):
            if hasattr(model, attribute):
                value = getattr(model, attribute)
                settings[keyword] = (value.frequency, value.unit.value) if isinstance(value, TrainFreq) else value
                break
    return settings


def check_model_settings(model: Any) -> None:
    """
    Validate a model's current settings as the constructor validates its arguments (raising
    ``ValueError`` naming the setting): values changed since, by assignment or by
    ``load(..., **kwargs)`` / ``custom_objects``, are checked too. Called at set-up and when ``learn()`` starts.

    :param model: the model
    """
    check_hyperparameters(**model_settings(model), warn=False)
    check_policy(model.policy_class, model.policy_aliases, model.policy_kwargs)


def check_env_spaces(
    action_space: spaces.Space, observation_space: spaces.Space, n_steps: int, replay_buffer_class: Any
) -> None:
    """
    Refuse an env DeepSARSA cannot learn on: an action space other than ``Discrete`` from 0, n-step
    returns on Dict observations.

    :param action_space: the env's action space
    :param observation_space: the env's observation space
    :param n_steps: the ``n_steps`` argument
    :param replay_buffer_class: the ``replay_buffer_class`` argument
    """
    if not isinstance(action_space, spaces.Discrete):
        raise ValueError(
            "DeepSARSA only supports Discrete action spaces (one Q-value per action), "
            f"but the env's action_space is {action_space}. "
            "For continuous actions use SAC/TD3; for MultiDiscrete, flatten it into one Discrete space."
        )
    check_discrete_start(action_space)
    check_n_steps_observations(n_steps, replay_buffer_class, observation_space)


def check_model_memory(model: Any) -> None:
    """
    Refuse (or warn about) a replay buffer (:func:`check_buffer_memory`, with ``buffer_size`` and
    ``n_envs``) or a minibatch (:func:`check_batch_memory`) that does not fit in memory, before
    either is allocated.

    :param model: the model being set up (or built with ``_init_setup_model=False``)
    """
    total, available = memory_bytes()
    estimate = replay_buffer_bytes(
        model.observation_space, model.action_space, model.buffer_size, model.n_envs, model.optimize_memory_usage
    )
    check_buffer_memory(estimate, model.buffer_size, total, available, model.n_envs)
    net_arch = (model.policy_kwargs or {}).get("net_arch")
    batch = batch_bytes(model.observation_space, model.action_space, model.batch_size, net_arch)
    check_batch_memory(batch, model.batch_size, total, available)


def check_setup(model: Any) -> None:
    """
    The checks that need the model's replay buffer and envs: ``next_action="stored"`` needs a buffer
    in time order; warn when the envs outnumber the steps between target updates.

    :param model: the model, just set up
    """
    if model.next_action == "stored" and isinstance(model.replay_buffer, HerReplayBuffer):
        raise ValueError(
            "next_action='stored' reads a' from the next row of the replay buffer, which "
            "HerReplayBuffer does not keep in order: use next_action='sampled' or 'expected'"
        )
    frequency, unit = model._target_update_frequency, model._target_update_unit  # parsed by _setup_model
    if unit == "step" and model.n_envs > 1 and model.n_envs > frequency:
        warnings.warn(
            "The number of environments used is greater than the target network "
            f"update interval ({model.n_envs} > {frequency}), "
            "therefore the target network will be updated after each call to env.step() "
            f"which corresponds to {model.n_envs} steps.",
            stacklevel=3,
        )


#: With ``target_update_interval=(K, "episode")``, env steps without any episode end before a warning
#: that the target network is not being synced (an env whose episodes never end)
NO_EPISODE_END_WARNING_STEPS = 100_000


def warn_if_no_episode_ends(model: Any) -> None:
    """
    Warn once when no episode has ended for :data:`NO_EPISODE_END_WARNING_STEPS` steps while the target
    network is synced every K episodes: it is never synced. Called at every env step.

    :param model: the model (its ``_episode_num_seen``, ``_timesteps_at_episode_end`` and
        ``_warned_no_episode_end`` keep the state)
    """
    if model._episode_num != model._episode_num_seen:
        model._episode_num_seen, model._timesteps_at_episode_end = model._episode_num, model.num_timesteps
    elif (
        not model._warned_no_episode_end
        and model.num_timesteps - model._timesteps_at_episode_end >= NO_EPISODE_END_WARNING_STEPS
    ):
        model._warned_no_episode_end = True
        warnings.warn(
            f"target_update_interval={model.target_update_interval!r} counts episodes, but no episode has ended in "
            f"{model.num_timesteps - model._timesteps_at_episode_end} env steps: the target network is not being "
            "synced (does the env ever end an episode? a TimeLimit wrapper ends them)",
            UserWarning,
            stacklevel=3,
        )
