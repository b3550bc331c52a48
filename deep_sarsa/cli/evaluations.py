"""
A model's evaluations, as the commands run them: episodes with the env's action masks when it has
them (:func:`masked`, :func:`evaluate_episodes`); the run's periodic evaluations during training
(:class:`RunEvaluations`, seeded by the step and logged atomically to ``eval/evaluations.npz``,
taken over by a resumed run); and the learning curves drawn from those logs (:func:`plot_curves`).
"""

import pathlib
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from sb3_contrib.common.maskable.evaluation import evaluate_policy as evaluate_masked
from sb3_contrib.common.maskable.utils import is_masking_supported
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv

from deep_sarsa.cli.common import UsageError
from deep_sarsa.cli.run_folder import EVALUATIONS
from deep_sarsa.deep_sarsa import DeepSARSA
from deep_sarsa.files import atomic_path
from deep_sarsa.gate import read_npz

#: the largest ``evaluations.npz`` read (a run of 1000 evaluations of 100 episodes writes about 2 MB)
MAX_EVALUATIONS_BYTES = 256 * 2**20


def read_evaluations(folder: pathlib.Path) -> dict[str, np.ndarray]:
    """
    A run folder's evaluation log, through the gate (:func:`deep_sarsa.gate.read_npz`): a regular file
    inside the folder, at most :data:`MAX_EVALUATIONS_BYTES`, no member declaring more than it holds.

    :param folder: the run folder
    :return: its arrays (``timesteps``, ``results``, ``ep_lengths``)
    """
    return read_npz(folder / EVALUATIONS, "an evaluation log", MAX_EVALUATIONS_BYTES, folder)


def masked(model: DeepSARSA, env: gym.Env | VecEnv) -> bool:
    return bool(getattr(model, "use_masking", True)) and is_masking_supported(env)


def evaluate_episodes(
    model: DeepSARSA, env: gym.Env | VecEnv, episodes: int, deterministic: bool = True
) -> tuple[list[float], list[int]]:
    """Episode returns and lengths, with the env's action masks when it has them (as in training)."""
    if masked(model, env):
        returns, lengths = evaluate_masked(
            model,  # type: ignore[arg-type]  # DeepSARSA.predict takes action_masks as MaskablePPO's does
            env,
            n_eval_episodes=episodes,
            deterministic=deterministic,
            return_episode_rewards=True,
        )
    else:
        returns, lengths = evaluate_policy(
            model, env, n_eval_episodes=episodes, deterministic=deterministic, return_episode_rewards=True
        )
    return [float(r) for r in returns], [int(n) for n in lengths]  # type: ignore[union-attr]


class RunEvaluations(EvalCallback):
    """
    What the run's periodic evaluations add to SB3's ``EvalCallback``: each evaluation's episodes
    are seeded by the step (``seed + num_timesteps``), so that a resumed run evaluates as the
    uninterrupted one would; the log is written atomically (a kill never leaves a torn
    ``evaluations.npz``), and a resumed run takes over the evaluations logged up to its step.
    :class:`_MaskedEvaluations` puts it before sb3-contrib's ``MaskableEvalCallback``.
    """

    def setup_run(self, model: DeepSARSA, output: pathlib.Path, seed: int) -> None:
        """
        :param model: the model, at step 0 or resumed
        :param output: the run folder
        :param seed: the evaluation seed
        """
        self.run_log, self.eval_seed, self.run_folder = output / EVALUATIONS, seed, output
        if model.num_timesteps > 0 and self.run_log.exists():
            try:
                data = read_evaluations(output)
                kept = data["timesteps"] <= model.num_timesteps  # later ones (after a kill) are evaluated again
                self.evaluations_timesteps = [int(t) for t in data["timesteps"][kept]]
                self.evaluations_results = [list(map(float, r)) for r in data["results"][kept]]
                self.evaluations_length = [list(map(int, n)) for n in data["ep_lengths"][kept]]
            except (OSError, ValueError, KeyError) as error:
                raise UsageError(f"{self.run_log}: not a readable evaluation log: {error}") from error
            if self.evaluations_results:
                self.best_mean_reward = float(max(np.mean(r) for r in self.evaluations_results))
        # on_step counts calls from 0 in every learn(): start where the run is, to keep the same schedule
        self.n_calls = model.num_timesteps // model.n_envs

    def _on_step(self) -> bool:
        due = self.eval_freq > 0 and self.n_calls % self.eval_freq == 0
        if due:
            self.eval_env.seed(self.eval_seed + self.num_timesteps)
        continue_training = super()._on_step()
        if due:
            with atomic_path(self.run_log, self.run_folder) as temporary, open(temporary, "wb") as file:
                np.savez(
                    file,
                    timesteps=self.evaluations_timesteps,
                    results=self.evaluations_results,
                    ep_lengths=self.evaluations_length,
                )
        return continue_training


class _MaskedEvaluations(RunEvaluations, MaskableEvalCallback):
    """The run's evaluations with the env's action masks."""


def eval_callback(
    model: DeepSARSA, eval_env: VecEnv, output: pathlib.Path, every: int, episodes: int, seed: int
) -> RunEvaluations:
    """
    Periodic evaluation every ``every`` calls (env steps / n_envs), keeping the best model in
    ``output/best_model.zip``, masked when the env has masks; on a resumed run, going on with its log.
    """
    kwargs: dict[str, Any] = dict(
        eval_freq=every,
        n_eval_episodes=episodes,
        # SB3 writes its log in place: it goes to a scratch file, and RunEvaluations writes the real one
        log_path=str(output / "eval" / ".scratch"),
        best_model_save_path=str(output),
        verbose=0,
    )
    callback = _MaskedEvaluations(eval_env, **kwargs) if masked(model, eval_env) else RunEvaluations(eval_env, **kwargs)
    callback.setup_run(model, output, seed)
    return callback


def plot_curves(run_folders: Sequence[pathlib.Path], output: pathlib.Path) -> pathlib.Path | None:
    """Learning curves (periodic evaluations) of the runs in one PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(6, 4))
    for folder in run_folders:
        evaluations = folder / EVALUATIONS
        if not evaluations.exists():
            raise UsageError(f"{folder}: no eval/evaluations.npz (is it a folder written by `deep-sarsa train`?)")
        data = read_evaluations(folder)
        try:
            timesteps, results = data["timesteps"], data["results"]
        except KeyError as error:
            raise UsageError(f"{evaluations}: not an evaluation log written by `deep-sarsa train` (no {error})") from error
        if len(timesteps) == 0:
            continue
        means, stds = results.mean(axis=1), results.std(axis=1)
        axis.plot(timesteps, means, label=folder.name)
        axis.fill_between(timesteps, means - stds, means + stds, alpha=0.2)
    axis.set_xlabel("env steps")
    axis.set_ylabel("evaluation return (mean ± std)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output
