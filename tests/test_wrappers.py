"""TimeLimitAsTermination: the old Gym ``done`` at a time limit."""

import gymnasium as gym

from deep_sarsa.wrappers import TimeLimitAsTermination


def test_the_time_limit_becomes_a_termination_and_nothing_else_changes() -> None:
    plain, wrapped = gym.make("MountainCar-v0"), TimeLimitAsTermination(gym.make("MountainCar-v0"))
    plain.reset(seed=0)
    wrapped.reset(seed=0)
    for _ in range(200):
        expected = plain.step(1)
        observation, reward, terminated, truncated, _ = wrapped.step(1)
        assert (observation == expected[0]).all() and reward == expected[1]
        assert truncated is False
        assert terminated == (expected[2] or expected[3])
    assert expected[3] and not expected[2]  # the plain env was truncated at step 200 ...
    assert terminated  # ... which the wrapper reports as a termination
