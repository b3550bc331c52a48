"""A wrapper the zoo tests name in rl-zoo3's ``env_wrapper:``: it counts the invalid actions taken on Taxi."""

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np


class InvalidActionCounter(gym.Wrapper):
    """
    Counts, over every instance in this process, the steps taken and the steps whose action Taxi's own
    ``action_mask(state)`` calls invalid (checked before the step).

    :param env: a Taxi env
    """

    counts: ClassVar[dict[str, int]] = {"steps": 0, "invalid": 0}

    @classmethod
    def reset_counts(cls) -> None:
        """Set both counts to zero."""
        cls.counts.update(steps=0, invalid=0)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        taxi: Any = self.env.unwrapped
        valid = bool(np.asarray(taxi.action_mask(taxi.s))[int(action)])
        InvalidActionCounter.counts["steps"] += 1
        InvalidActionCounter.counts["invalid"] += int(not valid)
        return self.env.step(action)
