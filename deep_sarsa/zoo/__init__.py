"""
DeepSARSA in RL Baselines3 Zoo (rl-zoo3) as ``--algo deep_sarsa``: ``python -m deep_sarsa.zoo <command> ...``
runs rl-zoo3's ``<command>`` with the registration below done first (docs/zoo.md).

rl-zoo3 has no plugin mechanism: an algorithm gets in by being added to ``rl_zoo3.utils.ALGOS`` and to
``rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER`` / ``HYPERPARAMS_CONVERTER`` before rl-zoo3 builds its argument
parser. :func:`register` does that and adapts the places where rl-zoo3 treats the algorithms it knows specially:

- the default hyperparameter file of ``--algo deep_sarsa`` (no ``-conf``) is the package's
  ``deep_sarsa/hyperparams/deep_sarsa.yml`` (with ``default:`` and ``atari:`` entries for other env ids);
- evaluation (``EvalCallback``, the trial evaluation of ``--optimize``, ``enjoy``, ``record_video``) passes the
  env's action masks to DeepSARSA when the env has them (:mod:`deep_sarsa.zoo.evaluation`);
- ``enjoy`` and ``record_video`` load the model with a one-row replay buffer, as rl-zoo3 does for DQN;
- the scripts that start fresh interpreters (``record_training`` runs ``python -m rl_zoo3.record_video``,
  ``benchmark`` runs ``python enjoy.py``) run ``python -m deep_sarsa.zoo record_video`` / ``enjoy`` instead, so
  the registration reaches them (:func:`redirect_subprocesses`, which ``python -m deep_sarsa.zoo`` calls; it
  replaces ``subprocess.Popen``, so :func:`register` leaves it out), with the parent's ``--trusted``.

``python -m deep_sarsa.zoo`` also runs each command inside :func:`deep_sarsa.zoo.folders.reading_folders`: a trained
folder's files are read without running any of its code unless ``--trusted`` (docs/trust.md).

Nothing in rl-zoo3's files changes, and nothing happens at import: only :func:`register` (called by
``python -m deep_sarsa.zoo``) touches rl-zoo3's module attributes, in the process that calls it.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from stable_baselines3.common.utils import ConstantSchedule

from deep_sarsa.deep_sarsa import DeepSARSA
from deep_sarsa.presets import PRESETS_FILE
from deep_sarsa.zoo import folders
from deep_sarsa.zoo.evaluation import MaskAwareEvalCallback, MaskAwarePlayer, MaskAwareTrialEvalCallback
from deep_sarsa.zoo.sampler import convert_deep_sarsa_params, experiment_settings, sample_deep_sarsa_params

#: the ``--algo`` name
ALGO = "deep_sarsa"

_registered = False
_played_envs: list[Any] = []  # the env rl-zoo3's enjoy created last (it does not pass it to load)
_child_exit_codes: list[int] = []  # of the redirected subprocesses of this process


class PlayingDeepSARSA:
    """What ``ALGOS["deep_sarsa"]`` is during ``enjoy`` and ``record_video``: its ``load`` gives a
    :class:`~deep_sarsa.zoo.evaluation.MaskAwarePlayer` of a model loaded with a one-row replay buffer."""

    __name__ = DeepSARSA.__name__

    @classmethod
    def load(cls, path: Any, env: Any = None, **kwargs: Any) -> MaskAwarePlayer:
        """
        ``DeepSARSA.load`` without allocating the replay buffer (``buffer_size=1`` unless given).

        :param path: the model file
        :param env: the env the episodes are played on (default: the one rl-zoo3 created last)
        :param kwargs: ``DeepSARSA.load``'s other arguments
        :return: the model, predicting with the env's masks (loaded safely unless ``--trusted``)
        """
        kwargs.setdefault("buffer_size", 1)
        kwargs.setdefault("optimize_memory_usage", False)
        kwargs.setdefault("trusted", folders.trusted())
        model = DeepSARSA.load(path, env=env, **kwargs)
        return MaskAwarePlayer(model, env if env is not None else (_played_envs[-1] if _played_envs else None))


class ContinuingDeepSARSA:
    """What ``ALGOS["deep_sarsa"]`` is while ``train -i`` loads the model to continue: ``DeepSARSA.load`` with the
    file's schedules replaced by the experiment's own (rl-zoo3's linear schedules, ``lin_1e-3``, are a class of
    rl-zoo3's that the safe loader does not rebuild; the schedules are rebuilt from the given values anyway)."""

    __name__ = DeepSARSA.__name__

    @classmethod
    def load(cls, path: Any, env: Any = None, **kwargs: Any) -> DeepSARSA:
        """
        :param path: the model file
        :param env: the training env
        :param kwargs: ``DeepSARSA.load``'s other arguments: the experiment's hyperparameters
        :return: the model (loaded safely unless ``--trusted``; with ``--trusted`` its replay buffer is too)
        """
        custom_objects = dict(kwargs.pop("custom_objects", None) or {})
        if "learning_rate" in kwargs:
            custom_objects.setdefault("learning_rate", kwargs["learning_rate"])
            custom_objects.setdefault("lr_schedule", ConstantSchedule(0.0))  # rebuilt from learning_rate at load
        model = DeepSARSA.load(path, env=env, custom_objects=custom_objects, trusted=folders.trusted(), **kwargs)
        if folders.trusted():  # rl-zoo3 then calls model.load_replay_buffer(path, truncate_last_traj=...)
            model.load_replay_buffer = functools.partial(model.load_replay_buffer, trusted=True)  # type: ignore[method-assign]
        return model


def _recording(create_test_env: Callable[..., Any]) -> Callable[..., Any]:
    def create_and_remember(*args: Any, **kwargs: Any) -> Any:
        env = create_test_env(*args, **kwargs)
        _played_envs[:] = [env]
        return env

    create_and_remember.__wrapped__ = create_test_env  # type: ignore[attr-defined]
    return create_and_remember


def zoo_command(command: Sequence[Any]) -> list[str] | None:
    """
    The ``python -m deep_sarsa.zoo`` form of a command that rl-zoo3 starts in a fresh interpreter.

    :param command: the command (a list of arguments)
    :return: ``[sys.executable, "-m", "deep_sarsa.zoo", name, *arguments]`` for ``python -m rl_zoo3.NAME ...``
        (a module of :data:`deep_sarsa.zoo.__main__.COMMANDS`) and ``python enjoy.py ...`` (rl-zoo3's
        ``record_training`` and ``benchmark``); None for any other command
    """
    if isinstance(command, (str, bytes)) or len(command) < 2 or command[0] not in ("python", "python3"):
        return None
    arguments = [str(argument) for argument in command]
    from deep_sarsa.zoo.__main__ import COMMANDS

    trust = ["--trusted"] if folders.trusted() else []  # the child reads the folder as the parent does
    if len(arguments) >= 3 and arguments[1] == "-m" and arguments[2] in COMMANDS.values():
        name = next(name for name, module in COMMANDS.items() if module == arguments[2])
        return [sys.executable, "-m", "deep_sarsa.zoo", name, *trust, *arguments[3:]]
    if arguments[1] in ("enjoy.py", "train.py", "record_video.py"):
        return [sys.executable, "-m", "deep_sarsa.zoo", arguments[1].removesuffix(".py"), *trust, *arguments[2:]]
    return None


def refused_child() -> bool:
    """
    :return: whether a subprocess that :func:`redirect_subprocesses` redirected exited with code 2 (bad input: a
        refused folder, whose message it printed)
    """
    return 2 in _child_exit_codes


def redirect_subprocesses() -> None:
    """
    Make ``subprocess.call`` / ``run`` / ``Popen`` in this process start ``python -m deep_sarsa.zoo NAME`` where
    rl-zoo3 starts ``python -m rl_zoo3.NAME`` or ``python enjoy.py`` (:func:`zoo_command`); other commands are
    unchanged. The child registers DeepSARSA itself: nothing needs to be installed in site-packages (no ``.pth``
    file, no ``sitecustomize``) and no environment variable is involved.
    """
    if getattr(subprocess.Popen, "_deep_sarsa_zoo", False):
        return
    original = subprocess.Popen

    class ZooPopen(original):  # type: ignore[valid-type,misc]
        _deep_sarsa_zoo = True

        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            replaced = zoo_command(args) if isinstance(args, (list, tuple)) else None
            self._redirected = replaced is not None
            super().__init__(replaced if replaced is not None else args, *rest, **kwargs)

        def wait(self, timeout: float | None = None) -> int:
            code: int = super().wait(timeout)
            if self._redirected:
                _child_exit_codes.append(code)
            return code

    subprocess.Popen = ZooPopen  # type: ignore[misc]


def register() -> None:
    """
    Register DeepSARSA with rl-zoo3 in this process (idempotent): ``--algo deep_sarsa`` for every rl-zoo3 command,
    its sampler and converter for ``--optimize`` / ``--trial-id``, and the adaptations listed in this module's
    docstring. Call it before rl-zoo3 builds its argument parser (``python -m deep_sarsa.zoo`` does).
    """
    global _registered
    if _registered:
        return
    import rl_zoo3
    import rl_zoo3.exp_manager
    import rl_zoo3.hyperparams_opt
    import rl_zoo3.utils

    rl_zoo3.utils.ALGOS[ALGO] = DeepSARSA
    rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER[ALGO] = sample_deep_sarsa_params
    rl_zoo3.hyperparams_opt.HYPERPARAMS_CONVERTER[ALGO] = convert_deep_sarsa_params  # type: ignore[assignment]

    base = rl_zoo3.exp_manager.ExperimentManager

    class ExperimentManager(base):  # type: ignore[valid-type,misc]
        """rl-zoo3's ExperimentManager; ``--algo deep_sarsa`` without ``-conf`` reads the package's yml."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            algo = args[1] if len(args) > 1 else kwargs.get("algo")
            if algo == ALGO and not kwargs.get("config"):
                kwargs["config"] = str(PRESETS_FILE)
            super().__init__(*args, **kwargs)

        def read_hyperparameters(self) -> tuple[dict[str, Any], dict[str, Any]]:
            hyperparams, saved = super().read_hyperparameters()
            if self.algo == ALGO and self.storage and self.study_name and self.trial_id == 0:
                # rl-zoo3 tests `if self.trial_id:`, so --trial-id 0 (the first trial) would be ignored
                hyperparams.update(self.load_trial(self.storage, self.study_name, 0))
                hyperparams.update(self.custom_hyperparams or {})  # the command line still has the last word
                saved = OrderedDict((key, hyperparams[key]) for key in sorted(hyperparams))
            return hyperparams, saved

        def _load_pretrained_agent(self, hyperparams: dict[str, Any], env: Any) -> Any:
            if self.algo != ALGO:
                if not folders.trusted():
                    raise folders.UnsafeFolderError(
                        f"{self.trained_agent}: -i with --algo {self.algo} loads the model with SB3's load, which "
                        "unpickles it and so runs any code it names (the safe loader reads --algo deep_sarsa models "
                        f"only): {folders.TRUST_HINT}"
                    )
                return super()._load_pretrained_agent(hyperparams, env)
            rl_zoo3.utils.ALGOS[ALGO] = ContinuingDeepSARSA  # type: ignore[assignment]
            try:
                model = super()._load_pretrained_agent(hyperparams, env)
            finally:
                rl_zoo3.utils.ALGOS[ALGO] = DeepSARSA
            vars(model).pop("load_replay_buffer", None)  # --trusted's replacement (ContinuingDeepSARSA), never saved
            return model

        def objective(self, trial: Any) -> float:
            # Which process on which machine ran the trial (several workers share one study)
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            with experiment_settings(self._hyperparams, self.n_timesteps):
                return super().objective(trial)

    ExperimentManager.__qualname__ = ExperimentManager.__name__ = base.__name__
    rl_zoo3.exp_manager.ExperimentManager = ExperimentManager  # type: ignore[misc]
    rl_zoo3.exp_manager.EvalCallback = MaskAwareEvalCallback  # type: ignore[misc]
    rl_zoo3.exp_manager.TrialEvalCallback = MaskAwareTrialEvalCallback  # type: ignore[misc,assignment]
    rl_zoo3.create_test_env = _recording(rl_zoo3.create_test_env)
    rl_zoo3.utils.create_test_env = _recording(rl_zoo3.utils.create_test_env)
    _registered = True


def use_player(playing: bool = True) -> None:
    """
    For ``enjoy`` and ``record_video``: ``ALGOS["deep_sarsa"]`` loads a :class:`PlayingDeepSARSA`.

    :param playing: False: ``ALGOS["deep_sarsa"]`` is :class:`~deep_sarsa.DeepSARSA` again
    """
    import rl_zoo3.utils

    rl_zoo3.utils.ALGOS[ALGO] = PlayingDeepSARSA if playing else DeepSARSA  # type: ignore[assignment]


__all__ = ["ALGO", "PlayingDeepSARSA", "redirect_subprocesses", "refused_child", "register", "use_player", "zoo_command"]
