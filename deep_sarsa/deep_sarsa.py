"""Deep SARSA: the algorithm, in the shape of SB3's ``dqn.py``. Speed code lives in :mod:`deep_sarsa.fast`."""

import io
import pathlib
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
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

from deep_sarsa import fast
from deep_sarsa.buffers import bootstrap_rows, mark_newest_rows_truncated, sample_with_indices, stored_or_missing
from deep_sarsa.files import fit_replay_buffer, load_checked, read_replay_buffer, save_atomically
from deep_sarsa.finite import (
    NonFiniteError,
    check_finite,
    check_predict_observation,
    check_reset_observation,
    install_raw_check,
    remove_raw_check,
)
from deep_sarsa.masking import attach_masks, check_action_masks, masks_of, record_next_masks, sample_valid_actions
from deep_sarsa.targets import (
    LossName,
    epsilon_greedy_probs,
    expected_sarsa_target,
    greedy_actions,
    sample_epsilon_greedy,
    sarsa_target,
    td_loss,
)
from deep_sarsa.validation import (
    check_buffer_memory,
    check_discrete_start,
    check_hyperparameters,
    check_learning_rate_value,
    check_n_steps_observations,
    check_policy,
    check_total_timesteps,
    make_env,
    memory_bytes,
    model_settings,
    parse_target_update_interval,
    replay_buffer_bytes,
)

__all__ = ["DeepSARSA", "NextState", "NonFiniteError"]

SelfDeepSARSA = TypeVar("SelfDeepSARSA", bound="DeepSARSA")

NextActionName = Literal["sampled", "expected", "stored"]
Samples = ReplayBufferSamples | DictReplayBufferSamples

#: With ``target_update_interval=(K, "episode")``, env steps without any episode end before a warning
#: that the target network is not being synced (an env whose episodes never end)
NO_EPISODE_END_WARNING_STEPS = 100_000


class NextState(NamedTuple):
    """What a minibatch needs to know about the states it bootstraps from, beyond SB3's samples."""

    #: the stored next actions, ``(B, 1)`` long, -1 where none exists (``next_action="stored"``)
    stored_actions: th.Tensor | None = None
    #: the masks of valid actions in s', ``(B, A)`` bool (masking on)
    masks: th.Tensor | None = None
    #: whether that mask is known, ``(B, 1)``; rows with an unknown mask do not bootstrap
    masks_known: th.Tensor | None = None
    #: every row has a stored next action (no ε-greedy fallback needed), known without a device sync
    all_stored: bool = False


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
    :param loss: ``"mse"`` (default, the lecture's) or ``"huber"`` (SB3 DQN's smooth L1). MSE
        regresses to the mean of the (noisy, by design) SARSA targets, which is Q^π; Huber regresses
        towards their median and hides rare large penalties: on the risky-bridge MDP (ε = 0.2) Huber
        learns Q(start, edge) ≈ 8.15 where the exact Q^π is 5.73, MSE 5.76
        (``benchmarks/results/loss_choice.md``; CartPole: ``benchmarks/results/learning.md``).
    :param use_masking: use invalid-action masks when the env provides them (an ``action_masks()``
        method on the env or a wrapper, as sb3-contrib's ``ActionMasker``): exploration and greedy
        actions are chosen among valid actions only, and a' in the targets too. ``False`` ignores them.
    :param check_finite: check every observation and reward for NaN or infinity as it arrives (a
        cheap test on small arrays) and stop training with a ``NonFiniteError`` that names the
        step and the env, before the value reaches the replay buffer: the model keeps its last
        good state and can still be saved. ``False`` skips the check.
    :param flush_denormal: every 50 gradient steps, set to zero the denormal values (below 1.2e-38
        in float32) of the optimizer's state: Adam's moments of parameters whose gradient stays zero
        decay through that range, where some x86 CPUs compute many times slower
        (``benchmarks/results/ablation.md`` has the gain and the CPU). An update changes by less
        than ``learning_rate`` times 1e-30; no process or thread state is touched.
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
            **{key: value for key, value in locals().items() if key not in ("self", "policy", "env", "__class__")}
        )
        check_policy(policy, self.policy_aliases, policy_kwargs)
        super().__init__(
            policy,
            make_env(env) if isinstance(env, str) else env,
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
            supported_action_spaces=None,  # checked below, with a message that says what to use instead
            support_multi_env=True,
        )
        # env is None only inside `load()`, which checks the saved action space against the env
        if env is not None and not isinstance(self.action_space, spaces.Discrete):
            raise ValueError(
                "DeepSARSA only supports Discrete action spaces (one Q-value per action), "
                f"but the env's action_space is {self.action_space}. "
                "For continuous actions use SAC/TD3; for MultiDiscrete, flatten it into one Discrete space."
            )
        if env is not None:
            assert isinstance(self.action_space, spaces.Discrete)
            check_discrete_start(self.action_space)
            check_n_steps_observations(n_steps, replay_buffer_class, self.observation_space)

        self.exploration_initial_eps = exploration_initial_eps
        self.exploration_final_eps = exploration_final_eps
        self.exploration_fraction = exploration_fraction
        self.target_update_interval = target_update_interval
        self.max_grad_norm = max_grad_norm
        self.next_action = next_action
        self.loss = loss
        self.use_masking = use_masking
        self.check_finite = check_finite
        self.flush_denormal = flush_denormal
        # "epsilon" for the epsilon-greedy exploration
        self.exploration_rate = 0.0
        # For updating the target network with multiple envs, and every K episodes:
        self._n_calls = 0
        self._episode_num_at_target_update = 0
        self._stop_requested = False
        self._learning = False  # read by callbacks.SaveOnInterrupt
        # Whether the current env is masked (set by `learn()`), and the masks of its current states
        self._masking = False
        self._last_masks: np.ndarray | None = None
        # Whether a RawFiniteCheck under VecNormalize checks the env's outputs (set by `learn()`)
        self._checking_raw = False
        # For the warning about an env whose episodes never end (target_update_interval in episodes)
        self._episode_num_seen = 0
        self._timesteps_at_episode_end = 0
        self._warned_no_episode_end = False

        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        self._check_settings()  # at load, the saved settings with the overrides given to load()
        estimate = replay_buffer_bytes(
            self.observation_space, self.action_space, self.buffer_size, self.n_envs, self.optimize_memory_usage
        )
        check_buffer_memory(estimate, self.buffer_size, *memory_bytes())
        # Built with fused Adam unless the user chose the implementation; what is saved stays as the user gave it
        user_policy_kwargs = self.policy_kwargs
        self.policy_kwargs = fast.with_fused_adam(user_policy_kwargs, self.device)
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
        self._parse_target_update_interval()
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

    def _parse_target_update_interval(self) -> None:
        """Read ``target_update_interval`` (again: DQN reads it at every step, so a new value takes effect at once)."""
        self._target_update_frequency, self._target_update_unit = parse_target_update_interval(self.target_update_interval)
        self._target_update_source = self.target_update_interval

    def _check_settings(self) -> None:
        """
        Validate the model's current settings as the constructor validates its arguments (raising
        ``ValueError`` naming the setting): values changed since, by assignment or by
        ``load(..., **kwargs)`` / ``custom_objects``, are checked too. Called when ``learn()`` starts.
        """
        check_hyperparameters(**model_settings(self), warn=False)
        check_policy(self.policy_class, self.policy_aliases, self.policy_kwargs)

    def _create_aliases(self) -> None:
        self.q_net = self.policy.q_net
        self.q_net_target = self.policy.q_net_target
        # Listed once, and read again at every learn(): walking the modules at every step costs ~5% of train()
        self._policy_parameters = list(self.policy.parameters())
        self._online_forward = fast.DirectForward(self.q_net)
        self._target_forward = fast.DirectForward(self.q_net_target)

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, Any]:
        self._stop_requested = False
        self._check_settings()
        last_obs = self._last_obs
        # With VecNormalize, the raw values are checked under it, before they reach its statistics
        self._checking_raw = self.check_finite and self._vec_normalize_env is not None
        if self._checking_raw:
            assert self._vec_normalize_env is not None
            raw_check = install_raw_check(self._vec_normalize_env)
        result = super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)
        if self._checking_raw:
            raw_check.steps = self.num_timesteps
        elif self.check_finite and self._last_obs is not last_obs and self._last_obs is not None:
            check_reset_observation(self._last_obs, self.n_envs)
        self._timesteps_at_episode_end = min(self._timesteps_at_episode_end, self.num_timesteps)
        self._create_aliases()  # the networks may have been changed since the set-up
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

    def _on_step(self) -> None:
        """
        Update the exploration rate and the target network if needed.
        This method is called in ``collect_rollouts()`` after each step in the environment.
        """
        self._n_calls += 1
        if self.target_update_interval != self._target_update_source:
            self._parse_target_update_interval()
            self._episode_num_at_target_update = self._episode_num  # a new count of K episodes starts now
        if self._target_update_unit == "episode":
            self._warn_if_no_episode_ends()
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

    def _warn_if_no_episode_ends(self) -> None:
        """Warn once when no episode has ended for :data:`NO_EPISODE_END_WARNING_STEPS` steps: the target is never synced."""
        if self._episode_num != self._episode_num_seen:
            self._episode_num_seen, self._timesteps_at_episode_end = self._episode_num, self.num_timesteps
        elif (
            not self._warned_no_episode_end
            and self.num_timesteps - self._timesteps_at_episode_end >= NO_EPISODE_END_WARNING_STEPS
        ):
            self._warned_no_episode_end = True
            warnings.warn(
                f"target_update_interval={self.target_update_interval!r} counts episodes, but no episode has ended in "
                f"{self.num_timesteps - self._timesteps_at_episode_end} env steps: the target network is not being "
                "synced (does the env ever end an episode? a TimeLimit wrapper ends them)",
                UserWarning,
                stacklevel=2,
            )

    def _update_learning_rate(self, optimizers: list[th.optim.Optimizer] | th.optim.Optimizer) -> None:
        # Each value of the schedule is checked when it is applied, not only the first
        check_learning_rate_value(self.lr_schedule(self._current_progress_remaining), self._current_progress_remaining)
        super()._update_learning_rate(optimizers)

    def _update_target_network(self) -> None:
        polyak_update(self.q_net.parameters(), self.q_net_target.parameters(), self.tau)
        # Copy running stats, see SB3 GH issue #996
        polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

    def _sample(self, batch_size: int) -> tuple[Samples, NextState]:
        """
        Sample a minibatch, with the stored next actions (``next_action="stored"``) and the masks
        of s' (masking on).

        :param batch_size: the minibatch size
        :return: the samples and what is known of their next states
        """
        assert self.replay_buffer is not None
        mask_store = masks_of(self.replay_buffer) if self._masking else None
        if self.next_action != "stored" and mask_store is None:
            return self.replay_buffer.sample(batch_size, env=self._vec_normalize_env), NextState()
        samples, batch_inds, env_indices = sample_with_indices(self.replay_buffer, batch_size, self._vec_normalize_env)
        last_rows, has_next = bootstrap_rows(self.replay_buffer, batch_inds, env_indices)
        next_state = NextState()
        if self.next_action == "stored":
            stored = stored_or_missing(self.replay_buffer, last_rows, has_next, env_indices)
            next_state = next_state._replace(
                stored_actions=th.as_tensor(stored.reshape(-1, 1), device=self.device), all_stored=bool((stored >= 0).all())
            )
        if mask_store is not None:
            masks, known = mask_store.read(last_rows, env_indices)
            masks[~known] = True  # any valid action will do: these rows do not bootstrap
            next_state = next_state._replace(
                masks=th.as_tensor(masks, device=self.device),
                masks_known=th.as_tensor(known.reshape(-1, 1), device=self.device),
            )
        return samples, next_state

    def _sample_many(self, batch_size: int, count: int) -> list[tuple[Samples, NextState]] | None:
        """
        ``count`` minibatches drawn at once as :meth:`_sample` draws them one after the other
        (``fast.sample_minibatches``), or None where that does not apply.
        """
        assert self.replay_buffer is not None
        if self.next_action == "stored" or self._masking:
            return None
        minibatches = fast.sample_minibatches(self.replay_buffer, batch_size, count, self._vec_normalize_env)
        return None if minibatches is None else [(minibatch, NextState()) for minibatch in minibatches]

    def _td_target(self, replay_data: Samples, next_state: NextState, next_q_target: th.Tensor | None = None) -> th.Tensor:
        """
        The SARSA target ``r + γ·Q_target(s', a')`` of a minibatch (no gradient).

        :param replay_data: the minibatch
        :param next_state: stored next actions and masks of s', from :meth:`_sample`
        :param next_q_target: the target network's Q-values of the next states, if already computed
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
            probs = epsilon_greedy_probs(
                self._online_forward(replay_data.next_observations), self.exploration_rate, next_state.masks
            )
            return expected_sarsa_target(replay_data.rewards, dones, discounts, next_q_target, probs)
        next_actions = next_state.stored_actions
        if next_actions is None or not next_state.all_stored:
            # a' drawn now from the ε-greedy policy over the online network (where none is stored)
            sampled = sample_epsilon_greedy(
                self._online_forward(replay_data.next_observations), self.exploration_rate, next_state.masks
            )
            next_actions = sampled if next_actions is None else th.where(next_actions >= 0, next_actions, sampled)
        return sarsa_target(replay_data.rewards, dones, discounts, next_q_target, next_actions)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update learning rate according to schedule
        self._update_learning_rate(self.policy.optimizer)

        # Statistics stay tensors until the end: no host synchronisation inside the loop
        losses, q_means, fallbacks = [], [], []
        minibatches = fast.minibatches_with_target_values(
            lambda: self._sample(batch_size),
            lambda minibatch: minibatch[0].next_observations,
            self._target_forward,
            gradient_steps,
            self.observation_space,
            batch_size,
            lambda count: self._sample_many(batch_size, count),
        )
        for (replay_data, next_state), next_q_target in minibatches:
            with th.no_grad():
                target_q_values = self._td_target(replay_data, next_state, next_q_target)
                if next_state.stored_actions is not None:
                    fallbacks.append((next_state.stored_actions < 0).float().mean())

            # Q-values of every action in s; the loss reads only the taken action's entry
            current_q_values = self._online_forward(replay_data.observations)
            loss = td_loss(current_q_values, replay_data.actions, target_q_values, self.loss)
            losses.append(loss.detach())
            q_means.append(th.gather(current_q_values.detach(), 1, replay_data.actions.long()).mean())

            # Optimize the policy
            fast.zero_grad(self.policy.optimizer, self._policy_parameters)
            loss.backward()
            # Clip gradient norm
            fast.clip_grad_norm(self._policy_parameters, self.max_grad_norm)
            fast.optimizer_step(self.policy.optimizer)
            # Increase update counter
            self._n_updates += 1
            if self.flush_denormal and self._n_updates % fast.FLUSH_INTERVAL == 0:
                fast.flush_denormals(self.policy.optimizer)

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        for key, values in (
            ("train/loss", losses),
            ("train/q_values", q_means),
            ("train/stored_fallback_fraction", fallbacks),
        ):
            if values:
                self.logger.record(key, th.stack(values).mean().item())

    def _sample_action(self, learning_starts: int, action_noise: Any = None, n_envs: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """
        The behaviour policy's actions in the envs' current states (among the valid ones if masked).
        The same random numbers as DQN's (which goes through ``predict``).
        """
        assert self._last_obs is not None
        masks = self._last_masks if self._masking else None
        if self.num_timesteps < learning_starts and masks is None:
            return super()._sample_action(learning_starts, action_noise, n_envs)  # warm-up: uniformly random
        if self.num_timesteps < learning_starts or np.random.rand() < self.exploration_rate:
            action = (
                np.array([self.action_space.sample() for _ in range(n_envs)]) if masks is None else sample_valid_actions(masks)
            )
        else:
            action = self._greedy(self.policy.obs_to_tensor(self._last_obs)[0], masks)
        return action, action

    def _greedy(self, observation: th.Tensor | dict[str, th.Tensor], masks: np.ndarray | None = None) -> np.ndarray:
        """
        :param observation: a batch of observations, as ``policy.obs_to_tensor`` returns it
        :param masks: boolean masks of valid actions, shape ``(n, n_actions)``, or None
        :return: the greedy actions (among valid actions if masked), shape ``(n,)``
        """
        with th.no_grad():
            q_values = self._online_forward(observation)
        return greedy_actions(q_values, None if masks is None else th.as_tensor(masks, device=self.device)).cpu().numpy()

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
        if self.check_finite:
            check_predict_observation(observation)
        if action_masks is None:
            return DQN.predict(self, observation, state, episode_start, deterministic)  # type: ignore[arg-type]
        self.policy.set_training_mode(False)
        obs_tensor, vectorized = self.policy.obs_to_tensor(observation)
        first = next(iter(obs_tensor.values())) if isinstance(obs_tensor, dict) else obs_tensor
        masks = check_action_masks(action_masks, len(first), self._n_actions)
        if not deterministic and np.random.rand() < self.exploration_rate:
            actions = sample_valid_actions(masks)
        else:
            actions = self._greedy(obs_tensor, masks)
        return (actions if vectorized else actions.squeeze(axis=0)), state

    def _store_transition(
        self,
        replay_buffer: ReplayBuffer,
        buffer_action: np.ndarray,
        new_obs: np.ndarray | dict[str, np.ndarray],
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        if self.check_finite and not self._checking_raw:
            try:
                check_finite(new_obs, reward, infos, dones, self.num_timesteps)
            except NonFiniteError:
                self.num_timesteps -= self.n_envs  # the step is not stored: it is not counted either
                raise
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)
        if self._masking:
            assert self.env is not None
            # The envs are in their new states now: s' where the episode goes on, a reset state where it ended
            self._last_masks = check_action_masks(get_action_masks(self.env), self.n_envs, self._n_actions)
            record_next_masks(replay_buffer, self._last_masks, dones, infos, self._n_actions)

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
        return super().collect_rollouts(env, callback, train_freq, replay_buffer, action_noise, learning_starts, log_interval)

    def learn(
        self: SelfDeepSARSA,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "DeepSARSA",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfDeepSARSA:
        total_timesteps = check_total_timesteps(total_timesteps)
        self._learning = True
        try:
            return super().learn(total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, progress_bar)
        except NonFiniteError:
            # The envs are past the observation the model last saw: the next learn() resets them
            self._last_obs = None
            self._last_original_obs = None
            raise
        finally:
            self._learning = False
            if self._vec_normalize_env is not None:
                remove_raw_check(self._vec_normalize_env)

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
    ) -> None:
        """
        SB3's ``save``, atomically (:func:`deep_sarsa.files.save_atomically`): a failure leaves any
        previous file intact and no partial zip behind.
        """
        save_atomically(super().save, path, exclude, include)

    def save_replay_buffer(self, path: str | pathlib.Path | io.BufferedIOBase) -> None:
        """
        SB3's ``save_replay_buffer``, atomically as ``save`` (SB3 writes the file in place): a
        failure or a kill leaves any previous buffer intact (:func:`deep_sarsa.files.save_atomically`).

        :param path: the file (``.pkl`` is added if it has no suffix), or a file object
        """
        save_atomically(super().save_replay_buffer, path, suffix=".pkl")

    @classmethod
    def load(
        cls: type[SelfDeepSARSA],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        trusted: bool = False,
        **kwargs: Any,
    ) -> SelfDeepSARSA:
        """
        SB3's ``load``, safe for a file from anyone unless ``trusted`` (:func:`deep_sarsa.files.load_checked`):
        the file's serialized entries are rebuilt with an allowlist of globals (what DeepSARSA's own
        files contain) and anything else is refused with ``UnsafeFileError`` before it runs; a
        malformed file, a model of another algorithm, invalid hyperparameters and an env whose spaces
        differ from the model's are ``ValueError`` naming the file.

        :param trusted: unpickle the file as SB3 does, running any code it names: only for files
            you trust (needed for, e.g., a ``learning_rate`` that is a lambda or a user class in
            ``policy_kwargs``). See docs/trust.md.
        """
        return load_checked(
            super().load,
            path,
            env,
            device,
            model_class=cls,
            custom_objects=custom_objects,
            trusted=trusted,
            print_system_info=print_system_info,
            force_reset=force_reset,
            **kwargs,
        )

    def load_replay_buffer(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        truncate_last_traj: bool = True,
        trusted: bool = False,
    ) -> None:
        """
        SB3's ``load_replay_buffer``, safe unless ``trusted``: the pickle is read with an allowlist
        (SB3's replay buffers, arrays, spaces, the masks of :mod:`deep_sarsa.masking`), and a
        buffer whose spaces or number of envs differ from the model's is refused. A failure
        (``ValueError`` naming the file) leaves the model and its current buffer as they were.

        :param path: the pickled replay buffer (``.pkl`` may be left out)
        :param truncate_last_traj: for ``HerReplayBuffer``: end its last trajectory
        :param trusted: unpickle the file as SB3 does, running any code it names
        """
        name, buffer = read_replay_buffer(path, trusted)
        fit_replay_buffer(name, buffer, self, truncate_last_traj)
        self.replay_buffer = buffer

    def _excluded_save_params(self) -> list[str]:
        cached = ["q_net", "q_net_target", "_policy_parameters", "_online_forward", "_target_forward"]
        return [*super()._excluded_save_params(), *cached, "_learning"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts = ["policy", "policy.optimizer"]

        return state_dicts, []
