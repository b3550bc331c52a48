"""Gymnasium wrappers for reproducing other code's settings."""

from typing import Any, SupportsFloat

import gymnasium as gym
from gymnasium import spaces


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


class ZeroBasedActions(gym.ActionWrapper):
    """
    Turns a ``Discrete(n, start=k)`` action space into ``Discrete(n)``: the agent's action ``i`` is
    the env's action ``i + k``. DeepSARSA (like DQN) indexes Q-values by action, from 0.

    :param env: an environment with a Discrete action space
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        assert isinstance(env.action_space, spaces.Discrete), "ZeroBasedActions needs a Discrete action space"
        self.start = int(env.action_space.start)
        self.action_space = spaces.Discrete(int(env.action_space.n))

    def action(self, action: Any) -> int:
        return int(action) + self.start
