"""Gymnasium wrappers for reproducing other code's settings."""

from typing import Any, SupportsFloat

import gymnasium as gym


class TimeLimitAsTermination(gym.Wrapper):
    """
    Reports a time-limit truncation as a termination (``terminated=True, truncated=False``), the
    way code written for the old Gym API reads ``done``: the target does not bootstrap at the
    time limit, as if the state there were worth nothing more.

    That is wrong for a state without the time in it (the same state is worth something else
    100 steps earlier), and DeepSARSA bootstraps at truncations on purpose. Use this only to
    reproduce such code, e.g. the Deep SARSA lecture's MountainCar notebook, where it acts as a
    reward shaping: states reached late in an episode look better, and high-energy states are
    reached late (``benchmarks/RESULTS.md``, ``examples/mountain_car_lecture.py``).

    :param env: the environment (with its ``TimeLimit``)
    """

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        return observation, reward, terminated or truncated, False, info
