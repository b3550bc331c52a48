"""
The speed layer (``deep_sarsa.fast``) computes exactly what the straightforward formulation computes:
pinned down on fixed batches against a plain re-implementation of one update and of DQN's
``predict``; each piece against its plain PyTorch path; each private-API piece's fallback.
"""

import copy
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from stable_baselines3.dqn import DQN

from deep_sarsa import DeepSARSA, fast
from deep_sarsa.targets import sample_epsilon_greedy


def straightforward_update(model: DeepSARSA, batch_size: int) -> None:
    """One update written out plainly: SB3's sampling, separate forwards, MSE, the policy's Adam ("sampled" or "expected")."""
    assert model.replay_buffer is not None and model.next_action in ("sampled", "expected")
    data = model.replay_buffer.sample(batch_size)
    with th.no_grad():
        next_q_target = model.q_net_target(data.next_observations)
        picker = next_q_target if model.next_action_net == "target" else model.q_net(data.next_observations)
        if model.next_action == "expected":  # ε/|A| on every action, 1 - ε more on the greedy one
            epsilon, n_actions = model.exploration_rate, next_q_target.shape[1]
            greedy = th.nn.functional.one_hot(picker.argmax(dim=1), n_actions).float()
            next_value = ((epsilon / n_actions + (1 - epsilon) * greedy) * next_q_target).sum(dim=1, keepdim=True)
        else:
            next_value = next_q_target.gather(1, sample_epsilon_greedy(picker, model.exploration_rate))
        target = data.rewards + (1 - data.dones) * model.gamma * next_value
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


@pytest.mark.parametrize("target", [dict(next_action="sampled", next_action_net="online"), {}])  # {}: the defaults
@pytest.mark.parametrize("per_pass", [None, 3])
@pytest.mark.parametrize("steps", [1, 50])
def test_train_matches_the_straightforward_update_exactly(
    steps: int, per_pass: int | None, target: dict[str, str], monkeypatch: Any
) -> None:
    """
    With the same optimizer and no flush-denormal mode, ``train`` is bit for bit the plain
    update: sampling minibatches ahead and evaluating the target network on all of them in one
    pass (in chunks of ``per_pass`` minibatches) changes nothing.
    """
    if per_pass is not None:  # observation numbers per target pass: 3 minibatches of 32 CartPole states
        monkeypatch.setattr(fast, "TARGET_PASS_SIZE", per_pass * 32 * 4)
    model, reference = trained_pair(flush_denormal=False, policy_kwargs=dict(optimizer_kwargs=dict(fused=False)), **target)
    train_both(model, reference, steps)
    for faster, plain in zip(model.policy.parameters(), reference.policy.parameters(), strict=True):
        assert th.equal(faster, plain)


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


def test_flush_denormals_zeroes_only_denormal_state_values() -> None:
    parameter = th.nn.Parameter(th.zeros(6))
    optimizer = th.optim.Adam([parameter])
    tiny = th.finfo(th.float32).tiny  # the smallest normal float32, 1.18e-38
    values = [1e-40, -1e-39, tiny, -2 * tiny, 0.5, 0.0]
    optimizer.state[parameter] = {
        "step": th.tensor(1e-39),  # a step counter: left alone
        "exp_avg": th.tensor(values),
        "exp_avg_sq": th.tensor(values, dtype=th.float64),  # float64's denormals start far lower
    }
    fast.flush_denormals(optimizer)
    state = optimizer.state[parameter]
    assert state["exp_avg"].tolist() == th.tensor([0.0, 0.0, tiny, -2 * tiny, 0.5, 0.0]).tolist()
    assert state["exp_avg_sq"].tolist() == values
    assert state["step"].item() == th.tensor(1e-39).item() != 0.0


@pytest.mark.parametrize("flush_denormal", [True, False])
def test_train_flushes_denormals_every_50_updates_and_no_thread_state(flush_denormal: bool, monkeypatch: Any) -> None:
    def flushes() -> bool:
        return th.tensor([1e-39], dtype=th.float32).mul(1.0).item() == 0.0

    model = DeepSARSA("MlpPolicy", "CartPole-v1", learning_starts=50, buffer_size=500, flush_denormal=flush_denormal)
    model.learn(100)
    flushed_at: list[int] = []
    monkeypatch.setattr(fast, "flush_denormals", lambda optimizer: flushed_at.append(model._n_updates))
    start = model._n_updates
    mode = flushes()
    model.train(gradient_steps=120, batch_size=16)
    assert model._n_updates == start + 120
    assert flushed_at == ([n for n in range(start + 1, start + 121) if n % 50 == 0] if flush_denormal else [])
    assert flushes() == mode  # no thread state changed


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
    model.learn(30)
    assert True in ModeRecordingExtractor.modes and False in ModeRecordingExtractor.modes
    assert not model.q_net_target.training


def test_direct_forward_computes_the_network_call_and_its_gradients() -> None:
    """``DirectForward`` on SB3's default Q-network: the same Q-values and gradients as ``q_net(obs)``, bit for bit."""
    model = DeepSARSA("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[64, 64]), seed=0, device="cpu")
    assert model._online_forward.layers is not None and model._target_forward.layers is not None
    for rows in (1, 64):
        observations = th.as_tensor(np.random.default_rng(rows).normal(size=(rows, 4)), dtype=th.float64)  # cast inside
        direct = model._online_forward(observations)
        direct_grads = th.autograd.grad(direct.square().sum(), list(model.q_net.parameters()))
        called = model.q_net(observations)
        called_grads = th.autograd.grad(called.square().sum(), list(model.q_net.parameters()))
        assert direct.dtype == th.float32 and th.equal(direct, called)
        assert all(th.equal(a, b) for a, b in zip(direct_grads, called_grads, strict=True))
        with th.no_grad():
            assert th.equal(model._target_forward(observations), model.q_net_target(observations))


def doubling_hook(module: th.nn.Module, inputs: Any, output: th.Tensor) -> th.Tensor:
    return output * 2


@pytest.mark.parametrize("where", ["q_net", "features_extractor", "hidden_layer", "global"])
def test_direct_forward_calls_the_network_where_a_hook_is_registered(where: str) -> None:
    """A forward hook registered after the set-up, on any module of the path or globally, is honoured."""
    model = DeepSARSA("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[16]), seed=0, device="cpu")
    observations = th.ones(3, 4)
    plain = model._online_forward(observations)
    modules = {"q_net": model.q_net, "features_extractor": model.q_net.features_extractor}
    modules["hidden_layer"] = model.q_net.q_net[0]
    if where == "global":
        # PyTorch types global hooks as returning None, and uses what they return like a module's
        handle = th.nn.modules.module.register_module_forward_hook(doubling_hook)  # type: ignore[arg-type]
    else:
        handle = modules[where].register_forward_hook(doubling_hook)
    try:
        hooked = model._online_forward(observations)
        assert th.equal(hooked, model.q_net(observations))
        assert not th.equal(hooked, plain)  # the hook changed the result
    finally:
        handle.remove()
    assert th.equal(model._online_forward(observations), plain)


def test_direct_forward_is_only_taken_for_sb3s_default_structure() -> None:
    """Other observations or extractors go through the network's own call (one-hot Discrete, images, a custom extractor)."""
    policy_kwargs = dict(net_arch=[8], features_extractor_class=ModeRecordingExtractor)
    custom = DeepSARSA("MlpPolicy", "CartPole-v1", policy_kwargs=policy_kwargs)
    one_hot = DeepSARSA("MlpPolicy", "FrozenLake-v1", policy_kwargs=dict(net_arch=[8]))
    for model in (custom, one_hot):
        assert model._online_forward.layers is None and model._target_forward.layers is None
    observations = th.tensor([[3.0], [5.0]])  # FrozenLake states, one-hot encoded by SB3's preprocessing
    assert th.equal(one_hot._online_forward(observations), one_hot.q_net(observations))


def test_training_through_the_direct_forward_is_bit_for_bit_training_through_the_network_call() -> None:
    """
    The same seed with and without the direct path (a global no-op hook makes every forward go
    through ``nn.Module.__call__``): identical parameters after rollouts and updates.
    """

    def trained(force_call: bool) -> list[th.Tensor]:
        model = DeepSARSA("MlpPolicy", "CartPole-v1", learning_starts=100, buffer_size=1000, batch_size=32, seed=3)
        handle = th.nn.modules.module.register_module_forward_hook(lambda module, inputs, output: None) if force_call else None
        try:
            model.learn(400)
        finally:
            if handle is not None:
                handle.remove()
        return [p.detach().clone() for p in model.policy.parameters()]

    for direct, called in zip(trained(False), trained(True), strict=True):
        assert th.equal(direct, called)


def test_optimizer_step_runs_hooks_and_profiler_scopes_when_there_are_any() -> None:
    """Without hooks the step is the same update as ``optimizer.step()``; hooks and the profiler still see every step."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def model_with_gradients() -> DeepSARSA:
        model = DeepSARSA("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8]), seed=0, device="cpu")
        model.q_net(th.ones(5, 4)).sum().backward()
        return model

    direct, plain = model_with_gradients(), model_with_gradients()
    fast.optimizer_step(direct.policy.optimizer)
    plain.policy.optimizer.step()
    assert all(th.equal(a, b) for a, b in zip(direct.policy.parameters(), plain.policy.parameters(), strict=True))

    calls: list[str] = []
    own = direct.policy.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: calls.append("pre"))
    global_ = register_optimizer_step_post_hook(lambda optimizer, args, kwargs: calls.append("post"))
    try:
        fast.optimizer_step(direct.policy.optimizer)
    finally:
        own.remove()
        global_.remove()
    assert calls == ["pre", "post"]
    with th.autograd.profiler.profile() as profile:
        fast.optimizer_step(direct.policy.optimizer)
    assert any(event.name == "Optimizer.step#Adam.step" for event in profile.function_events)


def test_rollouts_see_the_policy_in_evaluation_mode() -> None:
    """Every module is in evaluation mode during every rollout, and in training mode in ``train``."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Check(BaseCallback):
        modes: set[bool] = set()

        def _on_step(self) -> bool:
            self.modes |= {module.training for module in self.model.policy.modules()}
            return True

    model = DeepSARSA("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8]), learning_starts=20, device="cpu")
    train_modes: list[bool] = []
    original_train = model.train

    def recording_train(gradient_steps: int, batch_size: int = 100) -> None:
        original_train(gradient_steps, batch_size)
        train_modes.append(model.q_net.q_net[0].training)

    model.train = recording_train  # type: ignore[method-assign]
    check = Check()
    model.learn(60, callback=check)
    assert check.modes == {False}
    assert train_modes and all(train_modes)
    assert not model.q_net_target.training


def trained_parameters(plain: set[str], monkeypatch: pytest.MonkeyPatch, steps: int = 400, **kwargs: Any) -> list[th.Tensor]:
    """The parameters after ``learn(steps)`` from one seed, with the pieces in ``plain`` on PyTorch's plain path."""
    monkeypatch.setattr(fast, "PLAIN", set(plain))
    settings: dict[str, Any] = dict(learning_starts=100, buffer_size=1000, batch_size=32, train_freq=16, gradient_steps=8)
    model = DeepSARSA("MlpPolicy", "CartPole-v1", seed=4, device="cpu", **(settings | kwargs))
    model.learn(steps)
    return [p.detach().clone() for p in model.policy.parameters()]


@pytest.mark.parametrize("piece", [piece for piece in fast.PIECES if piece != "fused_adam"])
def test_each_piece_trains_bit_for_bit_as_its_plain_path(piece: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every piece but fused Adam computes exactly what the plain PyTorch path computes, through rollouts and updates."""
    fast_run = trained_parameters(set(), monkeypatch, next_action="expected")
    plain_run = trained_parameters({piece}, monkeypatch, next_action="expected")
    assert all(th.equal(a, b) for a, b in zip(fast_run, plain_run, strict=True))


def test_plain_fused_adam_builds_pytorchs_default_adam(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "PLAIN", {"fused_adam"})
    model = DeepSARSA("MlpPolicy", "CartPole-v1", device="cpu")
    assert not model.policy.optimizer.param_groups[0]["fused"]


def test_fused_adam_falls_back_where_pytorch_has_no_fused_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """An older PyTorch without a fused CPU Adam (before 2.4) builds the default Adam instead of failing."""
    original_adam = th.optim.Adam

    class AdamWithoutFused(original_adam):  # type: ignore[valid-type,misc]
        def __init__(self, params: Any, fused: bool | None = None, **kwargs: Any) -> None:
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
            super().__init__(params, **kwargs)

    fast._fused_supported.cache_clear()
    monkeypatch.setattr(th.optim, "Adam", AdamWithoutFused)
    try:
        assert not fast._fused_supported("cpu")
        assert fast.with_fused_adam({"optimizer_class": AdamWithoutFused}, "cpu") == {"optimizer_class": AdamWithoutFused}
    finally:
        fast._fused_supported.cache_clear()


def test_the_plain_pieces_come_from_the_environment_and_unknown_names_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEP_SARSA_PLAIN", " direct_forward ,fused_adam,")
    assert fast._plain_from_environment() == {"direct_forward", "fused_adam"}
    monkeypatch.setenv("DEEP_SARSA_PLAIN", "direct_forward,turbo")
    with pytest.raises(ValueError, match=r"DEEP_SARSA_PLAIN names unknown pieces \['turbo'\]"):
        fast._plain_from_environment()


def spied_step(optimizer: th.optim.Optimizer, monkeypatch: pytest.MonkeyPatch, keep_wrapped: bool) -> list[int]:
    """Replace the optimizer class's public ``step`` by a counting one (with ``keep_wrapped``: exposing the inner step)."""
    public = type(optimizer).step
    calls: list[int] = []

    def step(self: th.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return public(self, *args, **kwargs)

    if keep_wrapped:
        step.__wrapped__ = public.__wrapped__  # type: ignore[attr-defined]
    monkeypatch.setattr(type(optimizer), "step", step)
    return calls


@pytest.mark.parametrize("missing", [None, "__wrapped__", "_global_optimizer_pre_hooks", "_profiler_enabled"])
def test_optimizer_step_takes_the_public_step_where_a_private_api_is_missing(
    missing: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PyTorch without one of them is simulated by giving the speed layer a module without it."""
    import types

    model = DeepSARSA("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8]), seed=0, device="cpu")
    reference = copy.deepcopy(model)
    for each in (model, reference):
        each.q_net(th.ones(5, 4)).sum().backward()
    calls = spied_step(model.policy.optimizer, monkeypatch, keep_wrapped=missing != "__wrapped__")
    if missing == "_global_optimizer_pre_hooks":
        monkeypatch.setattr(fast, "th_optimizer", types.SimpleNamespace(_global_optimizer_post_hooks={}))
    elif missing == "_profiler_enabled":
        monkeypatch.setattr(fast, "th_autograd", types.SimpleNamespace())
    fast.optimizer_step(model.policy.optimizer)
    assert calls == ([] if missing is None else [1])  # the public step only where something is missing
    monkeypatch.undo()
    reference.policy.optimizer.step()
    assert all(th.equal(a, b) for a, b in zip(model.policy.parameters(), reference.policy.parameters(), strict=True))


@pytest.mark.parametrize("missing", [None, "_foreach_norm"])
@pytest.mark.parametrize("max_norm", [1e-3, 1e3])
def test_clip_grad_norm_is_torchs_clip_grad_norm_bit_for_bit(
    missing: str | None, max_norm: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clipped (small ``max_norm``) or not, and with the public function where the foreach kernels are missing."""
    model = DeepSARSA("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[16, 16]), seed=0, device="cpu")
    model.q_net(th.randn(9, 4)).square().sum().backward()
    parameters = list(model.policy.parameters())
    expected = [p.grad.clone() for p in parameters if p.grad is not None]
    th.nn.utils.clip_grad_norm_([p for p in parameters if p.grad is not None], max_norm)
    reference = [p.grad.clone() for p in parameters if p.grad is not None]
    for param, grad in zip([p for p in parameters if p.grad is not None], expected, strict=True):
        param.grad = grad.clone()
    if missing is not None:
        monkeypatch.setattr(fast, missing, None)
    fast.clip_grad_norm(parameters, max_norm)
    clipped = [p.grad for p in parameters if p.grad is not None]
    assert all(th.equal(a, b) for a, b in zip(clipped, reference, strict=True))
    assert max_norm > 1 or not th.equal(clipped[0], expected[0])  # it did clip


def test_direct_forward_falls_back_to_the_call_where_pytorch_keeps_hooks_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    model = DeepSARSA("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8]), seed=0, device="cpu")
    monkeypatch.setattr(fast, "th_module", types.SimpleNamespace())  # a PyTorch without global module hooks there
    forward = fast.DirectForward(model.q_net)
    assert forward.layers is None
    observations = th.randn(3, 4)
    assert th.equal(forward(observations), model.q_net(observations))


def test_zero_grad_sets_every_gradient_to_none_as_the_optimizer_does() -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8]), seed=0, device="cpu")
    model.q_net(th.ones(2, 4)).sum().backward()
    assert any(p.grad is not None for p in model.policy.parameters())
    fast.zero_grad(model.policy.optimizer, list(model.policy.parameters()))
    assert all(p.grad is None for p in model.policy.parameters())


def test_a_deep_copy_of_the_model_uses_its_own_networks() -> None:
    """The cached forward passes and parameter list of a copied model belong to the copy."""
    model = DeepSARSA("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8]), seed=0, device="cpu")
    copied = copy.deepcopy(model)
    assert copied._online_forward.network is copied.q_net and copied._target_forward.network is copied.q_net_target
    assert all(a is b for a, b in zip(copied._policy_parameters, copied.policy.parameters(), strict=True))


def filled_buffer(rows: int, **kwargs: Any) -> ReplayBuffer:
    """A replay buffer of 1-d observations holding ``rows`` random transitions."""
    observation_space, action_space = spaces.Box(-1, 1, (3,), np.float32), spaces.Discrete(4)
    buffer = ReplayBuffer(50, observation_space, action_space, device="cpu", **kwargs)
    rng = np.random.default_rng(0)
    for _ in range(rows):
        obs, next_obs = rng.normal(size=(2, 1, 3)).astype(np.float32)
        buffer.add(obs, next_obs, rng.integers(4, size=(1, 1)), rng.normal(size=1), rng.random(1) < 0.2, [{}])
    return buffer


@pytest.mark.parametrize(
    "rows, kwargs",
    [(30, {}), (80, {}), (80, dict(optimize_memory_usage=True, handle_timeout_termination=False))],
    ids=["not full", "full", "one array for obs and next obs"],
)
@pytest.mark.parametrize("normalized", [False, True], ids=["raw", "VecNormalize"])
def test_batched_sampling_draws_the_minibatches_that_sampling_one_at_a_time_draws(
    rows: int, kwargs: dict, normalized: bool
) -> None:
    buffer = filled_buffer(rows, **kwargs)
    env = None
    if normalized:  # running statistics away from 0 and 1, so that normalizing changes the samples
        env = VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")]))
        statistics: Any = env.obs_rms
        statistics.mean, statistics.var = np.array([0.5, -0.2, 1.0]), np.array([4.0, 0.25, 2.0])
        env.ret_rms.var = np.array(9.0)
    np.random.seed(3)
    one_at_a_time = [buffer.sample(7, env) for _ in range(5)]
    next_draw = np.random.random()
    np.random.seed(3)
    batched = fast.sample_minibatches(buffer, 7, 5, env)
    assert batched is not None and len(batched) == 5
    assert np.random.random() == next_draw  # the generator ends where five samples leave it
    for joined, single in zip(batched, one_at_a_time, strict=True):
        for field, expected in zip(joined, single, strict=True):
            assert (field is None and expected is None) or (
                field is not None and expected is not None and th.equal(field, expected)
            )
    assert len({minibatch.observations[0, 0].item() for minibatch in batched}) > 1  # not one minibatch five times


def test_batched_sampling_leaves_other_buffers_to_one_at_a_time_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    class OwnSampling(ReplayBuffer):
        pass

    buffer = filled_buffer(30)
    assert fast.sample_minibatches(buffer, 7, 1) is None  # one minibatch: nothing to join
    two_envs = ReplayBuffer(50, spaces.Box(-1, 1, (3,), np.float32), spaces.Discrete(4), n_envs=2)
    assert fast.sample_minibatches(two_envs, 7, 5) is None  # SB3 draws an env column per sample
    subclass = OwnSampling(50, spaces.Box(-1, 1, (3,), np.float32), spaces.Discrete(4))
    assert fast.sample_minibatches(subclass, 7, 5) is None
    monkeypatch.setattr(fast, "PLAIN", {"batched_sampling"})
    assert fast.sample_minibatches(buffer, 7, 5) is None
