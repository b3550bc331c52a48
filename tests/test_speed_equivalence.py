"""
The faster code paths compute exactly what the straightforward formulation computes: pinned
down on fixed batches against a plain re-implementation of one update and of DQN's ``predict``.
"""

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.dqn import DQN

from deep_sarsa import DeepSARSA
from deep_sarsa.targets import sample_epsilon_greedy


def straightforward_update(model: DeepSARSA, batch_size: int) -> None:
    """One update written out plainly: SB3's sampling, three separate forwards, MSE, the policy's Adam."""
    assert model.replay_buffer is not None
    data = model.replay_buffer.sample(batch_size)
    with th.no_grad():
        next_q_target = model.q_net_target(data.next_observations)
        next_actions = sample_epsilon_greedy(model.q_net(data.next_observations), model.exploration_rate)
        target = data.rewards + (1 - data.dones) * model.gamma * next_q_target.gather(1, next_actions)
    q_taken = model.q_net(data.observations).gather(1, data.actions.long())
    loss = ((q_taken - target) ** 2).mean()
    model.policy.optimizer.zero_grad()
    loss.backward()
    th.nn.utils.clip_grad_norm_(model.policy.parameters(), model.max_grad_norm)
    model.policy.optimizer.step()


def trained_pair(**kwargs: Any) -> tuple[DeepSARSA, DeepSARSA]:
    """A model after 200 steps (full buffer, some Adam history) and a copy of it to run the plain update on."""
    model = DeepSARSA("MlpPolicy", "CartPole-v1", learning_starts=100, buffer_size=1000, batch_size=32, seed=0, **kwargs)
    model.learn(200)
    reference = copy.deepcopy(model)
    return model, reference


def train_both(model: DeepSARSA, reference: DeepSARSA, steps: int) -> list[th.Tensor]:
    """``model.train(steps)`` and ``steps`` straightforward updates of ``reference``, on the same random numbers."""
    before = [p.detach().clone() for p in model.q_net.parameters()]
    np.random.seed(7)
    th.manual_seed(7)
    model.train(gradient_steps=steps, batch_size=32)
    np.random.seed(7)
    th.manual_seed(7)
    for _ in range(steps):
        straightforward_update(reference, 32)
    assert not all(th.equal(a, b) for a, b in zip(before, model.q_net.parameters(), strict=True))  # it did train
    return before


@pytest.mark.parametrize("per_pass", [None, 3])
@pytest.mark.parametrize("steps", [1, 50])
def test_train_matches_the_straightforward_update_exactly(steps: int, per_pass: int | None, monkeypatch: Any) -> None:
    """
    With the same optimizer and no flush-denormal mode, ``train`` is bit for bit the plain
    update: sampling minibatches ahead and evaluating the target network on all of them in one
    pass (in chunks of ``per_pass`` minibatches) changes nothing.
    """
    model, reference = trained_pair(flush_denormal=False, policy_kwargs=dict(optimizer_kwargs=dict(fused=False)))
    if per_pass is not None:
        monkeypatch.setattr(model, "_minibatches_per_pass", lambda batch_size: per_pass)
    train_both(model, reference, steps)
    for fast, plain in zip(model.policy.parameters(), reference.policy.parameters(), strict=True):
        assert th.equal(fast, plain)


def test_default_fast_path_matches_pytorchs_default_adam_up_to_rounding() -> None:
    """
    The defaults (fused Adam, flush-denormal mode inside ``train``) against the plain update
    with PyTorch's default single-tensor Adam and no flush-denormal mode: the same parameters
    up to floating-point rounding, far below one step's change.
    """
    model, _ = trained_pair()
    _, reference = trained_pair(policy_kwargs=dict(optimizer_kwargs=dict(fused=False)))
    assert model.policy.optimizer.param_groups[0]["fused"] is True
    assert not reference.policy.optimizer.param_groups[0]["fused"]
    before = train_both(model, reference, 100)
    moved = max((after - start).abs().max().item() for after, start in zip(reference.q_net.parameters(), before, strict=True))
    pairs = zip(model.q_net.parameters(), reference.q_net.parameters(), strict=True)
    apart = max((fast - plain).abs().max().item() for fast, plain in pairs)
    assert moved > 1e-3
    assert apart <= 1e-4 * moved


@pytest.mark.parametrize(
    ("optimizer_class", "optimizer_kwargs", "fused"),
    [
        (th.optim.Adam, {}, True),
        (th.optim.AdamW, {"weight_decay": 0.01}, True),
        (th.optim.Adam, {"fused": False}, False),
        (th.optim.Adam, {"foreach": True}, False),
        (th.optim.SGD, {}, None),
    ],
)
def test_fused_adam_is_the_default_unless_the_user_chose(
    optimizer_class: type[th.optim.Optimizer], optimizer_kwargs: dict[str, Any], fused: bool | None, tmp_path: Path
) -> None:
    policy_kwargs = dict(optimizer_class=optimizer_class, optimizer_kwargs=optimizer_kwargs)
    model = DeepSARSA("MlpPolicy", "CartPole-v1", policy_kwargs=policy_kwargs, device="cpu")
    group = model.policy.optimizer.param_groups[0]
    assert isinstance(model.policy.optimizer, optimizer_class)
    assert group.get("fused") == fused or (fused is False and not group.get("fused"))
    if optimizer_kwargs.get("weight_decay"):
        assert group["weight_decay"] == optimizer_kwargs["weight_decay"]
    # What is saved is what the user gave; loading builds the same optimizer again
    assert model.policy_kwargs == policy_kwargs
    model.save(tmp_path / "model.zip")
    loaded = DeepSARSA.load(tmp_path / "model.zip", device="cpu")
    assert loaded.policy_kwargs == policy_kwargs
    assert loaded.policy.optimizer.param_groups[0].get("fused") == group.get("fused")


@pytest.mark.parametrize("user_mode", [False, True])
def test_flush_denormal_is_on_inside_train_and_restored_after(user_mode: bool, monkeypatch: Any) -> None:
    def flushes() -> bool:
        return th.tensor([1e-39], dtype=th.float32).mul(1.0).item() == 0.0

    model = DeepSARSA("MlpPolicy", "CartPole-v1", learning_starts=50, train_freq=50, buffer_size=500, device="cpu")
    seen: list[bool] = []
    original = model._train

    def recording_train(gradient_steps: int, batch_size: int) -> None:
        seen.append(flushes())
        original(gradient_steps, batch_size)

    monkeypatch.setattr(model, "_train", recording_train)
    th.set_flush_denormal(user_mode)
    try:
        model.learn(200)
        assert seen and all(seen)  # on during every train() call
        assert flushes() == user_mode  # and the user's mode afterwards
        seen.clear()
        model.flush_denormal = False
        model.learn(200)
        assert seen and all(mode == user_mode for mode in seen)  # left alone
    finally:
        th.set_flush_denormal(False)


def test_rollout_actions_match_dqn_predict() -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", learning_starts=0, seed=0)
    model.learn(50)
    observations = np.random.default_rng(0).normal(size=(200, 1, 4)).astype(np.float32)
    for epsilon in (0.0, 0.3, 1.0):
        model.exploration_rate = epsilon
        np.random.seed(11)
        model.action_space.seed(11)
        fast = []
        for obs in observations:
            model._last_obs = obs
            fast.append(model._sample_action(learning_starts=0, n_envs=1)[0])
        next_fast = np.random.rand()
        np.random.seed(11)
        model.action_space.seed(11)
        plain = [DQN.predict(model, obs, deterministic=False)[0] for obs in observations]  # type: ignore[arg-type]
        np.testing.assert_array_equal(np.concatenate(fast), np.concatenate(plain))
        assert np.random.rand() == next_fast  # the same random numbers were drawn


def test_training_mode_switch_sets_the_flags_sb3_sets() -> None:
    """``_set_training_mode`` (flags set directly) leaves every module as SB3's ``set_training_mode`` does."""
    model = DeepSARSA("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8]), device="cpu")
    reference = copy.deepcopy(model.policy)
    assert model._mode_modules is not None  # SB3's own policy: the direct path is taken
    for mode in (True, False, True, False):
        model._set_training_mode(mode)
        reference.set_training_mode(mode)
        assert [module.training for module in model.policy.modules()] == [module.training for module in reference.modules()]
        assert model.q_net.q_net[0].training is mode and model.policy.training is mode
        assert not model.q_net_target.training  # the target network stays in evaluation mode


class ModeRecordingExtractor(FlattenExtractor):
    """A features extractor with its own ``train()``, which must be called."""

    modes: list[bool] = []

    def train(self, mode: bool = True) -> "ModeRecordingExtractor":
        ModeRecordingExtractor.modes.append(mode)
        return super().train(mode)


def test_a_module_with_its_own_train_goes_through_set_training_mode() -> None:
    ModeRecordingExtractor.modes.clear()
    policy_kwargs = dict(net_arch=[8], features_extractor_class=ModeRecordingExtractor)
    model = DeepSARSA("MlpPolicy", "CartPole-v1", policy_kwargs=policy_kwargs, learning_starts=10, train_freq=5, device="cpu")
    assert model._mode_modules is None
    model.learn(30)
    assert True in ModeRecordingExtractor.modes and False in ModeRecordingExtractor.modes
    assert not model.q_net_target.training
