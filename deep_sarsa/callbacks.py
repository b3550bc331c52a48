"""Long runs: a clean stop at a rollout boundary (:class:`StopAtRolloutBoundary`) and the callback that uses it."""

import pathlib
import signal
import threading
import warnings
from types import FrameType
from typing import TYPE_CHECKING, Any

from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.type_aliases import RolloutReturn, TrainFreq
from stable_baselines3.common.vec_env import VecEnv

if TYPE_CHECKING:
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm as _Algorithm
else:
    _Algorithm = object

#: The signals that :class:`SaveOnInterrupt` turns into a clean stop: Ctrl-C, and what SLURM,
#: Kubernetes and ``docker stop`` send
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopAtRolloutBoundary(_Algorithm):
    """
    Mixin for an SB3 off-policy algorithm: :meth:`request_stop` ends ``learn()`` at the next rollout
    boundary, and ``_learning`` says whether ``learn()`` runs (both for :class:`SaveOnInterrupt`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._stop_requested = False
        self._learning = False  # read by SaveOnInterrupt
        super().__init__(*args, **kwargs)

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

    def _setup_learn(self, *args: Any, **kwargs: Any) -> tuple[int, BaseCallback]:
        self._stop_requested = False
        return super()._setup_learn(*args, **kwargs)

    def learn(self, *args: Any, **kwargs: Any) -> Any:
        self._learning = True
        try:
            return super().learn(*args, **kwargs)
        finally:
            self._learning = False

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_learning"]


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


class SaveOnInterrupt(BaseCallback):
    """
    Checkpoints for long runs: a clean stop with a checkpoint on Ctrl-C (SIGINT) or SIGTERM, and
    optionally an exact checkpoint every ``save_freq`` env steps.

    **Signals.** While training runs, the first SIGINT or SIGTERM does not raise in the middle of an
    update: it asks the model to stop at the next rollout boundary
    (:meth:`deep_sarsa.DeepSARSA.request_stop`); ``learn()`` then returns normally (``interrupted``
    is True, ``signal`` says which one) and this callback writes a checkpoint into ``save_path``
    with :func:`deep_sarsa.checkpoint.save_checkpoint`, from which
    :func:`deep_sarsa.checkpoint.resume` goes on exactly. A second signal outside a checkpoint's
    writing acts at once, as it would without this callback (SIGINT: ``KeyboardInterrupt``; SIGTERM:
    the previous handler, by default the end of the process, with nothing more saved). A second
    signal that arrives while a checkpoint is being written waits until the new checkpoint is
    complete and swapped in, then acts the same way. The previous handlers are put back when
    training ends.

    **Periodic checkpoints.** With ``save_freq=N``, a checkpoint of everything (model, replay
    buffer, envs, every random generator) is written at the first rollout boundary at or after
    each multiple of N env steps (``num_timesteps``, all envs together), and when training ends.
    Training goes on; the run is the same, bit for bit, as the run without the callback. After a
    SIGKILL at any moment, ``resume(save_path)`` goes on from the newest complete one. The
    newest ``keep`` checkpoints are kept (:func:`deep_sarsa.checkpoint.save_checkpoint`). A
    checkpoint that cannot be written (a full disk) raises ``OSError`` out of ``learn()``, saying
    why; the previous checkpoint is intact, and the run can be resumed from it.

    Signal handlers can only be installed from the main thread: elsewhere the callback warns and
    writes the periodic checkpoints only. ``SubprocVecEnv`` is refused when training starts (its
    envs live in other processes and cannot be saved).

    :param save_path: the checkpoint folder
    :param save_freq: write a checkpoint every ``save_freq`` env steps (0: only on a signal)
    :param keep: how many of the newest checkpoints to keep in ``save_path`` (at least 1)
    :param verbose: 1 to print where each checkpoint went
    :param run_id: the run's identity, kept in every checkpoint's manifest
        (:func:`deep_sarsa.checkpoint.save_checkpoint`)
    """

    def __init__(
        self, save_path: str | pathlib.Path, save_freq: int = 0, keep: int = 1, verbose: int = 0, run_id: str | None = None
    ) -> None:
        if not isinstance(save_path, (str, pathlib.PurePath)) or str(save_path) == "":
            raise ValueError(f"save_path must be a folder (a str or a pathlib.Path), got {save_path!r}")
        super().__init__(_count("verbose", verbose, 0))
        self.save_path = pathlib.Path(save_path)
        self.save_freq = _count("save_freq", save_freq, 0)
        self.keep = _count("keep", keep, 1)
        if run_id is not None and (not isinstance(run_id, str) or not run_id):
            raise ValueError(f"run_id must be a non-empty string or None, got {run_id!r}")
        self.run_id = run_id
        #: whether training was stopped by a signal
        self.interrupted = False
        #: the signal that stopped training (``signal.SIGINT`` or ``signal.SIGTERM``), else None
        self.signal: int | None = None
        #: the newest checkpoint this callback wrote (a generation folder inside ``save_path``)
        self.last_checkpoint: pathlib.Path | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._saving = False
        self._deferred: int | None = None
        self._saved_at = -1  # the step of the newest checkpoint, or where training started (the periodic schedule)
        self._written_at: int | None = None  # the step of the newest checkpoint this callback wrote

    def _on_training_start(self) -> None:
        from deep_sarsa.checkpoint import check_saveable_env

        check_saveable_env(self.model.get_env(), "SaveOnInterrupt")
        self.interrupted = False
        self.signal = None
        self._deferred = None
        self._saved_at = self.model.num_timesteps
        self._written_at = None
        if threading.current_thread() is not threading.main_thread():
            warnings.warn(
                "SaveOnInterrupt: learn() runs outside the main thread, where signal handlers cannot be installed: "
                "Ctrl-C and SIGTERM are not turned into a checkpoint (the periodic checkpoints are written)",
                stacklevel=2,
            )
            return
        for signum in SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._handle)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: a handler not set from Python
        self._previous_handlers = {}

    def _act_on(self, signum: int) -> None:
        """A second signal: what it would have done without this callback."""
        self._restore_handlers()
        signal.raise_signal(signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not getattr(self.model, "_learning", False):
            # learn() ended with an error before _on_training_end could put the previous handlers
            # back: do it now, and let the previous handler have this signal
            self._act_on(signum)
            return
        if not self.interrupted:
            self.interrupted = True
            self.signal = signum
            self.model.request_stop()  # type: ignore[attr-defined]
        elif self._saving:
            self._deferred = signum  # acted on once the checkpoint is complete
        else:
            self._act_on(signum)

    def _save(self) -> None:
        from deep_sarsa.checkpoint import latest_checkpoint, save_checkpoint

        self._saving = True
        try:
            save_checkpoint(self.model, self.save_path, keep=self.keep, run_id=self.run_id)  # type: ignore[arg-type]
        finally:
            self._saving = False
        self._saved_at = self._written_at = self.model.num_timesteps
        self.last_checkpoint = latest_checkpoint(self.save_path)
        if self.verbose >= 1:
            print(f"Checkpoint at step {self._saved_at}: {self.last_checkpoint}")
        if self._deferred is not None:
            signum, self._deferred = self._deferred, None
            self._act_on(signum)

    def _on_rollout_start(self) -> None:
        # A rollout boundary: the previous rollout is stored and trained on, nothing of the next one has happened
        if self.save_freq and self.model.num_timesteps // self.save_freq > self._saved_at // self.save_freq:
            self._save()

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        try:
            if (self.interrupted or self.save_freq) and self.model.num_timesteps != self._written_at:
                self._save()
        finally:
            self._restore_handlers()
        if self.interrupted and self.verbose >= 1:
            name = signal.Signals(self.signal).name if self.signal is not None else "a signal"
            print(f"Interrupted by {name} at step {self.model.num_timesteps}: checkpoint in {self.save_path}")
