"""Callbacks for long runs."""

import pathlib
import signal
from types import FrameType
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback


class SaveOnInterrupt(BaseCallback):
    """
    Turn Ctrl-C (SIGINT) during ``learn()`` into a clean stop that saves the model and its replay buffer.

    While training runs, the first Ctrl-C does not raise ``KeyboardInterrupt`` in the middle of an
    update: it asks training to stop after the current env step; ``learn()`` then returns
    normally and this callback saves ``<save_path>/<name_prefix>.zip`` (and the replay buffer as
    ``<name_prefix>_replay_buffer.pkl``). A second Ctrl-C interrupts at once, as usual. The
    previous SIGINT handler is restored when training ends. Nothing is saved when training ends
    without an interrupt (use SB3's ``CheckpointCallback`` for that).

    :param save_path: folder to save into
    :param name_prefix: file name of the model, without ``.zip``
    :param save_replay_buffer: also save the replay buffer, to resume with ``load_replay_buffer``
    :param verbose: 1 to print where the files went
    """

    def __init__(
        self,
        save_path: str | pathlib.Path,
        name_prefix: str = "interrupted",
        save_replay_buffer: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.save_path = pathlib.Path(save_path)
        self.name_prefix = name_prefix
        self.save_replay_buffer = save_replay_buffer
        self.interrupted = False
        self._previous_handler: Any = None

    def _on_training_start(self) -> None:
        self.interrupted = False
        self._previous_handler = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.interrupted = True
        # A second Ctrl-C goes to the previous handler (KeyboardInterrupt by default)
        signal.signal(signal.SIGINT, self._previous_handler)

    def _on_step(self) -> bool:
        return not self.interrupted

    def _on_training_end(self) -> None:
        signal.signal(signal.SIGINT, self._previous_handler)
        if not self.interrupted:
            return
        model_path = self.save_path / f"{self.name_prefix}.zip"
        self.model.save(model_path)
        if self.save_replay_buffer and getattr(self.model, "replay_buffer", None) is not None:
            self.model.save_replay_buffer(self.save_path / f"{self.name_prefix}_replay_buffer.pkl")  # type: ignore[attr-defined]
        if self.verbose >= 1:
            print(f"Interrupted at step {self.num_timesteps}: saved {model_path}")
