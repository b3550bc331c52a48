"""Checks of what the env returns: NaN and infinity stop training before they reach the replay buffer."""

from typing import TYPE_CHECKING, Any

import numpy as np
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecNormalize
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

if TYPE_CHECKING:
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm as _Algorithm
else:
    _Algorithm = object


class NonFiniteError(ValueError):
    """An observation or a reward from the env was NaN or infinite."""


def _float_parts(observation: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]:
    """The floating-point arrays of an observation (the array itself, or the values of a Dict observation)."""
    parts = observation.values() if isinstance(observation, dict) else [observation]
    return [array for array in map(np.asarray, parts) if array.dtype.kind == "f"]


def check_finite(
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
    observations = _float_parts(new_obs)
    # Fast path for the common step (no episode ended, all finite): few NumPy calls, as this runs at
    # every env step (9 µs instead of 18 per step, Sapphire Rapids, benchmarks/results/throughput.md);
    # count_nonzero is a C function, where ndarray.any and .all go through Python
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
        bad_envs |= _bad_rows(new_obs, len(bad_envs))
        for done_env in np.flatnonzero(dones):
            terminal = infos[done_env].get("terminal_observation")
            bad_envs[done_env] |= terminal is not None and bool(_bad_rows(terminal, 1)[0])
    if bad_envs.any():
        env = int(np.flatnonzero(bad_envs)[0])
        value = f" {reward[env]}" if what == "reward" else ""
        raise NonFiniteError(
            f"{what}{value} with NaN or inf from env {env} at step {step}: training stopped before it reached the replay "
            "buffer; the model is as it was before this step and can be saved (check_finite=False skips this check)"
        )


def _bad_rows(observation: np.ndarray | dict[str, np.ndarray], rows: int) -> np.ndarray:
    """Which of ``rows`` observations hold a NaN or an infinity (float parts only)."""
    bad = np.zeros(rows, dtype=bool)
    for array in _float_parts(observation):
        bad |= ~np.isfinite(array.reshape(rows, -1)).all(axis=1)
    return bad


def check_reset_observation(observation: np.ndarray | dict[str, np.ndarray], n_envs: int) -> None:
    """
    Raise :class:`NonFiniteError` if an observation that ``reset()`` returned is NaN or ±inf.

    :param observation: the observations of the ``n_envs`` envs
    :param n_envs: the number of envs
    """
    bad = _bad_rows(observation, n_envs)
    if bad.any():
        raise NonFiniteError(
            f"observation with NaN or inf from env {int(np.flatnonzero(bad)[0])} returned by reset() at the start of "
            "learn(): training stopped before it reached the replay buffer (check_finite=False skips this check)"
        )


def check_predict_observation(observation: np.ndarray | dict[str, np.ndarray]) -> None:
    """
    Raise :class:`NonFiniteError` if an observation given to ``predict()`` is NaN or ±inf.

    :param observation: one observation or a batch of them (an array, or a dict of arrays)
    """
    if any(np.count_nonzero(np.isfinite(array)) != array.size for array in _float_parts(observation)):
        raise NonFiniteError(
            "the observation given to predict() holds NaN or inf: the Q-values would be meaningless "
            "(check_finite=False skips this check)"
        )


class RawFiniteCheck(VecEnvWrapper):
    """
    :func:`check_finite` of the env's raw outputs, placed under ``VecNormalize`` while ``learn()``
    runs (:func:`install_raw_check`): a bad value stops training before ``VecNormalize`` adds it
    to its running statistics, and the error names the env and the raw value.

    :param venv: the env under ``VecNormalize``
    """

    def __init__(self, venv: VecEnv) -> None:
        super().__init__(venv)
        #: env steps so far (set by the model when learn() starts)
        self.steps = 0

    def reset(self) -> VecEnvObs:
        observation = self.venv.reset()
        assert isinstance(observation, (np.ndarray, dict))
        check_reset_observation(observation, self.num_envs)
        return observation

    def step_wait(self) -> VecEnvStepReturn:
        observation, rewards, dones, infos = self.venv.step_wait()
        assert isinstance(observation, (np.ndarray, dict))
        check_finite(observation, rewards, infos, dones, self.steps + self.num_envs)
        self.steps += self.num_envs
        return observation, rewards, dones, infos


def install_raw_check(vec_normalize: VecNormalize) -> RawFiniteCheck:
    """
    Put a :class:`RawFiniteCheck` directly under ``vec_normalize`` (once).

    :param vec_normalize: the model's ``VecNormalize``
    :return: the check
    """
    if not isinstance(vec_normalize.venv, RawFiniteCheck):
        vec_normalize.venv = RawFiniteCheck(vec_normalize.venv)
    return vec_normalize.venv


def remove_raw_check(vec_normalize: VecNormalize) -> None:
    """
    Take the :class:`RawFiniteCheck` out from under ``vec_normalize``, if there is one.

    :param vec_normalize: the model's ``VecNormalize``
    """
    if isinstance(vec_normalize.venv, RawFiniteCheck):
        vec_normalize.venv = vec_normalize.venv.venv


class FiniteChecks(_Algorithm):
    """
    Mixin for an SB3 off-policy algorithm with a ``check_finite`` setting: while ``learn()`` runs, every
    observation and reward is checked as it arrives (:func:`check_finite`; with ``VecNormalize``, the raw
    values under it: :class:`RawFiniteCheck`), and a bad one stops training with a :class:`NonFiniteError`
    before it is stored or counted. The next ``learn()`` resets the envs.
    """

    check_finite: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._checking_raw = False  # whether a RawFiniteCheck under VecNormalize checks the env's outputs
        super().__init__(*args, **kwargs)

    def _setup_learn(self, *args: Any, **kwargs: Any) -> Any:
        last_obs = self._last_obs
        # With VecNormalize, the raw values are checked under it, before they reach its statistics
        raw_check = install_raw_check(self._vec_normalize_env) if self.check_finite and self._vec_normalize_env else None
        self._checking_raw = raw_check is not None
        result = super()._setup_learn(*args, **kwargs)
        if raw_check is not None:
            raw_check.steps = self.num_timesteps
        elif self.check_finite and self._last_obs is not last_obs and self._last_obs is not None:
            assert isinstance(self._last_obs, (np.ndarray, dict))
            check_reset_observation(self._last_obs, self.n_envs)
        return result

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

    def learn(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().learn(*args, **kwargs)
        except NonFiniteError:
            # The envs are past the observation the model last saw: the next learn() resets them
            self._last_obs = None
            self._last_original_obs = None
            raise
        finally:
            if self._vec_normalize_env is not None:
                remove_raw_check(self._vec_normalize_env)
