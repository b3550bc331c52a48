import functools
import io
import json
import os
import pathlib
import warnings
import zipfile
from collections.abc import Iterable
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.type_aliases import (
    DictReplayBufferSamples,
    GymEnv,
    MaybeCallback,
    ReplayBufferSamples,
    RolloutReturn,
    Schedule,
    TrainFreq,
)
from stable_baselines3.common.utils import LinearSchedule, get_parameters_by_name, polyak_update
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.dqn import DQN
from stable_baselines3.dqn.policies import CnnPolicy, DQNPolicy, MlpPolicy, MultiInputPolicy, QNetwork
from stable_baselines3.her.her_replay_buffer import HerReplayBuffer
from torch.optim import optimizer as th_optimizer

from deep_sarsa.buffers import actions_after, bootstrap_rows, mark_newest_rows_truncated, sample_with_indices, terminated
from deep_sarsa.forward import DirectForward
from deep_sarsa.masking import attach_masks, check_action_masks, masks_of, sample_valid_actions
from deep_sarsa.targets import (
    LossName,
    epsilon_greedy_probs,
    expected_sarsa_target,
    greedy_actions,
    sample_epsilon_greedy,
    sarsa_target,
    td_loss,
)
from deep_sarsa.validation import check_hyperparameters, parse_target_update_interval

SelfDeepSARSA = TypeVar("SelfDeepSARSA", bound="DeepSARSA")

NextActionName = Literal["sampled", "expected", "stored"]


class NextState(NamedTuple):
    """What a minibatch needs to know about the states it bootstraps from, beyond SB3's samples."""

    #: the stored next actions, ``(B, 1)`` long, -1 where none exists (``next_action="stored"``)
    stored_actions: th.Tensor | None
    #: the masks of valid actions in s', ``(B, A)`` bool (masking on)
    masks: th.Tensor | None
    #: whether that mask is known, ``(B, 1)``; rows with an unknown mask do not bootstrap
    masks_known: th.Tensor | None
    #: every row has a stored next action (no ε-greedy fallback needed), known without a device sync
    all_stored: bool = False


def _make_env(env_id: str) -> gym.Env:
    """
    ``gym.make(env_id)`` (``"module:EnvId"`` imports the module first), failing with the name.

    :param env_id: a registered environment id
    :return: the environment
    """
    try:
        return gym.make(env_id)
    except (gym.error.Error, ModuleNotFoundError) as error:
        raise ValueError(f"env={env_id!r} is not an environment Gymnasium can make: {error}") from error


def _with_fused_adam(policy_kwargs: dict[str, Any], device: th.device) -> dict[str, Any]:
    """
    ``policy_kwargs`` with ``fused=True`` added to the optimizer's keywords when the optimizer is
    PyTorch's Adam or AdamW (DQN's default is Adam), the device has fused kernels (CPU, CUDA)
    and the user did not choose an implementation (``fused``, ``foreach``, ``differentiable``).

    The fused kernel computes the same update as the default per-parameter ("single-tensor")
    CPU loop, in one pass over each parameter instead of a dozen small operations; results
    agree up to floating-point rounding (``tests/test_speed_equivalence.py``). It is about three
    times faster on small MLPs. Pass ``policy_kwargs=dict(optimizer_kwargs=dict(fused=False))``
    for PyTorch's default.

    :param policy_kwargs: the user's policy keywords (not modified)
    :param device: the device the policy lives on
    :return: the keywords to build the policy with
    """
    optimizer_class = policy_kwargs.get("optimizer_class", th.optim.Adam)
    optimizer_kwargs = dict(policy_kwargs.get("optimizer_kwargs") or {})
    chosen = {"fused", "foreach", "differentiable"} & set(optimizer_kwargs)
    if optimizer_class not in (th.optim.Adam, th.optim.AdamW) or chosen or th.device(device).type not in ("cpu", "cuda"):
        return policy_kwargs
    return {**policy_kwargs, "optimizer_kwargs": {**optimizer_kwargs, "fused": True}}


#: Gradient steps between two flushes of the optimizer's denormal values (``flush_denormal``):
#: every 10 was slower (the flush costs more than it saves), every 200 no faster
#: (benchmarks/results/throughput.md)
_FLUSH_INTERVAL = 50


def _flush_denormals(optimizer: th.optim.Optimizer) -> None:
    """
    Set to zero the denormal values of the optimizer's state tensors (Adam's moment estimates):
    those whose magnitude is below the smallest normal number of their dtype (1.2e-38 in float32).

    Such a value changes an Adam update by less than ``lr`` times 1e-30 (a second moment that small
    is far below ``eps`` and changes nothing), but x86 CPUs compute on denormals many times slower,
    on every thread.

    :param optimizer: the optimizer; its step counters (0-dimensional) and non-float entries are left alone
    """
    with th.no_grad():
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, th.Tensor) and value.dim() > 0 and value.is_floating_point():
                    value.masked_fill_(value.abs() < th.finfo(value.dtype).tiny, 0.0)


def _clip_grad_norm(grads: list[th.Tensor], max_norm: float) -> None:
    """
    ``torch.nn.utils.clip_grad_norm_`` for gradients on one device: the same operations in the
    same order (bit for bit the same result, ``tests/test_speed_equivalence.py``), without its
    per-call grouping by device and dtype, which costs as much as the arithmetic for a small MLP.

    :param grads: the gradients, all on one device and of one dtype
    :param max_norm: the largest total 2-norm allowed
    """
    if not grads:
        return
    total_norm = th.linalg.vector_norm(th.stack(th._foreach_norm(grads, 2.0)), 2.0)
    th._foreach_mul_(grads, th.clamp(max_norm / (total_norm + 1e-6), max=1.0))


def _optimizer_step(optimizer: th.optim.Optimizer) -> None:
    """
    ``optimizer.step()``. PyTorch wraps every optimizer's ``step`` in a function that runs the step
    hooks inside a profiler scope (``record_function``); where there is nothing for it to do (no
    hook registered, global or on this optimizer, and no profiler running), the step itself is
    called, which saves ~50 µs per gradient step for a small MLP (``benchmarks/results/throughput.md``).
    The update is the same (``tests/test_speed_equivalence.py``).

    :param optimizer: the optimizer
    """
    step = getattr(type(optimizer).step, "__wrapped__", None)
    if (
        step is None
        or optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or th_optimizer._global_optimizer_pre_hooks
        or th_optimizer._global_optimizer_post_hooks
        or th.autograd._profiler_enabled()
    ):
        optimizer.step()
    else:
        step(optimizer)


def _training_mode_modules(policy: DQNPolicy) -> list[th.nn.Module] | None:
    """
    The modules whose ``training`` flag ``policy.set_training_mode`` sets, where setting the flags
    directly does the same: SB3's ``DQNPolicy.set_training_mode`` (the policy and its online
    network; the target network stays in evaluation mode) over modules that all keep
    ``nn.Module.train``. ``None`` for anything else (a custom ``train``, say), which then goes
    through ``set_training_mode`` itself.

    :param policy: the policy
    :return: the modules, or None
    """
    modules = [policy, *policy.q_net.modules()]
    plain = (
        type(policy).set_training_mode is DQNPolicy.set_training_mode
        and type(policy.q_net).set_training_mode is BasePolicy.set_training_mode
        and all(type(module).train is th.nn.Module.train for module in modules)
    )
    return modules if plain else None


def _write_training_flags(modules: list[th.nn.Module], mode: bool) -> None:
    """
    Set the ``training`` flag of each module, as ``nn.Module.train`` sets it, without walking the
    module tree (see :func:`_training_mode_modules`).

    :param modules: the modules
    :param mode: True for training mode, False for evaluation mode
    """
    for module in modules:
        # What nn.Module.__setattr__ does for a plain attribute, without its checks
        object.__setattr__(module, "training", mode)


def _mean(values: list[th.Tensor]) -> float:
    """
    The mean of scalar tensors, as a float (one host synchronisation).

    :param values: at least one scalar tensor
    :return: their mean (the value itself for one: no stack and mean, which cost more than the value)
    """
    return values[0].item() if len(values) == 1 else th.stack(values).mean().item()


class NonFiniteError(ValueError):
    """An observation or a reward from the env was NaN or infinite."""


def _check_finite(
    new_obs: np.ndarray | dict[str, np.ndarray], reward: np.ndarray, infos: list[dict[str, Any]], dones: np.ndarray, step: int
) -> None:
    """
    Raise :class:`NonFiniteError` if a reward, a next observation or a terminal observation is NaN or ±inf.

    :param new_obs: the observations the envs returned
    :param reward: the rewards
    :param infos: the infos (terminal observations of the envs whose episode ended)
    :param dones: the episode ends
    :param step: the number of env steps so far, this one included
    """
    observations = [obs for obs in (new_obs.values() if isinstance(new_obs, dict) else [new_obs]) if obs.dtype.kind == "f"]
    # Fast path for the common step (no episode ended, all finite): few NumPy calls, as this runs at
    # every env step (benchmarks/results/throughput.md); count_nonzero is a C function, where
    # ndarray.any and .all go through Python
    if not np.count_nonzero(dones) and np.count_nonzero(np.isfinite(reward)) == reward.size:
        for obs in observations:
            if np.count_nonzero(np.isfinite(obs)) != obs.size:
                break
        else:
            return
    bad_envs = ~np.isfinite(np.asarray(reward, dtype=np.float64))
    what = "reward"
    if not bad_envs.any():
        what = "observation"
        for obs in observations:
            bad_envs |= ~np.isfinite(obs.reshape(len(bad_envs), -1)).all(axis=1)
        for done_env in np.flatnonzero(dones):
            terminal = infos[done_env].get("terminal_observation")
            parts = [] if terminal is None else terminal.values() if isinstance(terminal, dict) else [terminal]
            bad_envs[done_env] |= any(np.asarray(part).dtype.kind == "f" and not np.isfinite(part).all() for part in parts)
    if bad_envs.any():
        env = int(np.flatnonzero(bad_envs)[0])
        value = f" {reward[env]}" if what == "reward" else ""
        raise NonFiniteError(
            f"{what}{value} with NaN or inf from env {env} at step {step}: training stopped before it reached the replay "
            "buffer; the model is as it was before this step and can be saved (check_finite=False skips this check)"
        )


def _check_model_file(path: pathlib.Path) -> None:
    """
    Refuse, naming the file, what ``DeepSARSA.load`` cannot load: a missing file, a file that is
    not a zip or is truncated, a zip without SB3's ``data``, a model of another algorithm.

    :param path: the file (SB3 also tries it with ``.zip`` added)
    """
    if not path.exists() and path.with_name(path.name + ".zip").exists():
        path = path.with_name(path.name + ".zip")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError) as error:
        raise ValueError(
            f"{path} is not a model saved by SB3 (expected a complete zip file with a 'data' entry): {error}"
        ) from error
    if "next_action" not in data:
        module = data.get("policy_class", {}).get("__module__", "an unknown module")
        hint = " It looks like a DQN model: load it with stable_baselines3.DQN." if module.endswith("dqn.policies") else ""
        raise ValueError(f"{path} was not saved by DeepSARSA (its policy class comes from {module}).{hint}")


class DeepSARSA(OffPolicyAlgorithm):
    """
    Deep SARSA: a Q-network trained from a replay memory on the on-policy SARSA target.

    The algorithm of DQN (experience replay, target network, ε-greedy exploration), except for
    the TD target: DQN bootstraps from ``max_a Q_target(s', a)``, Deep SARSA from
    ``Q_target(s', a')`` where a' is the action the ε-greedy behaviour policy takes in s'.
    Its Q-values are those of the policy that actually acts, exploration included, which makes
    it avoid actions that are risky while exploring (the cliff of CliffWalking).

    It accepts every keyword of SB3's ``DQN`` with the same meaning and defaults (rename the
    class to switch), plus ``next_action`` and ``loss``; ``target_update_interval`` also
    accepts ``(K, "episode")``.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate, it can be a function
        of the current progress remaining (from 1 to 0)
    :param buffer_size: size of the replay buffer
    :param learning_starts: how many steps of the model to collect transitions for before learning starts
    :param batch_size: Minibatch size for each gradient update
    :param tau: the soft update coefficient ("Polyak update", between 0 and 1) default 1 for hard update
    :param gamma: the discount factor
    :param train_freq: Update the model every ``train_freq`` steps. Alternatively pass a tuple of frequency and unit
        like ``(5, "step")`` or ``(2, "episode")``.
    :param gradient_steps: How many gradient steps to do after each rollout (see ``train_freq``)
        Set to ``-1`` means to do as many gradient steps as steps done in the environment
        during the rollout.
    :param replay_buffer_class: Replay buffer class to use. If ``None``, it will be automatically selected
        (``ReplayBuffer``, ``DictReplayBuffer`` or ``NStepReplayBuffer``).
    :param replay_buffer_kwargs: Keyword arguments to pass to the replay buffer on creation.
    :param optimize_memory_usage: Enable a memory efficient variant of the replay buffer
        at a cost of more complexity.
    :param n_steps: When ``n_steps > 1``, uses n-step returns (with SB3's ``NStepReplayBuffer``):
        the target bootstraps from Q(s_{t+n}, a_{t+n}), with a_{t+n} obtained as ``next_action`` says.
    :param target_update_interval: update the target network every ``target_update_interval``
        environment steps, or every K episodes with ``(K, "episode")`` (the lecture's
        "sync every K episodes"; ``(K, "step")`` is the same as ``K``).
    :param exploration_fraction: fraction of entire training period over which the exploration rate is reduced
    :param exploration_initial_eps: initial value of random action probability
    :param exploration_final_eps: final value of random action probability
    :param max_grad_norm: The maximum value for the gradient clipping
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation (as for DQN)
    :param verbose: Verbosity level: 0 for no output, 1 for info messages (such as device or wrappers used), 2 for
        debug messages
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
        Setting it to auto, the code will be run on the GPU if possible.
    :param next_action: how the next action a' of the target ``r + γ·Q_target(s', a')`` is obtained:
        ``"sampled"`` (default, the lecture's algorithm) draws a' at update time from the current
        ε-greedy policy over the online network; ``"expected"`` (Expected SARSA) averages
        ``Q_target(s', ·)`` over that policy's probabilities; ``"stored"`` uses the action the
        agent actually took in s', read from the replay buffer (classic SARSA on
        (s, a, r, s', a') tuples), falling back to ``"sampled"`` where the episode was truncated
        or the next action has not been taken yet. Terminal transitions never bootstrap.
    :param loss: ``"mse"`` (default, the lecture's) or ``"huber"`` (SB3 DQN's smooth L1).
        MSE is the default because the SARSA target is noisy by design: with a sampled a', a rare
        exploratory step into a large penalty gives a rare, large target. MSE regresses to the
        mean of the targets, which is Q^π; Huber regresses to a value between their median and
        mean and hides the penalty. Measured on the risky-bridge MDP of
        ``benchmarks/loss_choice.py`` (ε = 0.2, 5 seeds): with a sampled a', Huber learns
        Q(start, edge) ≈ 8.15 where the exact Q^π is 5.73, and so prefers the risky route that the
        ε-greedy agent should avoid (5 runs of 5); MSE learns 5.76 and takes the safe route
        (``benchmarks/results/loss_choice.md``). On CartPole-v1 with rl-zoo's DQN settings (5 seeds)
        MSE also ends higher: median final return 500 against 227.8 with Huber
        (``benchmarks/results/learning.md``). Use ``"huber"`` for DQN's behaviour.
    :param use_masking: use invalid-action masks when the env provides them (an ``action_masks()``
        method on the env or a wrapper, as sb3-contrib's ``ActionMasker``): exploration and greedy
        actions are chosen among valid actions only, and a' in the targets too. ``False`` ignores them.
    :param check_finite: check every observation and reward for NaN or infinity as it arrives (a
        cheap test on small arrays) and stop training with a ``NonFiniteError`` that names the
        step and the env, before the value reaches the replay buffer: the model keeps its last
        good state and can still be saved. ``False`` skips the check.
    :param flush_denormal: every 50 gradient steps, set to zero the values in the optimizer's
        state (Adam's moment estimates) that are denormal: smaller in magnitude than the smallest
        normal float (1.2e-38 in float32). The moment estimates of parameters whose gradient stays
        zero (dead ReLU units) decay through that range, where x86 CPUs compute many times slower;
        on CartPole with rl-zoo's settings the optimizer step is about 3x faster without them, with
        any number of torch threads (``benchmarks/results/throughput.md``). An update changes by
        less than ``learning_rate`` times 1e-30. No process or thread state is touched. ``False``
        leaves the optimizer's state alone. (``torch.set_flush_denormal(True)`` has a similar effect,
        for SB3's DQN too, on the thread that calls it.)
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    exploration_schedule: Schedule
    q_net: QNetwork
    q_net_target: QNetwork
    policy: DQNPolicy

    def __init__(
        self,
        policy: str | type[DQNPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-4,
        buffer_size: int = 1_000_000,  # 1e6
        learning_starts: int = 100,
        batch_size: int = 32,
        tau: float = 1.0,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 4,
        gradient_steps: int = 1,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        target_update_interval: int | tuple[int, str] = 10000,
        exploration_fraction: float = 0.1,
        exploration_initial_eps: float = 1.0,
        exploration_final_eps: float = 0.05,
        max_grad_norm: float = 10,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        next_action: NextActionName = "sampled",
        loss: LossName = "mse",
        use_masking: bool = True,
        check_finite: bool = True,
        flush_denormal: bool = True,
        _init_setup_model: bool = True,
    ) -> None:
        check_hyperparameters(
            learning_rate=learning_rate,
            buffer_size=buffer_size,
            learning_starts=learning_starts,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            train_freq=train_freq,
            gradient_steps=gradient_steps,
            n_steps=n_steps,
            target_update_interval=target_update_interval,
            exploration_fraction=exploration_fraction,
            exploration_initial_eps=exploration_initial_eps,
            exploration_final_eps=exploration_final_eps,
            max_grad_norm=max_grad_norm,
            next_action=next_action,
            loss=loss,
        )
        if isinstance(env, str):
            env = _make_env(env)
        super().__init__(
            policy,
            env,
            learning_rate,
            buffer_size,
            learning_starts,
            batch_size,
            tau,
            gamma,
            train_freq,
            gradient_steps,
            action_noise=None,  # No action noise
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            n_steps=n_steps,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            seed=seed,
            sde_support=False,
            # Checked below, with a message that says what to use instead
            supported_action_spaces=None,
            support_multi_env=True,
        )
        # env is None only inside `load()`, which checks the saved action space against the env
        if env is not None and not isinstance(self.action_space, spaces.Discrete):
            raise ValueError(
                "DeepSARSA only supports Discrete action spaces (one Q-value per action), "
                f"but the env's action_space is {self.action_space}. "
                "For continuous actions use SAC/TD3; for MultiDiscrete, flatten it into one Discrete space."
            )

        self.exploration_initial_eps = exploration_initial_eps
        self.exploration_final_eps = exploration_final_eps
        self.exploration_fraction = exploration_fraction
        self.target_update_interval = target_update_interval
        self.next_action = next_action
        self.loss = loss
        self.use_masking = use_masking
        self.check_finite = check_finite
        self.flush_denormal = flush_denormal
        self._stop_requested = False
        self._learning = False
        # Whether the current env is masked (set by `learn()`), and the masks of its current states
        self._masking = False
        self._last_masks: np.ndarray | None = None
        # For updating the target network with multiple envs:
        self._n_calls = 0
        # For updating the target network every K episodes:
        self._episode_num_at_target_update = 0
        self.max_grad_norm = max_grad_norm
        # "epsilon" for the epsilon-greedy exploration
        self.exploration_rate = 0.0

        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        # The policy is built with PyTorch's fused Adam/AdamW unless the user chose the
        # implementation; ``self.policy_kwargs`` (saved with the model) stays as the user gave it
        user_policy_kwargs = self.policy_kwargs
        self.policy_kwargs = _with_fused_adam(user_policy_kwargs, self.device)
        try:
            super()._setup_model()
        finally:
            self.policy_kwargs = user_policy_kwargs
        self._create_aliases()
        # Copy running stats, see SB3 GH issue #996
        self.batch_norm_stats = get_parameters_by_name(self.q_net, ["running_"])
        self.batch_norm_stats_target = get_parameters_by_name(self.q_net_target, ["running_"])
        self.exploration_schedule = LinearSchedule(
            self.exploration_initial_eps,
            self.exploration_final_eps,
            self.exploration_fraction,
        )
        self._target_update_frequency, self._target_update_unit = parse_target_update_interval(self.target_update_interval)
        # Image observations may need transposing: those go through the policy's obs_to_tensor
        self._images = is_image_space(self.observation_space)
        if self.next_action == "stored" and isinstance(self.replay_buffer, HerReplayBuffer):
            raise ValueError(
                "next_action='stored' reads a' from the next row of the replay buffer, which "
                "HerReplayBuffer does not keep in order: use next_action='sampled' or 'expected'"
            )
        if self._target_update_unit == "step" and self.n_envs > 1 and self.n_envs > self._target_update_frequency:
            warnings.warn(
                "The number of environments used is greater than the target network "
                f"update interval ({self.n_envs} > {self._target_update_frequency}), "
                "therefore the target network will be updated after each call to env.step() "
                f"which corresponds to {self.n_envs} steps.",
                stacklevel=2,
            )

    def _create_aliases(self) -> None:
        self.q_net = self.policy.q_net
        self.q_net_target = self.policy.q_net_target
        # Listed once: walking the modules for them at every gradient step costs ~5% of train()
        self._policy_parameters = list(self.policy.parameters())
        self._online_parameters = list(self.q_net.parameters())
        self._target_parameters = list(self.q_net_target.parameters())
        self._mode_modules = _training_mode_modules(self.policy)
        # Forward passes without nn.Module.__call__'s dispatch where that computes the same (deep_sarsa.forward)
        self._online_forward = DirectForward(self.q_net)
        self._target_forward = DirectForward(self.q_net_target)

    def _set_training_mode(self, mode: bool) -> None:
        """
        ``self.policy.set_training_mode(mode)``; for SB3's policies the flags are set directly,
        as ``nn.Module.train`` sets them (1 µs instead of 18 µs walking the modules).

        :param mode: True for training mode, False for evaluation mode
        """
        if self._mode_modules is None:
            self.policy.set_training_mode(mode)
        else:
            _write_training_flags(self._mode_modules, mode)

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, Any]:
        self._stop_requested = False
        last_obs = self._last_obs
        result = super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)
        # What is cached from the networks is read again: they may have been changed since the set-up
        self._create_aliases()
        if self._last_obs is not last_obs and self.replay_buffer is not None:
            # The envs were reset: the episodes of the newest rows will never continue
            mark_newest_rows_truncated(self.replay_buffer)
        assert self.env is not None and self.replay_buffer is not None
        self._masking = self.use_masking and is_masking_supported(self.env)
        if self._masking:
            attach_masks(self.replay_buffer, self._n_actions)
            self._last_masks = check_action_masks(get_action_masks(self.env), self.n_envs, self._n_actions)
        return result

    @property
    def _n_actions(self) -> int:
        assert isinstance(self.action_space, spaces.Discrete)
        return int(self.action_space.n)

    def _sample_action(self, learning_starts: int, action_noise: Any = None, n_envs: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """
        The behaviour policy's actions in the envs' current states.

        DQN's ``predict`` draws the same random numbers, but also switches the networks to
        evaluation mode at every env step; ``collect_rollouts`` has done so already, which makes
        this the cheaper path (see ``benchmarks/RESULTS.md``).
        """
        assert self._last_obs is not None
        masks = self._last_masks if self._masking else None
        if self.num_timesteps < learning_starts:
            # Warm-up: uniformly random (among the valid actions)
            if masks is None:
                return super()._sample_action(learning_starts, action_noise, n_envs)
            action = sample_valid_actions(masks)
        elif np.random.rand() < self.exploration_rate:
            action = (
                np.array([self.action_space.sample() for _ in range(n_envs)]) if masks is None else sample_valid_actions(masks)
            )
        else:
            action = self._greedy(self._last_obs, masks)
        return action, action

    def _greedy(self, observation: np.ndarray | dict[str, np.ndarray], masks: np.ndarray | None = None) -> np.ndarray:
        """
        The greedy actions of a batch of observations (among valid actions if masked).

        :param observation: a batch of observations
        :param masks: boolean masks, shape ``(n, n_actions)``, or None
        :return: actions, shape ``(n,)``
        """
        obs_tensor: th.Tensor | dict[str, th.Tensor]
        if isinstance(observation, np.ndarray) and observation.shape[1:] == self.observation_space.shape and not self._images:
            obs_tensor = th.as_tensor(observation, device=self.device)  # a batch already: what obs_to_tensor would return
        else:
            obs_tensor, _ = self.policy.obs_to_tensor(observation)
        with th.no_grad():
            q_values = self._online_forward(obs_tensor)
        mask_tensor = None if masks is None else th.as_tensor(masks, device=self.device)
        return greedy_actions(q_values, mask_tensor).cpu().numpy()

    def _store_transition(
        self,
        replay_buffer: ReplayBuffer,
        buffer_action: np.ndarray,
        new_obs: np.ndarray | dict[str, np.ndarray],
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        if self.check_finite:
            _check_finite(new_obs, reward, infos, dones, self.num_timesteps)
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)
        if not self._masking:
            return
        assert self.env is not None
        # The envs are in their new states now: s' where the episode goes on, a reset state where it ended
        current = check_action_masks(get_action_masks(self.env), self.n_envs, self._n_actions)
        next_masks, known = current.copy(), ~dones.astype(bool)
        for i, info in enumerate(infos):
            if dones[i] and info.get("TimeLimit.truncated", False) and info.get("action_mask") is not None:
                next_masks[i] = check_action_masks(info["action_mask"], 1, self._n_actions)[0]
                known[i] = True
        store = masks_of(replay_buffer)  # attached by _setup_learn
        assert store is not None
        store.write((replay_buffer.pos - 1) % replay_buffer.buffer_size, next_masks, known)
        self._last_masks = current

    def request_stop(self) -> None:
        """
        Ask ``learn()`` to stop at the next rollout boundary: the current rollout is collected and
        trained on as usual, then ``learn()`` returns. Unlike a callback returning False, no env
        step is lost, so the model can be checkpointed and resumed exactly
        (see :mod:`deep_sarsa.checkpoint`).
        """
        self._stop_requested = True

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        train_freq: TrainFreq,
        replay_buffer: ReplayBuffer,
        action_noise: ActionNoise | None = None,
        learning_starts: int = 0,
        log_interval: int | None = None,
    ) -> RolloutReturn:
        if self._stop_requested:
            self._stop_requested = False
            return RolloutReturn(0, 0, continue_training=False)
        # SB3's collect_rollouts starts with policy.set_training_mode(False), which walks the modules
        # (~20 µs, once per rollout: ~5 µs per env step with train_freq=4); for SB3's own policies the
        # direct write sets the same flags. It refers to the policy's modules only, not to this
        # model, so a callback that copies the policy meanwhile copies nothing else
        modules = self._mode_modules
        direct = modules is not None
        if modules is not None:
            self.policy.set_training_mode = functools.partial(_write_training_flags, modules)  # type: ignore[method-assign]
        try:
            return super().collect_rollouts(
                env, callback, train_freq, replay_buffer, action_noise, learning_starts, log_interval
            )
        finally:
            if direct:
                del self.policy.set_training_mode

    def _update_target_network(self) -> None:
        if self.tau == 1.0:
            # A hard update: polyak_update with tau=1 computes 0·target + param, the same numbers
            # as a copy (and a copy also replaces a NaN or inf in the target), in twice the operations
            with th.no_grad():
                for target, param in zip(self._target_parameters, self._online_parameters, strict=True):
                    target.copy_(param)
        else:
            polyak_update(self._online_parameters, self._target_parameters, self.tau)
        # Copy running stats, see SB3 GH issue #996
        polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

    def _on_step(self) -> None:
        """
        Update the exploration rate and the target network if needed.
        This method is called in ``collect_rollouts()`` after each step in the environment.
        """
        self._n_calls += 1
        if self._target_update_unit == "episode":
            # `_episode_num` counts the episodes that ended before this step, so the sync happens
            # after the last gradient step of the K-th episode, as in the lecture's loop
            if self._episode_num - self._episode_num_at_target_update >= self._target_update_frequency:
                self._episode_num_at_target_update = self._episode_num
                self._update_target_network()
        # Account for multiple environments: each call to step() corresponds to n_envs transitions
        elif self._n_calls % max(self._target_update_frequency // self.n_envs, 1) == 0:
            self._update_target_network()

        self.exploration_rate = self.exploration_schedule(self._current_progress_remaining)
        self.logger.record("rollout/exploration_rate", self.exploration_rate)

    def _sample(self, batch_size: int) -> tuple[ReplayBufferSamples | DictReplayBufferSamples, NextState]:
        """
        Sample a minibatch, with the stored next actions (``next_action="stored"``) and the masks
        of s' (masking on).

        :param batch_size: the minibatch size
        :return: the samples and what is known of their next states
        """
        assert self.replay_buffer is not None
        mask_store = masks_of(self.replay_buffer) if self._masking else None
        if self.next_action != "stored" and mask_store is None:
            return self.replay_buffer.sample(batch_size, env=self._vec_normalize_env), NextState(None, None, None)
        samples, batch_inds, env_indices = sample_with_indices(self.replay_buffer, batch_size, self._vec_normalize_env)
        stored = masks = known = None
        all_stored = False
        last_rows, has_next = bootstrap_rows(self.replay_buffer, batch_inds, env_indices)
        if self.next_action == "stored":
            next_actions = actions_after(self.replay_buffer, last_rows, env_indices)
            # Terminal rows do not bootstrap: any a' will do, they need no sampled one
            terminal = terminated(self.replay_buffer, last_rows, env_indices)
            stored_np = np.where(has_next, next_actions, np.where(terminal, 0, -1))
            stored = th.as_tensor(stored_np.astype(np.int64).reshape(-1, 1), device=self.device)
            all_stored = bool((stored_np >= 0).all())
        if mask_store is not None:
            masks_np, known_np = mask_store.read(last_rows, env_indices)
            masks_np[~known_np] = True  # any valid action will do: these rows do not bootstrap
            masks = th.as_tensor(masks_np, device=self.device)
            known = th.as_tensor(known_np.reshape(-1, 1), device=self.device)
        return samples, NextState(stored, masks, known, all_stored)

    def _td_target(
        self,
        replay_data: ReplayBufferSamples | DictReplayBufferSamples,
        next_state: NextState,
        next_q_target: th.Tensor | None = None,
    ) -> th.Tensor:
        """
        The SARSA target of a minibatch (no gradient).

        :param replay_data: the minibatch
        :param next_state: stored next actions and masks of s', from :meth:`_sample`
        :param next_q_target: the target network's Q-values of the minibatch's next states, if
            already computed (``train`` evaluates several minibatches at once)
        :return: the targets, shape ``(B, 1)``
        """
        # For n-step replay, discount factor is gamma**k (k = number of steps actually summed)
        discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
        dones = replay_data.dones
        if next_state.masks_known is not None:
            # A row whose s' mask is unknown (cut by a time limit, env reset since) does not bootstrap
            dones = th.maximum(dones, (~next_state.masks_known).to(dones.dtype))
        if next_q_target is None:
            next_q_target = self._target_forward(replay_data.next_observations)
        if self.next_action == "expected":
            next_q_online = self._online_forward(replay_data.next_observations)
            probs = epsilon_greedy_probs(next_q_online, self.exploration_rate, next_state.masks)
            return expected_sarsa_target(replay_data.rewards, dones, discounts, next_q_target, probs)
        stored_actions = next_state.stored_actions
        if stored_actions is not None and next_state.all_stored:
            next_actions = stored_actions
        else:
            next_actions = sample_epsilon_greedy(
                self._online_forward(replay_data.next_observations), self.exploration_rate, next_state.masks
            )
            if stored_actions is not None:
                next_actions = th.where(stored_actions >= 0, stored_actions, next_actions)
        return sarsa_target(replay_data.rewards, dones, discounts, next_q_target, next_actions)

    def _target_q_values(self, next_observations: list[th.Tensor | dict[str, th.Tensor]]) -> list[th.Tensor]:
        """
        The target network's Q-values of several minibatches' next states, in one forward pass.

        The target network is in evaluation mode and does not change inside ``train``, so each
        row's Q-values do not depend on which rows share the pass (``tests/test_speed_equivalence.py``).

        :param next_observations: the next observations of each minibatch
        :return: the Q-values of each minibatch, shape ``(B, A)`` each
        """
        first = next_observations[0]
        if len(next_observations) == 1:
            return [self._target_forward(first)]
        sizes = [len(next(iter(obs.values())) if isinstance(obs, dict) else obs) for obs in next_observations]
        joined: th.Tensor | dict[str, th.Tensor]
        if isinstance(first, dict):
            joined = {key: th.cat([obs[key] for obs in next_observations]) for key in first}  # type: ignore[index]
        else:
            joined = th.cat(next_observations)  # type: ignore[arg-type]
        return list(self._target_forward(joined).split(sizes))

    def _minibatches_per_pass(self, batch_size: int) -> int:
        """How many minibatches share a target-network pass: up to ``2**22`` observation numbers (16 MB)."""
        return max(1, 2**22 // max(1, spaces.flatdim(self.observation_space) * batch_size))

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        # Switch to train mode (this affects batch norm / dropout)
        self._set_training_mode(True)
        # Update learning rate according to schedule
        self._update_learning_rate(self.policy.optimizer)

        # Statistics stay tensors until the end: no host synchronisation inside the loop
        losses, q_means, fallbacks = [], [], []
        per_pass = self._minibatches_per_pass(batch_size) if gradient_steps > 1 else 1
        for first in range(0, gradient_steps, per_pass):
            # The target network does not change inside train(): sample several minibatches
            # (drawing the same random numbers, in the same order, as one at a time) and
            # evaluate it on all their next states at once
            minibatches = [self._sample(batch_size) for _ in range(min(per_pass, gradient_steps - first))]
            with th.no_grad():
                next_q_targets = self._target_q_values([replay_data.next_observations for replay_data, _ in minibatches])
            for (replay_data, next_state), next_q_target in zip(minibatches, next_q_targets, strict=True):
                with th.no_grad():
                    target_q_values = self._td_target(replay_data, next_state, next_q_target)
                    if next_state.stored_actions is not None:
                        fallbacks.append((next_state.stored_actions < 0).float().mean())

                # Q-values of every action in s; the loss reads only the taken action's entry
                current_q_values = self._online_forward(replay_data.observations)
                loss = td_loss(current_q_values, replay_data.actions, target_q_values, self.loss)
                losses.append(loss.detach())
                q_means.append(th.gather(current_q_values.detach(), 1, replay_data.actions.long()).mean())

                # Optimize the policy. The gradients are reset as optimizer.zero_grad() resets them
                # (set to None), without its per-call profiler scope: ~50 µs a step in this loop
                for param in self._policy_parameters:
                    param.grad = None
                loss.backward()
                # Clip gradient norm
                _clip_grad_norm([p.grad for p in self._policy_parameters if p.grad is not None], self.max_grad_norm)
                _optimizer_step(self.policy.optimizer)
                # Increase update counter
                self._n_updates += 1
                if self.flush_denormal and self._n_updates % _FLUSH_INTERVAL == 0:
                    _flush_denormals(self.policy.optimizer)

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if losses:
            self.logger.record("train/loss", _mean(losses))
            self.logger.record("train/q_values", _mean(q_means))
        if fallbacks:
            self.logger.record("train/stored_fallback_fraction", _mean(fallbacks))

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """
        Get the action of the ε-greedy policy: a uniformly random action with probability
        ``exploration_rate`` unless ``deterministic``, else the greedy one. Without masks it is
        DQN's ``predict``, called rather than copied.

        :param observation: the input observation
        :param state: The last states (can be None, used in recurrent policies)
        :param episode_start: The last masks (can be None, used in recurrent policies)
        :param deterministic: Whether or not to return deterministic actions.
        :param action_masks: valid actions, shape ``(n_envs, n_actions)`` (or ``(n_actions,)`` for
            one observation), as ``MaskablePPO.predict``: both the random and the greedy action are
            chosen among them
        :return: the model's action and the next state (used in recurrent policies)
        """
        if action_masks is None:
            return DQN.predict(self, observation, state, episode_start, deterministic)  # type: ignore[arg-type]
        self.policy.set_training_mode(False)
        vectorized = self.policy.is_vectorized_observation(observation)
        if not vectorized:
            observation = (
                {key: np.asarray(value)[None] for key, value in observation.items()}
                if isinstance(observation, dict)
                else np.asarray(observation)[None]
            )
        first = next(iter(observation.values())) if isinstance(observation, dict) else observation
        masks = check_action_masks(action_masks, len(first), self._n_actions)
        if not deterministic and np.random.rand() < self.exploration_rate:
            actions = sample_valid_actions(masks)
        else:
            actions = self._greedy(observation, masks)
        if not vectorized:
            actions = actions.squeeze(axis=0)
        return actions, state

    def learn(
        self: SelfDeepSARSA,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "DeepSARSA",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfDeepSARSA:
        self._learning = True  # read by callbacks.SaveOnInterrupt
        try:
            return super().learn(
                total_timesteps=total_timesteps,
                callback=callback,
                log_interval=log_interval,
                tb_log_name=tb_log_name,
                reset_num_timesteps=reset_num_timesteps,
                progress_bar=progress_bar,
            )
        finally:
            self._learning = False

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
    ) -> None:
        """
        Save the model to a zip file, atomically: it is written to a temporary file beside the
        target and renamed over it only once complete, so a failure (full disk, Ctrl-C, an object
        that cannot be pickled) leaves any previous file intact and no partial zip behind.

        :param path: path to the file (``.zip`` is added if it has no suffix), or a file object
        :param exclude: names of parameters that should be excluded in addition to the default ones
        :param include: names of parameters that might be excluded but should be included anyway
        """
        if isinstance(path, io.BufferedIOBase):
            super().save(path, exclude, include)
            return
        target = pathlib.Path(path)
        if target.suffix == "":
            target = target.with_suffix(".zip")  # as SB3 does
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            super().save(temporary, exclude, include)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)

    @classmethod
    def load(
        cls: type[SelfDeepSARSA],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfDeepSARSA:
        """
        Load a model saved by ``DeepSARSA.save``, as SB3's ``load`` does, with clear errors for a
        file that is not a model zip (or is truncated), a model of another algorithm, and an env
        whose spaces differ from the model's.

        :param path: path to the file (or a file object)
        :param env: the environment to run the loaded model on (can be None for prediction only)
        :param device: the device on which the code should run
        :param custom_objects: objects to replace when loading (see SB3's ``load``)
        :param print_system_info: print the system info of the machine the model was saved on
        :param force_reset: reset the env before training (SB3's default)
        :param kwargs: attributes to change in the loaded model
        :return: the model
        """
        if not isinstance(path, io.BufferedIOBase):
            _check_model_file(pathlib.Path(path))
        try:
            return super().load(path, env, device, custom_objects, print_system_info, force_reset, **kwargs)
        except ValueError as error:
            if "spaces do not match" in str(error):
                raise ValueError(f"{path}: the model does not fit this env: {error}") from error
            raise

    def _excluded_save_params(self) -> list[str]:
        return [
            *super()._excluded_save_params(),
            "q_net",
            "q_net_target",
            "_policy_parameters",
            "_online_parameters",
            "_target_parameters",
            "_mode_modules",
            "_online_forward",
            "_target_forward",
            "_learning",
        ]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts = ["policy", "policy.optimizer"]

        return state_dicts, []
