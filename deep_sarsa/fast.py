"""
The speed layer: the parts of an update that DeepSARSA computes in a cheaper way than the plain
PyTorch call, and nothing else.

Each piece computes what the plain call computes (``tests/test_fast.py`` pins each one against it,
bit for bit or, for fused Adam, up to rounding), and its docstring names its measured gain: the
env-steps/s lost when that piece alone runs the plain path (``benchmarks/ablation.py``; the
numbers and the CPU they were measured on are in ``benchmarks/results/ablation.md``). A piece that
uses a private PyTorch API checks for it and takes the public path where it is missing, so a
PyTorch release that removes it makes training slower, not broken.

:data:`PLAIN` names the pieces that take the plain path: set it, or the environment variable
``DEEP_SARSA_PLAIN`` (comma-separated names, read at import), before a model is built.
"""

import functools
import os
from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any, cast

import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.type_aliases import PyTorchObs, ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize
from stable_baselines3.dqn.policies import QNetwork
from torch import autograd as th_autograd
from torch.nn.modules import module as th_module
from torch.optim import optimizer as th_optimizer

from deep_sarsa.buffers import NextState, Samples

#: The pieces, each one a switch in :data:`PLAIN`
PIECES = (
    "direct_forward",
    "fused_adam",
    "optimizer_step",
    "zero_grad",
    "clip_grad_norm",
    "target_batching",
    "batched_sampling",
)


def _plain_from_environment() -> set[str]:
    names = {name.strip() for name in os.environ.get("DEEP_SARSA_PLAIN", "").split(",") if name.strip()}
    unknown = names - set(PIECES)
    if unknown:
        raise ValueError(f"DEEP_SARSA_PLAIN names unknown pieces {sorted(unknown)}: expected names from {PIECES}")
    return names


#: Names of the pieces that take the plain PyTorch path instead (``benchmarks/ablation.py``)
PLAIN: set[str] = _plain_from_environment()


@functools.cache
def _fused_supported(device_type: str) -> bool:
    """Whether this PyTorch has a fused Adam kernel for the device type (CPU: PyTorch 2.4 and later)."""
    if device_type == "cuda" and not th.cuda.is_available():
        return False
    try:
        th.optim.Adam([th.zeros(1, device=device_type, requires_grad=True)], fused=True)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def with_fused_adam(policy_kwargs: dict[str, Any], device: th.device | str) -> dict[str, Any]:
    """
    ``policy_kwargs`` with ``fused=True`` added to the optimizer's keywords when the optimizer is
    PyTorch's Adam or AdamW (DQN's default is Adam), this PyTorch has a fused kernel for the device,
    and the user did not choose an implementation (``fused``, ``foreach``, ``differentiable``).

    The fused kernel computes the update of PyTorch's default per-parameter CPU loop in one pass
    over each parameter instead of a dozen small operations; the results agree up to rounding.
    Measured: +30% env-steps/s in throughput.py's ``zoo`` setting, +13% in ``step`` (whole runs, one
    thread, Intel Xeon family 6 model 207, ``benchmarks/results/ablation.md``).
    ``policy_kwargs=dict(optimizer_kwargs=dict(fused=False))`` keeps PyTorch's default.

    :param policy_kwargs: the user's policy keywords (not modified)
    :param device: the device the policy lives on
    :return: the keywords to build the policy with
    """
    optimizer_class = policy_kwargs.get("optimizer_class", th.optim.Adam)
    optimizer_kwargs = dict(policy_kwargs.get("optimizer_kwargs") or {})
    chosen = {"fused", "foreach", "differentiable"} & set(optimizer_kwargs)
    device_type = th.device(device).type
    if "fused_adam" in PLAIN or optimizer_class not in (th.optim.Adam, th.optim.AdamW) or chosen:
        return policy_kwargs
    if not _fused_supported(device_type):
        return policy_kwargs
    return {**policy_kwargs, "optimizer_kwargs": {**optimizer_kwargs, "fused": True}}


def _hook_dicts(module: th.nn.Module) -> list[dict]:
    """The dictionaries ``module`` keeps its forward and backward hooks in (non-empty: it has some)."""
    return [module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks]


def _global_hook_dicts() -> list[dict] | None:
    """PyTorch's global module hooks (``register_module_forward_hook`` and the like); None where this PyTorch has none."""
    names = ["_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"]
    found = [getattr(th_module, name, None) for name in names]
    return None if any(not isinstance(hooks, dict) for hooks in found) else cast(list[dict], found)


class DirectForward:
    """
    ``network(observations)`` for SB3's default Q-network, calling its layers' ``forward`` in turn.

    A call of a module with no hook and no compiled version is exactly a call of its ``forward``
    (``nn.Module._call_impl``). SB3's ``QNetwork`` on a vector observation goes through nine such
    calls per forward pass (the network, its ``FlattenExtractor`` and that one's ``Flatten``, the
    ``Sequential`` and each layer); for a small MLP their dispatch costs as much as the arithmetic.
    This computes ``QNetwork.forward`` as ``obs.float()``, the flatten, then each layer: the same
    tensor operations in the same order (the same values and autograd graph).

    It applies to SB3's own ``QNetwork`` (not a subclass) on a ``Box`` observation that is not
    normalized as an image, with SB3's ``FlattenExtractor`` and an ``nn.Sequential``; anything else
    (one-hot Discrete, images, custom extractors, Dict) always goes through ``network(obs)``. So
    does every call while a module of the path has a hook, a global module hook is registered, or
    the network is compiled (``network.compile()``); and every call when this PyTorch does not keep
    hooks where PyTorch 2.x keeps them (the fallback to the public path). Measured: saves 13% of the
    time in throughput.py's ``zoo`` setting, 1.5% in ``step`` (paired calls, one thread, Intel Xeon
    family 6 model 207, ``benchmarks/results/ablation.md``).

    :param network: the Q-network (``policy.q_net`` or ``policy.q_net_target``)
    """

    def __init__(self, network: th.nn.Module) -> None:
        self.network = network
        #: the modules called in turn after ``obs.float()``; None where the direct path does not apply
        self.layers: list[th.nn.Module] | None = None
        self._hooks: list[dict] = []
        global_hooks = _global_hook_dicts()
        if global_hooks is None or not hasattr(network, "_compiled_call_impl"):
            return
        if type(network) is not QNetwork:  # SB3's class, not a subclass
            return
        assert isinstance(network, QNetwork)
        space, extractor = network.observation_space, network.features_extractor
        if (
            not isinstance(space, spaces.Box)
            or (network.normalize_images and is_image_space(space))
            or type(extractor) is not FlattenExtractor
            or type(extractor.flatten) is not th.nn.Flatten
            or type(network.q_net) is not th.nn.Sequential
        ):
            return
        self.layers = [extractor.flatten, *network.q_net]
        path = [network, extractor, network.q_net, *self.layers]
        self._hooks = [*chain.from_iterable(_hook_dicts(module) for module in path), *global_hooks]

    def __call__(self, observations: PyTorchObs) -> th.Tensor:
        """
        :param observations: a batch of observations
        :return: the Q-values, shape ``(batch, n_actions)``, as ``network(observations)`` computes them
        """
        if (
            self.layers is None
            or any(self._hooks)
            or self.network._compiled_call_impl is not None
            or "direct_forward" in PLAIN
        ):
            return self.network(observations)
        values = cast(th.Tensor, observations).float()  # preprocess_obs for a Box that is not an image
        for layer in self.layers:
            values = layer.forward(values)
        return values


def optimizer_step(optimizer: th.optim.Optimizer) -> None:
    """
    ``optimizer.step()``. PyTorch wraps every optimizer's ``step`` in a function that runs the step
    hooks inside a profiler scope (``record_function``); where it has nothing to do (no step hook,
    global or on this optimizer, and no profiler running) the step itself is called. The update is
    the same. The public ``optimizer.step()`` is taken whenever one of the private attributes this
    reads is missing. Measured: saves 2.8% of the time in ``zoo`` (0.7–4.9% over repetitions), 2.2%
    in ``step`` (paired calls, one thread, Intel Xeon family 6 model 207, ``benchmarks/results/ablation.md``).

    :param optimizer: the optimizer
    """
    step = getattr(type(optimizer).step, "__wrapped__", None)
    profiling = getattr(th_autograd, "_profiler_enabled", None)
    hooks = (
        getattr(optimizer, "_optimizer_step_pre_hooks", None),
        getattr(optimizer, "_optimizer_step_post_hooks", None),
        getattr(th_optimizer, "_global_optimizer_pre_hooks", None),
        getattr(th_optimizer, "_global_optimizer_post_hooks", None),
    )
    if "optimizer_step" in PLAIN or step is None or profiling is None or any(h is None or h for h in hooks) or profiling():
        optimizer.step()
    else:
        step(optimizer)


#: PyTorch's private multi-tensor kernels that clip_grad_norm_ itself uses (None where missing)
_foreach_norm: Callable[..., list[th.Tensor]] | None = getattr(th, "_foreach_norm", None)
_foreach_mul_: Callable[..., None] | None = getattr(th, "_foreach_mul_", None)


def clip_grad_norm(parameters: list[th.nn.Parameter], max_norm: float) -> None:
    """
    ``torch.nn.utils.clip_grad_norm_(parameters, max_norm)`` for parameters on one device and of
    one dtype: the same operations in the same order (bit for bit the same result), without its
    per-call grouping by device and dtype, which costs as much as the arithmetic for a small MLP.
    Where this PyTorch lacks ``torch._foreach_norm``/``_foreach_mul_``, ``clip_grad_norm_`` itself.
    Measured: saves 2.9% of the time in ``zoo`` (1.2–4.5% over repetitions), 1.8% in ``step``
    (paired calls, one thread, Intel Xeon family 6 model 207, ``benchmarks/results/ablation.md``).

    :param parameters: the parameters whose gradients are clipped, all on one device and of one dtype
    :param max_norm: the largest total 2-norm allowed
    """
    if "clip_grad_norm" in PLAIN or _foreach_norm is None or _foreach_mul_ is None:
        th.nn.utils.clip_grad_norm_(parameters, max_norm)
        return
    grads = [param.grad for param in parameters if param.grad is not None]
    if not grads:
        return
    total_norm = th.linalg.vector_norm(th.stack(_foreach_norm(grads, 2.0)), 2.0)
    _foreach_mul_(grads, th.clamp(max_norm / (total_norm + 1e-6), max=1.0))


#: Gradient steps between two flushes of the optimizer's denormal values (``DeepSARSA(flush_denormal=True)``):
#: every 10 was slower (the flush costs more than it saves), every 200 no faster (Sapphire Rapids,
#: benchmarks/results/throughput.md)
FLUSH_INTERVAL = 50


def flush_denormals(optimizer: th.optim.Optimizer) -> None:
    """
    Set to zero the denormal values of the optimizer's state tensors (Adam's moment estimates):
    those whose magnitude is below the smallest normal number of their dtype (1.2e-38 in float32).

    Such a value changes an Adam update by less than ``lr`` times 1e-30, but some x86 CPUs compute
    on denormals many times slower, on every thread. Public PyTorch API only. Measured (the
    constructor's ``flush_denormal``): +44% env-steps/s in ``zoo``, +13% in ``step`` (whole runs, one
    thread, Intel Xeon family 6 model 207, ``benchmarks/results/ablation.md``); the gain depends on
    the CPU's cost of denormal arithmetic.

    :param optimizer: the optimizer; its step counters (0-dimensional) and non-float entries are left alone
    """
    with th.no_grad():
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, th.Tensor) and value.dim() > 0 and value.is_floating_point():
                    value.masked_fill_(value.abs() < th.finfo(value.dtype).tiny, 0.0)


#: Observation numbers (float32: 16 MB) of the next states that share one target-network pass
TARGET_PASS_SIZE = 2**22


def sample_minibatches(
    buffer: ReplayBuffer, batch_size: int, count: int, env: VecNormalize | None = None
) -> list[ReplayBufferSamples] | None:
    """
    ``[buffer.sample(batch_size, env) for _ in range(count)]``, drawn as one sample of ``count * batch_size``
    transitions and split: the same transitions (NumPy's bounded integers come out of the generator one after the
    other, so one draw of ``count * batch_size`` indices is the ``count`` draws of ``batch_size`` in a row, and
    with one env SB3's draw of the env column consumes no random numbers), with one gather and one copy into
    tensors instead of ``count``. Only for SB3's own ``ReplayBuffer`` (not a subclass, which may sample otherwise)
    on one env; ``None`` elsewhere, or with ``"batched_sampling"`` in :data:`PLAIN`: the caller samples each one.
    Measured: saves 5.7% of the time in ``zoo`` (128 minibatches per call), nothing in ``step`` (one) (paired
    calls, one thread, Intel Xeon family 6 model 207, ``benchmarks/results/ablation.md``).

    :param buffer: the replay buffer
    :param batch_size: the minibatch size
    :param count: how many minibatches
    :param env: the ``VecNormalize`` wrapper that normalizes the samples, if any (its statistics do not change
        between the minibatches of one ``train()``)
    :return: the minibatches, or None where this does not apply
    """
    if "batched_sampling" in PLAIN or type(buffer) is not ReplayBuffer or buffer.n_envs != 1 or count <= 1:
        return None
    joined = buffer.sample(count * batch_size, env=env)
    fields = [None if field is None else field.split(batch_size) for field in joined]
    return [ReplayBufferSamples(*(None if field is None else field[i] for field in fields)) for i in range(count)]  # type: ignore[arg-type]


def target_passes(count: int, observation_space: spaces.Space, batch_size: int) -> list[int] | None:
    """
    How ``train()`` groups its ``count`` minibatches so that the target network evaluates the next states of a
    group in one forward pass (:func:`forward_joined`), or None: one minibatch at a time, each evaluated by the caller.

    The target network does not change inside ``train()``, so several minibatches are drawn ahead
    (the same random numbers in the same order as one at a time: sampling uses NumPy's generator,
    the targets PyTorch's) and evaluated together, up to :data:`TARGET_PASS_SIZE` observation numbers
    at a time; each row's Q-values do not depend on which rows share the pass (the network is in
    evaluation mode). None with one minibatch per call, or ``"target_batching"`` in :data:`PLAIN`.
    Measured: saves 8.2% of the time in ``zoo`` (128 minibatches per call); nothing in ``step`` (one)
    (paired calls, one thread, Intel Xeon family 6 model 207, ``benchmarks/results/ablation.md``).

    :param count: how many minibatches
    :param observation_space: the observation space (its size bounds the minibatches per pass)
    :param batch_size: the minibatch size
    :return: the sizes of the groups, in order, or None
    """
    if count <= 1 or "target_batching" in PLAIN:
        return None
    per_pass = max(1, TARGET_PASS_SIZE // max(1, spaces.flatdim(observation_space) * batch_size))
    return [min(per_pass, count - first) for first in range(0, count, per_pass)]


def forward_joined(forward: Callable[[PyTorchObs], th.Tensor], observations: list[PyTorchObs]) -> list[th.Tensor]:
    """
    ``[forward(obs) for obs in observations]`` (without gradient) in one forward pass over their concatenation.

    :param forward: the network's forward pass
    :param observations: batches of observations (tensors, or dicts of tensors)
    :return: the outputs, one per batch
    """
    joined: PyTorchObs
    if isinstance(observations[0], dict):
        dicts = cast(list[dict[str, th.Tensor]], observations)
        joined = {key: th.cat([obs[key] for obs in dicts]) for key in dicts[0]}
        sizes = [len(next(iter(obs.values()))) for obs in dicts]
    else:
        tensors = cast(list[th.Tensor], observations)
        joined, sizes = th.cat(tensors), [len(obs) for obs in tensors]
    with th.no_grad():
        return list(forward(joined).split(sizes))


def minibatches(model: Any, count: int, batch_size: int) -> Iterator[tuple[Samples, NextState, th.Tensor | None]]:
    """
    ``count`` minibatches of ``model._sample(batch_size)``, each with the target network's Q-values of its next
    states where several are evaluated in one pass (:func:`target_passes`, :func:`forward_joined`), else None;
    drawn at once by :func:`sample_minibatches` where it applies (no stored next actions, no masks).

    :param model: the DeepSARSA model
    :param count: how many minibatches
    :param batch_size: the minibatch size
    :return: an iterator over ``(samples, next state, target Q-values of the next states or None)``
    """
    passes = target_passes(count, model.observation_space, batch_size)
    if passes is None:
        for _ in range(count):
            yield *model._sample(batch_size), None
        return
    for size in passes:
        drawn = None
        if model.next_action != "stored" and not model._masking:
            drawn = sample_minibatches(model.replay_buffer, batch_size, size, model._vec_normalize_env)
        batches = [(samples, NextState()) for samples in drawn] if drawn else [model._sample(batch_size) for _ in range(size)]
        next_q_targets = forward_joined(model._target_forward, [samples.next_observations for samples, _ in batches])
        for (samples, next_state), next_q_target in zip(batches, next_q_targets, strict=True):
            yield samples, next_state, next_q_target


def zero_grad(optimizer: th.optim.Optimizer, parameters: list[th.nn.Parameter]) -> None:
    """
    ``optimizer.zero_grad()`` (which sets every gradient to None) for an optimizer over exactly
    ``parameters``: the gradients are set to None directly, without its profiler scope and grouping.
    Public API only. Measured: saves 3.9% of the time in ``zoo`` (1.9–5.9% over repetitions), 2.5%
    in ``step`` (paired calls, one thread, Intel Xeon family 6 model 207, ``benchmarks/results/ablation.md``).

    :param optimizer: the optimizer
    :param parameters: the parameters it optimizes
    """
    if "zero_grad" in PLAIN:
        optimizer.zero_grad()
        return
    for param in parameters:
        param.grad = None
