"""Checks of what the env returns: NaN and infinity stop training before they reach the replay buffer."""

from typing import Any

import numpy as np


class NonFiniteError(ValueError):
    """An observation or a reward from the env was NaN or infinite."""


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
    observations = [obs for obs in (new_obs.values() if isinstance(new_obs, dict) else [new_obs]) if obs.dtype.kind == "f"]
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
