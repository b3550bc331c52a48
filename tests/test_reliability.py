"""Bad input, non-finite values, files, interruption, determinism and the memory of a long run."""

import os
import signal
import time
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from deep_sarsa import DeepSARSA
from deep_sarsa.callbacks import SaveOnInterrupt
from deep_sarsa.checkpoint import list_checkpoints, load_checkpoint, resume
from deep_sarsa.finite import NonFiniteError, check_finite

FAST = dict(learning_starts=20, buffer_size=500, batch_size=16, train_freq=4, target_update_interval=50, seed=0)

# Each row: the keyword, a bad value, and what the error must say. docs/reliability.md lists them.
BAD_KEYWORDS = [
    ("next_action", "greedy", "next_action must be one of"),
    ("loss", "l1", "loss must be one of"),
    ("gamma", 1.5, r"gamma must be in \[0, 1\]"),
    ("gamma", -0.1, r"gamma must be in \[0, 1\]"),
    ("tau", -0.1, r"tau must be in \[0, 1\]"),
    ("tau", 1.1, r"tau must be in \[0, 1\]"),
    ("learning_rate", -1e-3, "learning_rate must be a non-negative finite number"),
    ("learning_rate", float("nan"), "learning_rate must be a non-negative finite number"),
    ("learning_rate", lambda progress: -1.0, "learning_rate must be a non-negative finite number"),
    ("batch_size", 0, "batch_size must be a positive integer"),
    ("buffer_size", 0, "buffer_size must be a positive integer"),
    ("buffer_size", -5, "buffer_size must be a positive integer"),
    ("buffer_size", 10**12, "buffer_size must fit in memory: buffer_size=1000000000000 needs about"),
    ("learning_starts", -1, "learning_starts must be a non-negative integer"),
    ("n_steps", 0, "n_steps must be a positive integer"),
    ("train_freq", 0, "train_freq must be a positive integer"),
    ("train_freq", (4,), r"train_freq must be a positive integer or a tuple \(n, 'step'\|'episode'\), got \(4,\)"),
    ("train_freq", (4, "epoch"), "train_freq must be a positive integer or a tuple"),
    ("gradient_steps", -2, "gradient_steps must be an integer >= -1"),
    ("target_update_interval", 0, "target_update_interval must be a positive integer"),
    ("target_update_interval", (5, "episodes"), "target_update_interval must be an int or a tuple"),
    ("target_update_interval", (5,), "target_update_interval must be an int or a tuple"),
    ("target_update_interval", (2.5, "episode"), "target_update_interval must be a positive integer number of episodes"),
    ("exploration_fraction", 1.5, r"exploration_fraction must be in \[0, 1\]"),
    ("exploration_initial_eps", -0.1, r"exploration_initial_eps must be in \[0, 1\]"),
    ("exploration_final_eps", 2.0, r"exploration_final_eps must be in \[0, 1\]"),
    ("max_grad_norm", -1.0, "max_grad_norm must be a non-negative number"),
    ("policy_kwargs", "foo", "policy_kwargs must be None or a dict of keyword arguments"),
    ("policy_kwargs", ["a"], "policy_kwargs must be None or a dict of keyword arguments"),
    ("policy_kwargs", {"net_arch": 64}, r"policy_kwargs\['net_arch'\] must be a list of positive layer sizes"),
    ("policy_kwargs", {"activation_fn": "tanh"}, r"policy_kwargs\['activation_fn'\] must be a torch.nn.Module class"),
    ("policy_kwargs", {"optimizer_class": "adam"}, r"policy_kwargs\['optimizer_class'\] must be a torch.optim.Optimizer"),
    ("policy_kwargs", {"optimizer_kwargs": 3}, r"policy_kwargs\['optimizer_kwargs'\] must be None or a dict"),
    ("policy_kwargs", {"n_layers": 2}, r"policy_kwargs must hold keywords of MlpPolicy, got unknown keys \['n_layers'\]"),
    ("replay_buffer_kwargs", "big", "replay_buffer_kwargs must be None or a dict"),
    ("replay_buffer_class", "ReplayBuffer", "replay_buffer_class must be None or a subclass of SB3's ReplayBuffer"),
    ("stats_window_size", 0, "stats_window_size must be a positive integer"),
    ("device", "tpu", "device must be 'auto' or a torch device"),
    ("device", 3.5, "device must be 'auto' or a torch device"),
    ("check_finite", None, "check_finite must be True or False, got None"),
    ("use_masking", "yes", "use_masking must be True or False, got 'yes'"),
    ("flush_denormal", 1, "flush_denormal must be True or False, got 1"),
    ("optimize_memory_usage", "no", "optimize_memory_usage must be True or False"),
]


@pytest.mark.parametrize(
    "keyword, value, message",
    BAD_KEYWORDS,
    ids=[f"{k}={v!r}" if not callable(v) else f"{k}=schedule" for k, v, _ in BAD_KEYWORDS],
)
def test_bad_keyword_is_refused_naming_it(keyword: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeepSARSA("MlpPolicy", "CartPole-v1", **{keyword: value})


@pytest.mark.parametrize(
    "action_space",
    [
        spaces.Box(-1, 1, (2,)),
        spaces.MultiDiscrete([2, 3]),
        spaces.MultiBinary(3),
        spaces.Tuple((spaces.Discrete(2), spaces.Discrete(2))),
    ],
    ids=["Box", "MultiDiscrete", "MultiBinary", "Tuple"],
)
def test_unsupported_action_spaces_are_refused(action_space: spaces.Space) -> None:
    class Env(gym.Env):
        observation_space = spaces.Box(-1, 1, (3,))

        def __init__(self) -> None:
            self.action_space = action_space

        def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
            return np.zeros(3, dtype=np.float32), {}

    with pytest.raises(ValueError, match=r"only supports Discrete action spaces.*" + type(action_space).__name__):
        DeepSARSA("MlpPolicy", Env())


@pytest.mark.parametrize("env_id", ["CartPol-v1", "no_such_module:Env-v0"])
def test_unknown_env_id_is_refused_naming_it(env_id: str) -> None:
    with pytest.raises(ValueError, match=f"env='{env_id}' is not an environment Gymnasium can make"):
        DeepSARSA("MlpPolicy", env_id)


class Poisoned(gym.Wrapper):
    """Returns NaN (in the reward or the observation) at one step."""

    def __init__(self, env: gym.Env, at: int, where: str) -> None:
        super().__init__(env)
        self.at, self.where, self.t = at, where, 0

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        if self.t == self.at:
            if self.where == "reward":
                reward = float("nan")
            else:
                obs = np.full_like(obs, np.inf)
        return obs, reward, terminated, truncated, info


@pytest.mark.parametrize("where", ["reward", "observation"])
def test_non_finite_values_stop_training_and_the_model_can_be_saved(where: str, tmp_path: Path) -> None:
    venv = make_vec_env(
        "CartPole-v1",
        n_envs=2,
        seed=0,
        wrapper_class=Poisoned,  # type: ignore[arg-type]
        wrapper_kwargs=dict(at=60, where=where),
    )
    model = DeepSARSA("MlpPolicy", venv, **FAST)  # type: ignore[arg-type]
    with pytest.raises(NonFiniteError, match=f"{where}.* from env 0 at step 120"):
        model.learn(400)
    assert model.replay_buffer is not None and model.replay_buffer.pos == 59  # the bad step was not stored
    assert model.num_timesteps == 118  # nor counted: the model is as it was after the last stored step
    assert model._last_obs is None  # the envs are past the last observation: the next learn() resets them
    assert all(th.isfinite(p).all() for p in model.policy.parameters())
    model.save(tmp_path / "last_good")
    assert DeepSARSA.load(tmp_path / "last_good").num_timesteps == 118
    model.learn(40, reset_num_timesteps=False)  # goes on, from fresh episodes
    assert model.num_timesteps == 158 and model.replay_buffer.pos == 79


def test_check_finite_can_be_switched_off() -> None:
    env = Poisoned(gym.make("CartPole-v1"), at=30, where="reward")
    model = DeepSARSA("MlpPolicy", env, check_finite=False, **FAST)  # type: ignore[arg-type]
    model.learn(40)
    assert model.replay_buffer is not None and np.isnan(model.replay_buffer.rewards).any()


def test_loading_what_is_not_a_deep_sarsa_model_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such model file"):
        DeepSARSA.load(tmp_path / "missing.zip")
    (tmp_path / "text.zip").write_text("not a zip")
    with pytest.raises(ValueError, match=r"text.zip is not a model saved by SB3"):
        DeepSARSA.load(tmp_path / "text.zip")
    model = DeepSARSA("MlpPolicy", "CartPole-v1")
    model.save(tmp_path / "good.zip")
    content = (tmp_path / "good.zip").read_bytes()
    (tmp_path / "truncated.zip").write_bytes(content[: len(content) // 2])
    with pytest.raises(ValueError, match=r"truncated.zip is not a model saved by SB3"):
        DeepSARSA.load(tmp_path / "truncated.zip")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as archive:
        archive.writestr("other", "x")
    with pytest.raises(ValueError, match=r"empty.zip is not a model saved by SB3"):
        DeepSARSA.load(tmp_path / "empty.zip")
    PPO("MlpPolicy", "CartPole-v1").save(tmp_path / "ppo.zip")
    with pytest.raises(ValueError, match=r"ppo.zip was not saved by DeepSARSA"):
        DeepSARSA.load(tmp_path / "ppo.zip")
    DQN("MlpPolicy", "CartPole-v1").save(tmp_path / "dqn.zip")
    with pytest.raises(ValueError, match=r"dqn.zip was not saved by DeepSARSA.*load it with stable_baselines3.DQN"):
        DeepSARSA.load(tmp_path / "dqn.zip")
    with pytest.raises(ValueError, match=r"good.zip: the model does not fit this env.*spaces do not match"):
        DeepSARSA.load(tmp_path / "good.zip", env=gym.make("Acrobot-v1"))
    assert DeepSARSA.load(tmp_path / "good").num_timesteps == 0  # ".zip" may be left out, as in SB3


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", **FAST)  # type: ignore[arg-type]
    model.save(tmp_path / "model.zip")
    before = (tmp_path / "model.zip").read_bytes()
    model.learn(100)

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(th, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "model.zip")
    assert (tmp_path / "model.zip").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]
    monkeypatch.undo()
    model.save(tmp_path / "model")  # no suffix: SB3 adds .zip
    assert DeepSARSA.load(tmp_path / "model.zip").num_timesteps == 100


@pytest.fixture
def python_sigint() -> Any:
    """
    Python's own SIGINT handler for the test, the previous disposition afterwards. A process
    started in the background by a shell without job control (``pytest ... &``, some CI runners)
    inherits SIGINT *ignored*, and then Python does not install its KeyboardInterrupt handler.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


class InterruptAt(BaseCallback):
    """Sends this process a SIGINT (a Ctrl-C) at one step."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def _on_step(self) -> bool:
        if self.num_timesteps == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return True


def test_ctrl_c_with_save_on_interrupt_stops_cleanly_and_saves(tmp_path: Path, python_sigint: None) -> None:
    handler = signal.getsignal(signal.SIGINT)
    model = DeepSARSA("MlpPolicy", "CartPole-v1", **FAST)  # type: ignore[arg-type]
    model.learn(1000, callback=[InterruptAt(137), SaveOnInterrupt(tmp_path)])
    # The rollout in progress (train_freq=4) is finished and trained on, then learn() returns
    assert model.num_timesteps == 140
    assert signal.getsignal(signal.SIGINT) is handler
    # One complete checkpoint (a generation folder) with its signed manifest
    (generation,) = list_checkpoints(tmp_path)
    assert generation.name == "gen-00000001-step-140"
    files = ["manifest.json", "manifest.json.sig", "model.zip", "replay_buffer.pkl", "state.pkl"]
    assert sorted(p.name for p in generation.iterdir()) == files
    loaded = load_checkpoint(tmp_path)
    assert loaded.replay_buffer is not None and loaded.replay_buffer.size() == 140
    resumed = resume(tmp_path)
    assert resumed.num_timesteps == 1000


def test_ctrl_c_after_a_failed_learn_with_save_on_interrupt_is_a_keyboard_interrupt_again(
    tmp_path: Path, python_sigint: None
) -> None:
    class Fail(BaseCallback):
        def _on_step(self) -> bool:
            raise RuntimeError("boom")

    model = DeepSARSA("MlpPolicy", "CartPole-v1", **FAST)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="boom"):
        model.learn(100, callback=[SaveOnInterrupt(tmp_path), Fail()])
    # SaveOnInterrupt's handler is still installed (no _on_training_end), but hands the signal back
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # the signal is handled at the next bytecode; never reached
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not list_checkpoints(tmp_path)


def test_ctrl_c_without_the_callback_leaves_a_usable_model(tmp_path: Path, python_sigint: None) -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", **FAST)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        model.learn(1000, callback=InterruptAt(90))
    action, _ = model.predict(np.zeros(4, dtype=np.float32), deterministic=True)
    assert action in (0, 1)
    model.save(tmp_path / "after_interrupt")
    model.learn(20, reset_num_timesteps=False)


def parameters_after_training(n_envs: int, next_action: str) -> list[np.ndarray]:
    env = make_vec_env("CartPole-v1", n_envs=n_envs, seed=3)
    model = DeepSARSA("MlpPolicy", env, next_action=next_action, **dict(FAST, seed=3))  # type: ignore[arg-type]
    model.learn(400)
    return [p.detach().numpy().copy() for p in model.policy.parameters()]


@pytest.mark.parametrize("n_envs", [1, 3])
@pytest.mark.parametrize("next_action", ["sampled", "expected", "stored"])
def test_same_seed_gives_identical_parameters(n_envs: int, next_action: str) -> None:
    first = parameters_after_training(n_envs, next_action)
    second = parameters_after_training(n_envs, next_action)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    other = DeepSARSA("MlpPolicy", "CartPole-v1", **dict(FAST, seed=4)).learn(400)  # type: ignore[arg-type]
    assert not np.array_equal(first[0], next(other.policy.parameters()).detach().numpy())


@pytest.mark.parametrize(
    "new_obs, reward, infos, dones, message",
    [
        (np.zeros((3, 2)), np.array([0.0, 0.0, np.inf]), [{}] * 3, np.zeros(3), "reward inf .* from env 2 at step 9"),
        (np.array([[0.0, 0.0], [np.nan, 0.0], [0.0, 0.0]]), np.zeros(3), [{}] * 3, np.zeros(3), "observation .* env 1 at"),
        (
            np.zeros((3, 2)),
            np.zeros(3),
            [{}, {}, {"terminal_observation": np.array([0.0, -np.inf])}],
            np.array([0, 0, 1]),
            "observation .* env 2 at",
        ),
        ({"a": np.zeros((3, 1), dtype=np.int64), "b": np.full((3, 1), np.nan)}, np.zeros(3), [{}] * 3, np.zeros(3), "env 0"),
    ],
    ids=["reward", "observation", "terminal-observation", "dict-observation"],
)
def test_check_finite_names_the_env(new_obs: Any, reward: np.ndarray, infos: list, dones: np.ndarray, message: str) -> None:
    with pytest.raises(NonFiniteError, match=message):
        check_finite(new_obs, reward, infos, dones, step=9)
    check_finite(np.zeros((3, 2)), np.zeros(3), [{}] * 3, np.zeros(3), step=9)  # all finite: no error


def test_check_finite_accepts_large_finite_values_whose_sum_overflows() -> None:
    big = np.finfo(np.float32).max
    # Sums to inf in float32 and to more than float64's range with the reward: still all finite
    check_finite(np.full((2, 3), big, dtype=np.float32), np.array([1e308, 1e308]), [{}, {}], np.zeros(2), step=1)
    with pytest.raises(NonFiniteError, match=r"observation .* env 1"):
        check_finite(np.array([[big, big], [big, np.inf]], dtype=np.float32), np.zeros(2), [{}, {}], np.zeros(2), step=1)


class Widened(gym.ObservationWrapper):
    """CartPole's 4 numbers repeated to 8,192 (32 KiB an observation), so that a buffer growing per step shows in RSS."""

    def __init__(self, env: gym.Env, copies: int = 2048) -> None:
        super().__init__(env)
        space = env.observation_space
        assert isinstance(space, spaces.Box)
        self.copies = copies
        self.observation_space = spaces.Box(np.tile(space.low, copies), np.tile(space.high, copies), dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.tile(observation, self.copies)


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class ResidentMemory(BaseCallback):
    """The process's resident memory at every 100th step from ``start`` on."""

    def __init__(self, start: int) -> None:
        super().__init__()
        self.start = start
        self.samples: list[int] = []

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.start and self.num_timesteps % 100 == 0:
            self.samples.append(resident_bytes())
        return True


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident memory from /proc (Linux)")
def test_memory_stops_growing_once_the_replay_buffer_is_full() -> None:
    """
    SB3's replay buffer allocates its arrays up front and writes over the oldest rows once full, so a long run's
    memory plateaus (docs/reliability.md, "Long runs"): 4x the buffer's size in steps, the buffer's arrays are the same
    objects of the same size at the end, and resident memory over the second half grows by less than half of what
    the buffer's arrays would add if they grew with the steps (a leak of that size would fail).
    """
    buffer_size, steps = 500, 2000
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0, wrapper_class=Widened)
    settings: dict[str, Any] = {**FAST, "buffer_size": buffer_size, "policy_kwargs": dict(net_arch=[16])}
    model = DeepSARSA("MlpPolicy", env, next_action="stored", **settings)
    assert model.replay_buffer is not None
    arrays = {name: value for name, value in vars(model.replay_buffer).items() if isinstance(value, np.ndarray)}
    sizes = {name: array.nbytes for name, array in arrays.items()}
    memory = ResidentMemory(start=steps // 2)
    model.learn(steps, callback=memory)
    assert model.replay_buffer.full
    after = {name: value for name, value in vars(model.replay_buffer).items() if isinstance(value, np.ndarray)}
    assert after.keys() == arrays.keys()
    for name, array in after.items():
        assert array is arrays[name] and array.nbytes == sizes[name], name  # written in place, never reallocated
    per_step = sum(sizes.values()) / buffer_size  # about 64 KiB: the observation and the next one
    growth = max(memory.samples) - memory.samples[0]
    assert growth < 0.5 * per_step * (steps // 2), f"{growth / 2**20:.1f} MiB over the last {steps // 2} steps"
