"""Deep SARSA: the algorithm, in the shape of SB3's ``dqn.py``. Speed code lives in :mod:`deep_sarsa.fast`."""

from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import torch as th
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import LinearSchedule, get_parameters_by_name, polyak_update
from stable_baselines3.dqn import DQN
from stable_baselines3.dqn.policies import CnnPolicy, DQNPolicy, MlpPolicy, MultiInputPolicy, QNetwork

from deep_sarsa import fast
from deep_sarsa.buffers import NextState, Samples, mark_newest_rows_truncated, sample_with_next_state
from deep_sarsa.callbacks import StopAtRolloutBoundary
from deep_sarsa.finite import FiniteChecks, NonFiniteError, check_predict_observation
from deep_sarsa.masking import ActionMasking, masked_predict, sample_valid_actions
from deep_sarsa.persistence import SafeFiles
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
    check_env_spaces,
    check_hyperparameters,
    check_learning_rate_value,
    check_model_memory,
    check_model_settings,
    check_policy,
    check_setup,
    check_total_timesteps,
    make_env,
    parse_target_update_interval,
    warn_if_no_episode_ends,
)

__all__ = ["DeepSARSA", "NextState", "NonFiniteError"]

SelfDeepSARSA = TypeVar("SelfDeepSARSA", bound="DeepSARSA")

NextActionName = Literal["sampled", "expected", "stored"]
NextActionNetName = Literal["target", "online"]


class DeepSARSA(SafeFiles, ActionMasking, FiniteChecks, StopAtRolloutBoundary, OffPolicyAlgorithm):
    """
    Deep SARSA: a Q-network trained from a replay memory on the on-policy SARSA target.

    DQN's algorithm (replay memory, target network, ε-greedy exploration) but for the TD target: DQN bootstraps
    from ``max_a Q_target(s', a)``, Deep SARSA from ``Q_target(s', a')`` with a' the action the ε-greedy policy
    takes in s' (by default its expectation over that policy, Expected SARSA). It learns the values of the policy
    that acts, exploration included, so it keeps away from what is risky to explore near (CliffWalking's cliff).
    Every keyword of SB3's ``DQN`` has its meaning and default; the mixins add safe files, masks, NaN checks and a
    clean stop (``persistence``, ``masking``, ``finite``, ``callbacks``).

    :param policy: the policy: ``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"`` or a ``DQNPolicy`` class
    :param env: the env to learn from, or a registered Gymnasium id
    :param learning_rate: the optimizer's learning rate, or a schedule of the progress remaining (1 to 0)
    :param buffer_size: how many transitions the replay memory keeps (FIFO)
    :param learning_starts: env steps of random actions before learning starts
    :param batch_size: the minibatch size of each gradient step
    :param tau: the target network's soft update coefficient (1: a hard copy)
    :param gamma: the discount factor
    :param train_freq: train every ``train_freq`` env steps, or ``(n, "step")`` / ``(n, "episode")``
    :param gradient_steps: gradient steps after each rollout (-1: as many as env steps in the rollout)
    :param replay_buffer_class: the replay buffer's class (None: SB3's choice for the observation space)
    :param replay_buffer_kwargs: keywords for the replay buffer
    :param optimize_memory_usage: SB3's replay buffer that keeps each observation once
    :param n_steps: n-step returns (SB3's ``NStepReplayBuffer``): bootstrap from Q(s_{t+n}, a_{t+n})
    :param target_update_interval: sync the target network every K env steps, or every K episodes with
        ``(K, "episode")`` (the lecture's "sync every K episodes")
    :param exploration_fraction: the fraction of training over which ε falls from its initial to its final value
    :param exploration_initial_eps: ε at the start
    :param exploration_final_eps: ε at the end
    :param max_grad_norm: the gradient norm clipping threshold
    :param stats_window_size: episodes over which the logged rollout statistics are averaged
    :param tensorboard_log: the TensorBoard log folder (None: no TensorBoard)
    :param policy_kwargs: keywords for the policy (as for DQN)
    :param verbose: 0 silent, 1 information, 2 debugging
    :param seed: the seed of every random generator
    :param device: ``"cpu"``, ``"cuda"``, ... (``"auto"``: the GPU where there is one)
    :param next_action: how a' is obtained. ``"expected"`` (default, Expected SARSA): ``Q_target(s', ·)``
        averaged over the probabilities of the ε-greedy policy in s', no a' drawn; ``"sampled"`` (the lecture's):
        a' drawn at update time from that policy; ``"stored"``: the action taken in s', read from the replay
        buffer, ``"sampled"`` where the episode was cut or a' is not taken yet. Terminal rows never bootstrap.
    :param next_action_net: the network whose ε-greedy policy gives a' (or its probabilities). ``"target"``
        (default): the target network, so the target is fixed between syncs, as DQN's is; with rl-zoo's DQN
        entry for CartPole-v1 and ``"expected"``, 21 of 30 seeds end at 475 or more against 13 of 30 with
        ``"online"`` and ``"sampled"`` (docs/diagnosis.md, item 11). ``"online"`` (the lecture's): the network
        that acts, so a' moves at every gradient step; files saved before the parameter existed load with it.
    :param loss: ``"mse"`` (default, the lecture's: regresses to the mean of the noisy targets, Q^π) or
        ``"huber"`` (DQN's; towards their median: on the risky bridge at ε = 0.2, Q(start, edge) 8.15 where
        Q^π is 5.73 and MSE gives 5.76, medians of 5 seeds; docs/algorithm.md, "MSE or Huber", and
        ``tests/test_fixed_point.py::test_huber_loss_hides_the_rare_penalty``)
    :param use_masking: choose actions, and a', among valid actions where the env has ``action_masks()``
    :param check_finite: stop training with a ``NonFiniteError`` naming the step and the env when an
        observation or reward is NaN or infinite, before it reaches the replay buffer
    :param flush_denormal: every 50 gradient steps, zero the optimizer state's denormal values (slow on some
        x86 CPUs; ``benchmarks/results/ablation.md``); an update changes by less than ``learning_rate`` × 1e-30
    :param _init_setup_model: whether to build the networks at construction
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    #: a file saved before ``next_action_net`` existed picked a' with the online network
    older_file_settings: ClassVar[dict[str, Any]] = {"next_action_net": "online"}
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
        next_action: NextActionName = "expected",
        next_action_net: NextActionNetName = "target",
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
        # fmt: off
        super().__init__(
            policy, make_env(env) if isinstance(env, str) else env, learning_rate, buffer_size, learning_starts,
            batch_size, tau, gamma, train_freq, gradient_steps, action_noise=None,  # No action noise
            replay_buffer_class=replay_buffer_class, replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage, n_steps=n_steps, policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size, tensorboard_log=tensorboard_log, verbose=verbose, device=device,
            seed=seed, sde_support=False, support_multi_env=True,
            supported_action_spaces=None,  # checked below, with a message that says what to use instead
        )
        # fmt: on
        if env is not None:  # None only inside `load()`, which checks the saved spaces against the env
            check_env_spaces(self.action_space, self.observation_space, n_steps, replay_buffer_class)

        self.exploration_initial_eps = exploration_initial_eps
        self.exploration_final_eps = exploration_final_eps
        self.exploration_fraction = exploration_fraction
        self.target_update_interval = target_update_interval
        self.max_grad_norm = max_grad_norm
        self.next_action = next_action
        self.next_action_net = next_action_net
        self.loss = loss
        self.use_masking = use_masking
        self.check_finite = check_finite
        self.flush_denormal = flush_denormal
        # "epsilon" for the epsilon-greedy exploration
        self.exploration_rate = 0.0
        # For updating the target network with multiple envs, and every K episodes:
        self._n_calls = 0
        self._episode_num_at_target_update = 0
        # For the warning about an env whose episodes never end (validation.warn_if_no_episode_ends)
        self._episode_num_seen = 0
        self._timesteps_at_episode_end = 0
        self._warned_no_episode_end = False

        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        check_model_settings(self)  # at load, the saved settings with the overrides given to load()
        check_model_memory(self)
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
            self.exploration_initial_eps, self.exploration_final_eps, self.exploration_fraction
        )
        self._parse_target_update_interval()
        check_setup(self)

    def _parse_target_update_interval(self) -> None:
        """Read ``target_update_interval`` (again: DQN reads it at every step, so a new value takes effect at once)."""
        self._target_update_frequency, self._target_update_unit = parse_target_update_interval(self.target_update_interval)
        self._target_update_source = self.target_update_interval

    def _create_aliases(self) -> None:
        self.q_net = self.policy.q_net
        self.q_net_target = self.policy.q_net_target
        # Listed once, and read again at every learn(): walking the modules at every step costs ~5% of train()
        self._policy_parameters = list(self.policy.parameters())
        self._online_forward = fast.DirectForward(self.q_net)
        self._target_forward = fast.DirectForward(self.q_net_target)

    def _setup_learn(self, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        check_model_settings(self)
        last_obs = self._last_obs
        result = super()._setup_learn(*args, **kwargs)
        self._timesteps_at_episode_end = min(self._timesteps_at_episode_end, self.num_timesteps)
        self._create_aliases()  # the networks may have been changed since the set-up
        if self._last_obs is not last_obs and self.replay_buffer is not None:
            # The envs were reset: the episodes of the newest rows will never continue
            mark_newest_rows_truncated(self.replay_buffer)
        return result

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
            warn_if_no_episode_ends(self)
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

    def _update_learning_rate(self, optimizers: list[th.optim.Optimizer] | th.optim.Optimizer) -> None:
        # Each value of the schedule is checked when it is applied, not only the first
        check_learning_rate_value(self.lr_schedule(self._current_progress_remaining), self._current_progress_remaining)
        super()._update_learning_rate(optimizers)

    def _update_target_network(self) -> None:
        polyak_update(self.q_net.parameters(), self.q_net_target.parameters(), self.tau)
        # Copy running stats, see SB3 GH issue #996
        polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update learning rate according to schedule
        self._update_learning_rate(self.policy.optimizer)

        # Statistics stay tensors until the end: no host synchronisation inside the loop
        losses, q_means, fallbacks = [], [], []
        for replay_data, next_state, next_q_target in fast.minibatches(self, gradient_steps, batch_size):
            with th.no_grad():
                # The SARSA target r + γ·Q_target(s', a'), a' as `next_action` says
                target_q_values = self._td_target(replay_data, next_state, next_q_target)
                if next_state.stored_actions is not None:
                    fallbacks.append((next_state.stored_actions < 0).float().mean())

            # Q-values of every action in s; the loss reads only the taken action's entry
            current_q_values = self._online_forward(replay_data.observations)
            loss = td_loss(current_q_values, replay_data.actions, target_q_values, self.loss)
            losses.append(loss.detach())
            q_means.append(th.gather(current_q_values.detach(), 1, replay_data.actions.long()).mean())

            fast.zero_grad(self.policy.optimizer, self._policy_parameters)
            loss.backward()
            fast.clip_grad_norm(self._policy_parameters, self.max_grad_norm)
            fast.optimizer_step(self.policy.optimizer)
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
                self._policy_q_values(replay_data, next_q_target), self.exploration_rate, next_state.masks
            )
            return expected_sarsa_target(replay_data.rewards, dones, discounts, next_q_target, probs)
        next_actions = next_state.stored_actions
        if next_actions is None or not next_state.all_stored:
            # a' drawn now from the ε-greedy policy in s' (where none is stored)
            q_values = self._policy_q_values(replay_data, next_q_target)
            sampled = sample_epsilon_greedy(q_values, self.exploration_rate, next_state.masks)
            next_actions = sampled if next_actions is None else th.where(next_actions >= 0, next_actions, sampled)
        return sarsa_target(replay_data.rewards, dones, discounts, next_q_target, next_actions)

    def _policy_q_values(self, replay_data: Samples, next_q_target: th.Tensor) -> th.Tensor:
        """The Q-values of s' whose ε-greedy policy gives a': the target network's, or the online network's."""
        if self.next_action_net == "target":
            return next_q_target
        return self._online_forward(replay_data.next_observations)

    def _sample(self, batch_size: int) -> tuple[Samples, NextState]:
        """A minibatch, with the stored next actions (``next_action="stored"``) and the masks of s' (masking on)."""
        assert self.replay_buffer is not None
        stored, env = self.next_action == "stored", self._vec_normalize_env
        return sample_with_next_state(self.replay_buffer, batch_size, env, stored, self._masking, self.device)

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
        """The greedy actions (among valid ones if ``masks``, ``(n, n_actions)``) of observations from ``obs_to_tensor``."""
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
        The ε-greedy policy's action: uniformly random with probability ``exploration_rate`` unless
        ``deterministic``, else greedy. DQN's ``predict``; with masks, :func:`deep_sarsa.masking.masked_predict`.

        :param observation: the input observation
        :param state: The last states (can be None, used in recurrent policies)
        :param episode_start: The last masks (can be None, used in recurrent policies)
        :param deterministic: Whether or not to return deterministic actions.
        :param action_masks: valid actions, ``(n_envs, n_actions)`` or ``(n_actions,)``, as ``MaskablePPO.predict``
        :return: the model's action and the next state (used in recurrent policies)
        """
        if self.check_finite:
            check_predict_observation(observation)
        if action_masks is None:
            return DQN.predict(self, observation, state, episode_start, deterministic)  # type: ignore[arg-type]
        return masked_predict(self, observation, state, deterministic, action_masks)

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
        return super().learn(total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, progress_bar)
