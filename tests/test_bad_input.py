"""Bad input that used to get through: reset observations, VecNormalize, learn()'s steps, schedules, memory, load overrides."""

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import deep_sarsa.validation as validation_module
from deep_sarsa import DeepSARSA, NonFiniteError
from deep_sarsa.cli.parser import main
from deep_sarsa.finite import RawFiniteCheck
from deep_sarsa.validation import BUFFER_MEMORY_WARNING_FRACTION, replay_buffer_bytes

SMALL: dict[str, Any] = dict(
    learning_starts=10, buffer_size=500, batch_size=8, train_freq=4, target_update_interval=50, seed=0
)


class BadReset(gym.Wrapper):
    """CartPole whose reset() returns NaN in the observation."""

    def reset(self, **kwargs: Any) -> Any:
        observation, info = self.env.reset(**kwargs)
        return np.full_like(observation, np.nan), info


def test_a_non_finite_reset_observation_stops_learn() -> None:
    model = DeepSARSA("MlpPolicy", BadReset(gym.make("CartPole-v1")), **SMALL)
    with pytest.raises(NonFiniteError, match=r"observation with NaN or inf from env 0 returned by reset\(\)"):
        model.learn(50)
    assert model.replay_buffer is not None and model.replay_buffer.size() == 0 and model.num_timesteps == 0


def test_a_non_finite_reset_observation_after_set_env_and_load_stops_learn(tmp_path: Path) -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", **SMALL)
    model.learn(20)
    model.set_env(BadReset(gym.make("CartPole-v1")))
    with pytest.raises(NonFiniteError, match="returned by reset"):
        model.learn(20, reset_num_timesteps=False)
    model.save(tmp_path / "model")
    loaded = DeepSARSA.load(tmp_path / "model", env=BadReset(gym.make("CartPole-v1")))
    with pytest.raises(NonFiniteError, match="returned by reset"):
        loaded.learn(20)


class InfRewardAt(gym.Wrapper):
    """Returns an infinite reward at one step of the env with index ``bad_index``."""

    def __init__(self, env: gym.Env, index: int, bad_index: int, at: int) -> None:
        super().__init__(env)
        self.bad, self.at, self.t = index == bad_index, at, 0

    def step(self, action: Any) -> Any:
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        return observation, np.inf if self.bad and self.t == self.at else reward, terminated, truncated, info


def normalized_envs(bad_index: int, at: int) -> VecNormalize:
    def make(index: int) -> Callable[[], gym.Env]:
        return lambda: InfRewardAt(gym.make("CartPole-v1"), index, bad_index, at)

    return VecNormalize(DummyVecEnv([make(0), make(1)]))


def test_with_vec_normalize_the_raw_value_is_checked_and_the_statistics_stay_clean() -> None:
    env = normalized_envs(bad_index=1, at=30)
    model = DeepSARSA("MlpPolicy", env, **SMALL)
    with pytest.raises(NonFiniteError, match="reward inf with NaN or inf from env 1 at step 60"):
        model.learn(200)
    assert isinstance(env.obs_rms, RunningMeanStd)
    assert np.isfinite(env.obs_rms.mean).all() and np.isfinite(env.obs_rms.var).all()
    assert np.isfinite(env.ret_rms.mean) and np.isfinite(env.ret_rms.var) and np.isfinite(env.returns).all()
    assert not isinstance(env.venv, RawFiniteCheck)  # the check is under VecNormalize only while learn() runs
    assert model.num_timesteps == 58 and model.replay_buffer is not None and model.replay_buffer.pos == 29
    model.learn(100, reset_num_timesteps=False)  # later learn() calls work
    assert model.num_timesteps >= 158 and model.replay_buffer.pos == 29 + (model.num_timesteps - 58) // 2


def test_with_vec_normalize_a_non_finite_reset_observation_is_caught_before_the_statistics() -> None:
    env = VecNormalize(DummyVecEnv([lambda: BadReset(gym.make("CartPole-v1"))]))
    model = DeepSARSA("MlpPolicy", env, **SMALL)
    with pytest.raises(NonFiniteError, match="returned by reset"):
        model.learn(20)
    assert isinstance(env.obs_rms, RunningMeanStd)
    assert np.isfinite(env.obs_rms.mean).all() and env.obs_rms.count < 1 + 1e-3


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the unchecked run: VecNormalize computes with the inf
def test_the_vec_normalize_check_follows_the_step_count_and_check_finite_off_skips_it() -> None:
    env = normalized_envs(bad_index=0, at=45)
    model = DeepSARSA("MlpPolicy", env, **SMALL)
    model.learn(40)
    with pytest.raises(NonFiniteError, match="from env 0 at step 90"):
        model.learn(100, reset_num_timesteps=False)
    unchecked = DeepSARSA("MlpPolicy", normalized_envs(bad_index=0, at=45), check_finite=False, **SMALL)
    unchecked.learn(100)


@pytest.mark.parametrize("total_timesteps", [-5, float("nan"), float("inf"), 1.5, "100", None, True])
def test_a_bad_total_timesteps_is_refused_naming_it(total_timesteps: Any) -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", **SMALL)
    with pytest.raises(ValueError, match=f"total_timesteps must be a non-negative integer, got {total_timesteps!r}"):
        model.learn(total_timesteps)


def test_zero_total_timesteps_does_nothing_as_in_dqn_and_an_integral_float_is_accepted() -> None:
    dqn = DQN("MlpPolicy", "CartPole-v1", **SMALL).learn(0)
    model = DeepSARSA("MlpPolicy", "CartPole-v1", **SMALL).learn(0)
    assert model.num_timesteps == dqn.num_timesteps == 0
    assert model.learn(1e2).num_timesteps == 100  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value, message",
    [
        ("policy_kwargs=foo", "policy_kwargs must be None or a dict"),
        ("policy_kwargs=dict(", r"policy_kwargs must be a literal 'dict\(key=value, ...\)'"),
        ("policy_kwargs=['a']", "policy_kwargs must be None or a dict"),
        ("policy_kwargs=dict(net_arch=64)", r"policy_kwargs\['net_arch'\] must be a list"),
        ("policy_kwargs=dict(activation_fn='tanh')", r"policy_kwargs\['activation_fn'\] must be a torch.nn.Module class"),
        ("train_freq=(4,)", "train_freq must be a positive integer or a tuple"),
        ("device=tpu", "device must be 'auto' or a torch device"),
        ("check_finite=None", "check_finite must be True or False"),
        ("use_masking=yes", "use_masking must be True or False"),
    ],
)
def test_bad_hyperparameters_in_the_cli_exit_2_with_one_line(
    value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "CartPole-v1", "--output", str(tmp_path / "run"), "--timesteps", "10", "--hyperparams", value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert __import__("re").search(message, err), err


def test_a_schedule_is_checked_at_each_value_it_gives() -> None:
    def schedule(progress_remaining: float) -> float:
        return 1e-3 if progress_remaining > 0.5 else float("nan")

    model = DeepSARSA("MlpPolicy", "CartPole-v1", learning_rate=schedule, **SMALL)
    with pytest.raises(ValueError, match=r"learning_rate must be a non-negative finite number .*got nan .*progress_remaining"):
        model.learn(200)
    assert 90 < model.num_timesteps < 110


def test_the_replay_buffer_estimate_is_what_sb3_allocates() -> None:
    cases: list[tuple[spaces.Space, int, bool]] = [
        (spaces.Box(0, 255, (3, 8, 8), dtype=np.uint8), 2, False),
        (spaces.Box(-1, 1, (5,)), 3, True),
        (spaces.Discrete(7), 1, False),
    ]
    for observation_space, n_envs, optimize in cases:
        action_space = spaces.Discrete(4)
        buffer = ReplayBuffer(
            100,
            observation_space,
            action_space,
            n_envs=n_envs,
            optimize_memory_usage=optimize,
            handle_timeout_termination=False,
        )
        arrays = [buffer.observations, buffer.actions, buffer.rewards, buffer.dones, buffer.timeouts]
        if not optimize:
            arrays.append(buffer.next_observations)
        expected = sum(array.nbytes for array in arrays)
        assert replay_buffer_bytes(observation_space, action_space, 100, n_envs, optimize) == expected


def test_a_buffer_near_the_available_memory_is_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    estimate = replay_buffer_bytes(spaces.Box(-1, 1, (4,)), spaces.Discrete(2), 500, 1, False)
    available = int(estimate / BUFFER_MEMORY_WARNING_FRACTION) - 1
    monkeypatch.setattr(validation_module, "memory_bytes", lambda: (10 * estimate, available))
    with pytest.warns(UserWarning, match=r"buffer_size=500 needs about .* GiB for the replay buffer, more than 50%"):
        DeepSARSA("MlpPolicy", "CartPole-v1", **SMALL)
    monkeypatch.setattr(validation_module, "memory_bytes", lambda: (estimate - 1, available))
    with pytest.raises(ValueError, match="buffer_size must fit in memory"):
        DeepSARSA("MlpPolicy", "CartPole-v1", **SMALL)


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(next_action="bogus"), "next_action must be one of"),
        (dict(loss="bogus"), "loss must be one of"),
        (dict(custom_objects={"gamma": 7.0}), r"gamma must be in \[0, 1\], got 7.0"),
        (dict(custom_objects={"learning_rate": -1.0}), "learning_rate must be a non-negative finite number"),
        (dict(exploration_fraction=3.0), r"exploration_fraction must be in \[0, 1\]"),
    ],
)
def test_settings_overridden_at_load_are_checked_as_the_constructor_checks_them(
    override: dict[str, Any], message: str, tmp_path: Path
) -> None:
    DeepSARSA("MlpPolicy", "CartPole-v1", **SMALL).save(tmp_path / "model")
    with pytest.raises(ValueError, match=message):
        DeepSARSA.load(tmp_path / "model", env=gym.make("CartPole-v1"), **override).learn(100)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("next_action", "bogus", "next_action must be one of"),
        ("gamma", 7.0, r"gamma must be in \[0, 1\]"),
        ("loss", 1, "loss"),
    ],
)
def test_settings_assigned_after_construction_are_checked_when_learning_starts(name: str, value: Any, message: str) -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", **SMALL)
    setattr(model, name, value)
    with pytest.raises(ValueError, match=message):
        model.learn(100)
    assert model.num_timesteps == 0 and model._n_updates == 0


class WithOwnKeyword(DeepSARSA):
    """A user's subclass in the usual shape: its own keyword, the rest passed on."""

    def __init__(self, *args: Any, extra: float = 0.5, **kwargs: Any) -> None:
        self.extra = extra
        super().__init__(*args, **kwargs)


def test_a_subclass_taking_args_and_kwargs_is_built_and_its_settings_still_checked(tmp_path: Path) -> None:
    model = WithOwnKeyword("MlpPolicy", "CartPole-v1", extra=0.25, **SMALL).learn(100)
    assert model.extra == 0.25 and model.num_timesteps == 100
    model.save(tmp_path / "model")
    assert WithOwnKeyword.load(tmp_path / "model").gamma == model.gamma
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
        WithOwnKeyword("MlpPolicy", "CartPole-v1", **{**SMALL, "gamma": 7.0})
    model.gamma = 7.0
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
        model.learn(100)
    assert model.num_timesteps == 100  # refused before a step


class Endless(gym.Env):
    """An env whose episodes never end."""

    observation_space = spaces.Box(-1, 1, (2,))
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.zeros(2, dtype=np.float32), 0.0, False, False, {}


def test_episode_target_syncs_warn_once_when_no_episode_ever_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation_module, "NO_EPISODE_END_WARNING_STEPS", 100)
    model = DeepSARSA("MlpPolicy", Endless(), **dict(SMALL, target_update_interval=(2, "episode")))
    with pytest.warns(
        UserWarning, match=r"target_update_interval=\(2, 'episode'\) counts episodes, but no episode has"
    ) as record:
        model.learn(400)
    assert sum("counts episodes" in str(warning.message) for warning in record) == 1
    cartpole = DeepSARSA("MlpPolicy", "CartPole-v1", **dict(SMALL, target_update_interval=(2, "episode")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cartpole.learn(400)  # episodes end: no warning


def test_predict_on_a_non_finite_observation_raises() -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", **SMALL)
    bad = np.array([0.0, np.nan, 0.0, 0.0], dtype=np.float32)
    with pytest.raises(NonFiniteError, match=r"the observation given to predict\(\) holds NaN or inf"):
        model.predict(bad, deterministic=True)
    with pytest.raises(NonFiniteError, match="observation given to predict"):
        model.predict(bad, action_masks=np.array([True, True]))
    model.check_finite = False
    action, _ = model.predict(bad, deterministic=True)
    assert action in (0, 1)


def test_dict_observations_with_n_steps_are_refused_at_construction() -> None:
    class DictEnv(gym.Env):
        observation_space = spaces.Dict({"a": spaces.Box(-1, 1, (2,))})
        action_space = spaces.Discrete(2)

    with pytest.raises(ValueError, match="n_steps must be 1 with a Dict observation space, got 3"):
        DeepSARSA("MultiInputPolicy", DictEnv(), n_steps=3)
