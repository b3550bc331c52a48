"""
Mask-aware evaluation wherever rl-zoo3 evaluates a DeepSARSA model: the periodic ``EvalCallback`` of ``train``,
the trial evaluation of ``--optimize`` and the episodes of ``enjoy`` / ``record_video``.

rl-zoo3 evaluates with SB3's ``evaluate_policy``, which calls ``model.predict(obs)`` without masks: on a masked env
the greedy action may then be an invalid one (masked Taxi scores -2000 that way, the policy it was trained as scores
about -34). Here the masks of the evaluation env are passed to ``predict`` when the model is a DeepSARSA with
``use_masking`` and the env provides masks (an ``action_masks()`` method, as sb3-contrib detects it); otherwise
evaluation is SB3's, unchanged.
"""

from typing import Any

import numpy as np
import optuna
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.vec_env import VecEnv

from deep_sarsa.deep_sarsa import DeepSARSA


def uses_masks(model: Any, env: Any) -> bool:
    """
    :param model: the model that is evaluated
    :param env: the env it is evaluated on
    :return: whether evaluation should pass the env's masks to ``model.predict``
    """
    return isinstance(model, DeepSARSA) and bool(model.use_masking) and env is not None and is_masking_supported(env)


class MaskAwareEvalCallback(MaskableEvalCallback):
    """
    SB3's ``EvalCallback`` (same arguments), evaluating a DeepSARSA model with the eval env's action masks when
    there are any (sb3-contrib's maskable ``evaluate_policy``); any other model, or an env without masks, is
    evaluated exactly as by ``EvalCallback``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, use_masking=False, **kwargs)

    def _init_callback(self) -> None:
        super()._init_callback()
        self.use_masking = uses_masks(self.model, self.eval_env)

    def _on_step(self) -> bool:
        if self.use_masking:
            return super()._on_step()
        return EvalCallback._on_step(self)


class MaskAwareTrialEvalCallback(MaskAwareEvalCallback):
    """
    rl-zoo3's ``TrialEvalCallback`` (same arguments and behaviour: report each evaluation's mean reward to the
    trial, stop the run when Optuna prunes it), with :class:`MaskAwareEvalCallback`'s evaluation.

    :param eval_env: the evaluation env
    :param trial: the Optuna trial
    :param n_eval_episodes: episodes per evaluation
    :param eval_freq: evaluate every ``eval_freq`` calls
    :param deterministic: greedy actions
    :param verbose: verbosity
    :param best_model_save_path: where to save the best model (None: nowhere)
    :param log_path: where to write the evaluations (None: nowhere)
    """

    def __init__(
        self,
        eval_env: VecEnv,
        trial: optuna.Trial,
        n_eval_episodes: int = 5,
        eval_freq: int = 10000,
        deterministic: bool = True,
        verbose: int = 0,
        best_model_save_path: str | None = None,
        log_path: str | None = None,
    ) -> None:
        super().__init__(
            eval_env=eval_env,
            n_eval_episodes=n_eval_episodes,
            eval_freq=eval_freq,
            deterministic=deterministic,
            verbose=verbose,
            best_model_save_path=best_model_save_path,
            log_path=log_path,
        )
        self.trial = trial
        self.eval_idx = 0
        self.is_pruned = False

    def _on_step(self) -> bool:
        if self.eval_freq > 0 and self.n_calls % self.eval_freq == 0:
            super()._on_step()
            self.eval_idx += 1
            self.trial.report(self.last_mean_reward, self.eval_idx)
            if self.trial.should_prune():
                self.is_pruned = True
                return False
        return True


class MaskAwarePlayer:
    """
    A loaded DeepSARSA model for ``enjoy`` and ``record_video``: ``predict`` passes the env's action masks when the
    env has them (and the model uses masking); everything else is the model's.

    :param model: the loaded model
    :param env: the env the episodes are played on (None: the model's own env)
    """

    def __init__(self, model: DeepSARSA, env: VecEnv | None) -> None:
        self.model = model
        self.env = env if env is not None else model.get_env()

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """
        ``DeepSARSA.predict``, with the env's current masks when ``action_masks`` is not given.

        :param observation: the observation(s)
        :param state: unused (recurrent policies)
        :param episode_start: unused (recurrent policies)
        :param deterministic: greedy actions
        :param action_masks: explicit masks (default: the env's)
        :return: the actions and the state
        """
        if action_masks is None and self.env is not None and uses_masks(self.model, self.env):
            action_masks = get_action_masks(self.env)
        return self.model.predict(observation, state, episode_start, deterministic, action_masks=action_masks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)
