"""DeepSARSA as an SB3 algorithm: DQN's interface, policies, VecEnvs, saving, callbacks, logging."""

import inspect
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv, SimpleMultiObsEnv
from stable_baselines3.common.vec_env import SubprocVecEnv, VecNormalize

from deep_sarsa import DeepSARSA
from deep_sarsa.presets import rl_zoo_dqn

SMALL = dict(learning_starts=50, buffer_size=1000, batch_size=16, train_freq=4, target_update_interval=50, seed=0)


def test_accepts_every_dqn_keyword_with_the_same_default() -> None:
    dqn = inspect.signature(DQN.__init__).parameters
    sarsa = inspect.signature(DeepSARSA.__init__).parameters
    for name, parameter in dqn.items():
        assert name in sarsa, name
        assert sarsa[name].default == parameter.default, name
    assert list(sarsa)[: len(dqn) - 1] == list(dqn)[:-1]  # same positional order
    new = {"next_action", "next_action_net", "loss", "use_masking", "check_finite", "flush_denormal"}
    assert set(sarsa) - set(dqn) == new


def test_is_not_a_dqn() -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1")
    assert not isinstance(model, DQN)


def test_rl_zoo_dqn_entry_works_unchanged() -> None:
    # rl-baselines3-zoo hyperparams/dqn.yml, CartPole-v1 (n_timesteps/policy are zoo keys)
    entry = rl_zoo_dqn("CartPole-v1")
    model = DeepSARSA("MlpPolicy", "CartPole-v1", **entry)
    assert model.learning_rate == 2.3e-3 and model.gradient_steps == 128
    model.learn(1100)
    assert model._n_updates == 2 * 128  # rollouts ending at 1024 and 1280 steps


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "MountainCarContinuous-v0"])
def test_continuous_actions_are_refused_clearly(env_id: str) -> None:
    with pytest.raises(ValueError, match=r"only supports Discrete action spaces.*Box"):
        DeepSARSA("MlpPolicy", env_id)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(next_action="greedy"), "next_action must be one of"),
        (dict(next_action_net="policy"), r"next_action_net must be one of \('target', 'online'\), got 'policy'"),
        (dict(loss="l1"), "loss must be one of"),
        (dict(target_update_interval=(5, "episodes")), "target_update_interval must be"),
        (dict(target_update_interval=(5,)), "target_update_interval must be"),
        (dict(target_update_interval=0), "positive integer"),
        (dict(target_update_interval=(2.5, "episode")), "positive integer"),
    ],
)
def test_bad_new_parameters_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DeepSARSA("MlpPolicy", "CartPole-v1", **kwargs)


@pytest.mark.parametrize("next_action", ["sampled", "expected", "stored"])
def test_logs_loss_updates_exploration_and_q_values(next_action: str) -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", next_action=next_action, **SMALL)  # type: ignore[arg-type]
    model.learn(200)
    logged = model.logger.name_to_value
    for key in ["train/loss", "train/n_updates", "rollout/exploration_rate", "train/q_values"]:
        assert key in logged, key
    assert logged["train/n_updates"] == model._n_updates > 0
    assert ("train/stored_fallback_fraction" in logged) == (next_action == "stored")


class RecordExplorationRate(BaseCallback):
    def __init__(self, rates: list[float]) -> None:
        super().__init__()
        self.rates = rates

    def _on_step(self) -> bool:
        self.rates.append(self.model.exploration_rate)  # type: ignore[attr-defined]
        return True


def test_exploration_schedule_is_dqn_s() -> None:
    kwargs = dict(SMALL, exploration_fraction=0.5, target_update_interval=30)
    sarsa = DeepSARSA("MlpPolicy", "CartPole-v1", **kwargs)  # type: ignore[arg-type]
    dqn = DQN("MlpPolicy", "CartPole-v1", **kwargs)  # type: ignore[arg-type]
    rates: dict[str, list[float]] = {}
    for name, model in [("sarsa", sarsa), ("dqn", dqn)]:
        rates[name] = []
        model.learn(300, callback=RecordExplorationRate(rates[name]))
    assert rates["sarsa"] == rates["dqn"]
    assert rates["sarsa"][-1] == pytest.approx(0.05)


def test_target_network_synced_every_k_episodes() -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", **dict(SMALL, target_update_interval=(3, "episode")))  # type: ignore[arg-type]
    synced_at: list[int] = []
    original = model._update_target_network

    def record() -> None:
        synced_at.append(model._episode_num)
        original()

    model._update_target_network = record  # type: ignore[method-assign]
    model.learn(600)
    assert len(synced_at) >= 5
    assert synced_at == [3 * (i + 1) for i in range(len(synced_at))]
    assert model._episode_num - synced_at[-1] <= 3
    # Right after a hard sync (tau = 1) the target network equals the online one
    model._update_target_network()
    for online, target in zip(model.q_net.parameters(), model.q_net_target.parameters(), strict=True):
        assert th.equal(online, target)


def test_predict_is_greedy_when_deterministic_and_epsilon_greedy_otherwise() -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", seed=0)
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    with th.no_grad():
        greedy = model.q_net(th.as_tensor(obs)).argmax(dim=1).numpy()
    model.exploration_rate = 1.0
    action, _ = model.predict(obs, deterministic=True)
    np.testing.assert_array_equal(action, greedy)
    np.random.seed(0)
    random_actions = np.concatenate([model.predict(obs, deterministic=False)[0] for _ in range(20)])
    assert 0.4 < np.mean(random_actions) < 0.6  # uniform over {0, 1}, not the greedy ones
    model.exploration_rate = 0.0
    np.testing.assert_array_equal(model.predict(obs, deterministic=False)[0], greedy)


def test_save_and_load_in_a_fresh_process(tmp_path: Path) -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", next_action="expected", **SMALL)  # type: ignore[arg-type]
    model.learn(300)
    model.save(tmp_path / "model")
    obs = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)
    np.save(tmp_path / "obs.npy", obs)
    expected, _ = model.predict(obs, deterministic=True)
    with th.no_grad():
        expected_q = model.q_net(th.as_tensor(obs)).numpy()
    script = (
        "import numpy as np, torch as th, sys\n"
        "from deep_sarsa import DeepSARSA\n"
        f"m = DeepSARSA.load(r'{tmp_path / 'model.zip'}', env=None)\n"
        f"obs = np.load(r'{tmp_path / 'obs.npy'}')\n"
        "a, _ = m.predict(obs, deterministic=True)\n"
        f"np.save(r'{tmp_path / 'actions.npy'}', a)\n"
        f"np.save(r'{tmp_path / 'q.npy'}', m.q_net(th.as_tensor(obs)).detach().numpy())\n"
        "print(m.next_action, m.loss, m.target_update_interval)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["expected", "mse", "50"]
    np.testing.assert_array_equal(np.load(tmp_path / "actions.npy"), expected)
    np.testing.assert_array_equal(np.load(tmp_path / "q.npy"), expected_q)


def test_a_file_saved_before_next_action_net_loads_with_the_online_network(tmp_path: Path) -> None:
    # a file of 0.2.0 or before has no next_action_net: its a' came from the online network, so it goes on that way
    model = DeepSARSA("MlpPolicy", "CartPole-v1", **SMALL)  # type: ignore[arg-type]
    assert (model.next_action, model.next_action_net) == ("expected", "target")  # the defaults since 0.3.0
    model.save(tmp_path / "new.zip")
    with zipfile.ZipFile(tmp_path / "new.zip") as new, zipfile.ZipFile(tmp_path / "old.zip", "w") as old:
        for item in new.infolist():
            content = new.read(item)
            if item.filename == "data":
                data = json.loads(content)
                del data["next_action_net"]
                content = json.dumps(data).encode()
            old.writestr(item, content)
    assert DeepSARSA.load(tmp_path / "new.zip").next_action_net == "target"
    assert DeepSARSA.load(tmp_path / "old.zip").next_action_net == "online"
    assert DeepSARSA.load(tmp_path / "old.zip", next_action_net="target").next_action_net == "target"  # as asked


def test_load_with_env_and_continue_training(tmp_path: Path) -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", next_action="stored", **SMALL)  # type: ignore[arg-type]
    model.learn(200)
    model.save(tmp_path / "m.zip")
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    loaded = DeepSARSA.load(tmp_path / "m.zip", env=gym.make("CartPole-v1"))
    loaded.load_replay_buffer(tmp_path / "buffer.pkl")
    assert loaded.replay_buffer is not None and loaded.replay_buffer.size() == 200
    loaded.learn(100, reset_num_timesteps=False)
    assert loaded.num_timesteps == 300
    assert loaded.replay_buffer.size() == 300


def test_callbacks_are_called(tmp_path: Path) -> None:
    calls = {"training_start": 0, "rollout_start": 0, "step": 0, "rollout_end": 0, "training_end": 0}

    class Count(BaseCallback):
        def _on_training_start(self) -> None:
            calls["training_start"] += 1

        def _on_rollout_start(self) -> None:
            calls["rollout_start"] += 1

        def _on_step(self) -> bool:
            calls["step"] += 1
            return True

        def _on_rollout_end(self) -> None:
            calls["rollout_end"] += 1

        def _on_training_end(self) -> None:
            calls["training_end"] += 1

    eval_callback = EvalCallback(gym.make("CartPole-v1"), eval_freq=100, n_eval_episodes=2, log_path=str(tmp_path))
    checkpoint = CheckpointCallback(save_freq=100, save_path=str(tmp_path))
    model = DeepSARSA("MlpPolicy", "CartPole-v1", **SMALL)  # type: ignore[arg-type]
    model.learn(200, callback=[Count(), eval_callback, checkpoint])
    assert calls["step"] == 200 and calls["training_start"] == calls["training_end"] == 1
    assert calls["rollout_start"] == calls["rollout_end"] == 50
    assert eval_callback.n_calls == 200 and len(eval_callback.evaluations_results) == 2
    assert sorted(p.name for p in tmp_path.glob("*.zip")) == ["rl_model_100_steps.zip", "rl_model_200_steps.zip"]


def test_stopping_callback_stops_training() -> None:
    class StopAt(BaseCallback):
        def _on_step(self) -> bool:
            return self.num_timesteps < 70

    model = DeepSARSA("MlpPolicy", "CartPole-v1", **SMALL)  # type: ignore[arg-type]
    model.learn(1000, callback=StopAt())
    assert model.num_timesteps == 70


@pytest.mark.parametrize("next_action", ["sampled", "expected", "stored"])
def test_dummy_vec_env_with_several_envs(next_action: str) -> None:
    env = make_vec_env("CartPole-v1", n_envs=4, seed=0)
    model = DeepSARSA("MlpPolicy", env, next_action=next_action, **SMALL)  # type: ignore[arg-type]
    model.learn(400)
    assert model.num_timesteps == 400 and model._n_updates > 0


def test_subproc_vec_env_with_stored_next_action() -> None:
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv)
    try:
        model = DeepSARSA("MlpPolicy", env, next_action="stored", **SMALL)  # type: ignore[arg-type]
        model.learn(320)
        assert model.num_timesteps == 320 and model._n_updates > 0
    finally:
        env.close()


@pytest.mark.parametrize("next_action", ["sampled", "stored"])
def test_vec_normalize(next_action: str) -> None:
    env = VecNormalize(make_vec_env("CartPole-v1", n_envs=2, seed=0))
    model = DeepSARSA("MlpPolicy", env, next_action=next_action, **SMALL)  # type: ignore[arg-type]
    model.learn(300)
    assert model.get_vec_normalize_env() is env and env.obs_rms.count > 300  # type: ignore[attr-defined]


@pytest.mark.parametrize("next_action", ["sampled", "expected", "stored"])
def test_dict_observations(next_action: str) -> None:
    model = DeepSARSA("MultiInputPolicy", SimpleMultiObsEnv(random_start=True), next_action=next_action, **SMALL)  # type: ignore[arg-type]
    model.learn(200)
    assert model._n_updates > 0


def test_image_observations_with_cnn_policy() -> None:
    env = FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=True)
    model = DeepSARSA("CnnPolicy", env, next_action="stored", **dict(SMALL, buffer_size=200))  # type: ignore[arg-type]
    model.learn(120)
    assert model._n_updates > 0


def test_discrete_observations_are_one_hot() -> None:
    model = DeepSARSA("MlpPolicy", "FrozenLake-v1", policy_kwargs=dict(net_arch=[]), **SMALL)  # type: ignore[arg-type]
    assert model.q_net.q_net[0].in_features == 16
    model.learn(200)


@pytest.mark.parametrize("next_action", ["sampled", "expected", "stored"])
def test_n_steps_uses_sb3_n_step_buffer(next_action: str) -> None:
    from stable_baselines3.common.buffers import NStepReplayBuffer

    model = DeepSARSA("MlpPolicy", "CartPole-v1", n_steps=3, next_action=next_action, **SMALL)  # type: ignore[arg-type]
    assert isinstance(model.replay_buffer, NStepReplayBuffer) and model.replay_buffer.n_steps == 3
    model.learn(200)


def test_tensorboard_and_progress_bar(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    model = DeepSARSA("MlpPolicy", "CartPole-v1", tensorboard_log=str(tmp_path), **SMALL)  # type: ignore[arg-type]
    model.learn(200, progress_bar=True)
    runs = list(tmp_path.glob("DeepSARSA_*"))
    assert len(runs) == 1 and list(runs[0].glob("events.out.tfevents.*"))


def test_learning_continues_without_reset(tmp_path: Path) -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", **SMALL)  # type: ignore[arg-type]
    model.learn(160)
    updates = model._n_updates
    model.learn(160, reset_num_timesteps=False)
    assert model.num_timesteps == 320 and model._n_updates > updates
