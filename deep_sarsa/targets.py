"""
SARSA TD targets and the TD loss as small pure functions.

Everything here works on plain tensors so that each piece can be checked alone against
values worked out by hand (see ``tests/test_targets.py``), in the spirit of rlax's
``sarsa`` / ``expected_sarsa``. Shapes: ``B`` is the batch size, ``A`` the number of actions.
"""

from typing import Literal

import torch as th
from torch.nn import functional as F

LossName = Literal["mse", "huber"]


def greedy_actions(q_values: th.Tensor, masks: th.Tensor | None = None) -> th.Tensor:
    """
    The greedy action of each row (``argmax``, first index on ties), among valid actions if masked.

    :param q_values: Q-values of shape ``(B, A)``
    :param masks: optional boolean masks of valid actions, shape ``(B, A)``
    :return: actions of shape ``(B,)``
    """
    if masks is None:
        return q_values.argmax(dim=1)
    return q_values.masked_fill(~masks, -th.inf).argmax(dim=1)


def epsilon_greedy_probs(q_values: th.Tensor, epsilon: float, masks: th.Tensor | None = None) -> th.Tensor:
    """
    Action probabilities of the ε-greedy policy over ``q_values``.

    It is the policy that ``predict(deterministic=False)`` follows: with probability ε a
    uniformly random action (the greedy one included), otherwise the greedy action
    (``argmax``, first index on ties). With ``masks``, both the random and the greedy
    action are chosen among valid actions only.

    :param q_values: Q-values of shape ``(B, A)``
    :param epsilon: exploration rate, in [0, 1]
    :param masks: optional boolean masks of valid actions, shape ``(B, A)``, each row with a valid action
    :return: probabilities of shape ``(B, A)``, each row summing to one
    """
    if masks is None:
        probs = th.full_like(q_values, epsilon / q_values.shape[1])
    else:
        valid = masks.to(q_values.dtype)
        probs = epsilon * valid / valid.sum(dim=1, keepdim=True)
    greedy = greedy_actions(q_values, masks).reshape(-1, 1)
    return probs.scatter_add(1, greedy, th.full_like(greedy, 1.0 - epsilon, dtype=q_values.dtype))


def sample_epsilon_greedy(q_values: th.Tensor, epsilon: float, masks: th.Tensor | None = None) -> th.Tensor:
    """
    Draw one action per row from the ε-greedy policy over ``q_values``.

    :param q_values: Q-values of shape ``(B, A)``
    :param epsilon: exploration rate, in [0, 1]
    :param masks: optional boolean masks of valid actions, shape ``(B, A)``, each row with a valid action
    :return: actions of shape ``(B, 1)``, dtype ``long``
    """
    batch_size, n_actions = q_values.shape
    greedy = greedy_actions(q_values, masks)
    if masks is None:
        random_actions = th.randint(n_actions, (batch_size,), device=q_values.device)
    else:
        random_actions = th.multinomial(masks.to(q_values.dtype), 1).reshape(-1)
    explore = th.rand(batch_size, device=q_values.device) < epsilon
    return th.where(explore, random_actions, greedy).reshape(-1, 1)


def sarsa_target(
    rewards: th.Tensor,
    dones: th.Tensor,
    discounts: th.Tensor | float,
    next_q_values: th.Tensor,
    next_actions: th.Tensor,
) -> th.Tensor:
    """
    SARSA target ``r + γ·(1 - done)·Q(s', a')``.

    :param rewards: (n-step discounted) rewards, shape ``(B, 1)``
    :param dones: 1 where the transition ended the episode by termination (no bootstrap),
        0 otherwise (a time-limit truncation still bootstraps), shape ``(B, 1)``
    :param discounts: γ, or γ^k per row for an n-step return that bootstraps after k steps
    :param next_q_values: Q-values of the next state, shape ``(B, A)`` (the target network's)
    :param next_actions: the next action a', shape ``(B, 1)``
    :return: targets of shape ``(B, 1)``
    """
    next_q = th.gather(next_q_values, dim=1, index=next_actions.long())
    return rewards + (1 - dones) * discounts * next_q


def expected_sarsa_target(
    rewards: th.Tensor,
    dones: th.Tensor,
    discounts: th.Tensor | float,
    next_q_values: th.Tensor,
    next_probs: th.Tensor,
) -> th.Tensor:
    """
    Expected SARSA target ``r + γ·(1 - done)·Σ_a π(a|s')·Q(s', a)``.

    :param rewards: (n-step discounted) rewards, shape ``(B, 1)``
    :param dones: 1 where the episode terminated (no bootstrap), shape ``(B, 1)``
    :param discounts: γ, or γ^k per row for an n-step return
    :param next_q_values: Q-values of the next state, shape ``(B, A)``
    :param next_probs: ``π(·|s')``, shape ``(B, A)``
    :return: targets of shape ``(B, 1)``
    """
    next_v = (next_probs * next_q_values).sum(dim=1, keepdim=True)
    return rewards + (1 - dones) * discounts * next_v


def td_loss(q_values: th.Tensor, actions: th.Tensor, targets: th.Tensor, loss: LossName = "mse") -> th.Tensor:
    """
    Regression loss of Q(s, a) on the TD targets.

    The network outputs a whole vector of Q-values per state; the loss is built from the
    single entry of the action that was taken (``gather``). Every other entry does not take
    part in the loss, so its gradient is exactly zero: no target is needed for actions that
    were not taken.

    :param q_values: online Q-values of shape ``(B, A)``
    :param actions: the actions taken, shape ``(B, 1)``
    :param targets: TD targets of shape ``(B, 1)`` (no gradient flows through them)
    :param loss: ``"mse"`` (mean squared error) or ``"huber"`` (smooth L1 with δ = 1, as SB3's DQN)
    :return: the scalar loss
    """
    q_taken = th.gather(q_values, dim=1, index=actions.long())
    if loss == "mse":
        return F.mse_loss(q_taken, targets)
    if loss == "huber":
        return F.smooth_l1_loss(q_taken, targets)
    raise ValueError(f"loss must be 'mse' or 'huber', got {loss!r}")
