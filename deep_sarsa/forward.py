"""
SB3's ``QNetwork`` forward pass without ``nn.Module.__call__``'s dispatch, where that computes the same.

A call of a module with no hook and no compiled version is exactly a call of its ``forward``
(``nn.Module._call_impl``). SB3's default Q-network (``MlpPolicy`` on a vector observation) goes
through nine such calls per forward pass (the ``QNetwork``, its ``FlattenExtractor`` and that one's
``Flatten``, the ``Sequential`` and each of its layers), and for a small MLP their dispatch costs
as much as the arithmetic: about a tenth of DeepSARSA's time on CartPole with rl-zoo's network
(``benchmarks/results/throughput.md``). :class:`DirectForward` computes ``QNetwork.forward`` by
calling the layers' ``forward`` in turn, the same tensor operations in the same order (the same
values and the same autograd graph, ``tests/test_speed_equivalence.py``), and goes through the
network's ``__call__`` whenever a module on the path has a hook, a global module hook is
registered, the network is compiled (``network.compile()``), or it is not SB3's default structure.
"""

from itertools import chain
from typing import cast

import torch as th
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.dqn.policies import QNetwork
from torch.nn.modules import module as th_module


def _hook_dicts(module: th.nn.Module) -> list[dict]:
    """The dictionaries ``module`` keeps its forward and backward hooks in (non-empty: it has some)."""
    return [module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks]


#: PyTorch's global module hooks (``torch.nn.modules.module.register_module_forward_hook`` and the like)
_GLOBAL_HOOKS = [
    th_module._global_forward_hooks,
    th_module._global_forward_pre_hooks,
    th_module._global_backward_hooks,
    th_module._global_backward_pre_hooks,
]


class DirectForward:
    """
    ``network(observations)`` for a Q-network, calling the layers' ``forward`` directly where the
    result is the same.

    The structure is read when this object is made (DeepSARSA makes one for each network when the
    model is set up and at every ``learn()`` call): SB3's ``QNetwork`` on a ``Box`` observation that
    is not normalized as an image, with SB3's ``FlattenExtractor`` and an ``nn.Sequential``. Its
    forward pass is then ``obs.float()``, the flatten, and each layer in turn. Hooks are checked at
    every call: a hook added later, on any module of the path or globally, is honoured.

    :param network: the Q-network (``policy.q_net`` or ``policy.q_net_target``)
    """

    def __init__(self, network: th.nn.Module) -> None:
        self.network = network
        #: the modules called in turn after ``obs.float()``; None where the direct path does not apply
        self.layers: list[th.nn.Module] | None = None
        self._hooks: list[dict] = []
        if not isinstance(network, QNetwork) or type(network) is not QNetwork:  # SB3's class, not a subclass
            return
        space = network.observation_space
        extractor = network.features_extractor
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
        self._hooks = [*chain.from_iterable(_hook_dicts(module) for module in path), *_GLOBAL_HOOKS]

    def __call__(self, observations: PyTorchObs) -> th.Tensor:
        """
        :param observations: a batch of observations
        :return: the Q-values, shape ``(batch, n_actions)``, as ``network(observations)`` computes them
        """
        if self.layers is None or any(self._hooks) or self.network._compiled_call_impl is not None:
            return self.network(observations)
        # QNetwork.forward: preprocess_obs (float32, for a Box that is not an image), the flatten, the MLP
        values = cast(th.Tensor, observations).float()
        for layer in self.layers:
            values = layer.forward(values)
        return values
