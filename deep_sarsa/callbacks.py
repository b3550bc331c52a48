"""Callbacks for long runs."""

import pathlib
import signal
from types import FrameType
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback


class SaveOnInterrupt(BaseCallback):
    """
    Turn Ctrl-C (SIGINT) during ``learn()`` into a clean stop that saves a checkpoint.

    While training runs, the first Ctrl-C does not raise ``KeyboardInterrupt`` in the middle of an
    update: it asks the model to stop at the next rollout boundary
    (:meth:`deep_sarsa.DeepSARSA.request_stop`); ``learn()`` then returns normally and this callback
    saves a checkpoint into ``save_path`` with :func:`deep_sarsa.checkpoint.save_checkpoint`: the
    model, its replay buffer, the envs and the random generators, from which
    :func:`deep_sarsa.checkpoint.resume` goes on exactly. A second Ctrl-C interrupts at once, as
    usual. The previous SIGINT handler is restored when training ends. Nothing is saved when
    training ends without an interrupt (use SB3's ``CheckpointCallback`` for periodic saves).

    Signal handlers can only be installed from the main thread.

    :param save_path: the checkpoint folder
    :param verbose: 1 to print where the checkpoint went
    """

    def __init__(self, save_path: str | pathlib.Path, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.save_path = pathlib.Path(save_path)
        self.interrupted = False
        self._previous_handler: Any = None

    def _on_training_start(self) -> None:
        self.interrupted = False
        self._previous_handler = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not getattr(self.model, "_learning", False):
            # learn() ended with an error before _on_training_end could put the previous handler
            # back: do it now, and let that handler have this Ctrl-C
            signal.signal(signal.SIGINT, self._previous_handler)
            signal.raise_signal(signal.SIGINT)
            return
        self.interrupted = True
        self.model.request_stop()  # type: ignore[attr-defined]
        # A second Ctrl-C goes to the previous handler (KeyboardInterrupt by default)
        signal.signal(signal.SIGINT, self._previous_handler)

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        from deep_sarsa.checkpoint import save_checkpoint

        signal.signal(signal.SIGINT, self._previous_handler)
        if not self.interrupted:
            return
        save_checkpoint(self.model, self.save_path)  # type: ignore[arg-type]
        if self.verbose >= 1:
            print(f"Interrupted at step {self.num_timesteps}: checkpoint saved in {self.save_path}")
