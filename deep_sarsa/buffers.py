"""
The ``"stored"`` next action a', read from SB3's own replay buffer layout.

SB3's :class:`~stable_baselines3.common.buffers.ReplayBuffer` (and its Dict and n-step
variants) store transitions in arrays of shape ``(buffer_size, n_envs, ...)``: row ``i`` of
column ``e`` is the transition the ``e``-th env made at one step, and row ``i + 1`` (modulo the
buffer size) is the transition that the same env made at the next step. So the action the agent
actually took in s' is ``actions[i + 1, e]``, as long as

* row ``i`` did not end the episode (``dones`` or ``timeouts`` set: terminated or truncated), and
* row ``i`` is not the newest row (``pos - 1``): that next action has not been taken yet.

No second buffer is needed. Where a' does not exist, :class:`~deep_sarsa.DeepSARSA` falls
back to an action drawn from the current ε-greedy policy (the ``"sampled"`` variant).
"""

from typing import NamedTuple

import numpy as np
import torch as th
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import DictReplayBufferSamples, ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from deep_sarsa.masking import masks_of

Samples = ReplayBufferSamples | DictReplayBufferSamples


class NextState(NamedTuple):
    """What a minibatch needs to know about the states it bootstraps from, beyond SB3's samples."""

    #: the stored next actions, ``(B, 1)`` long, -1 where none exists (``next_action="stored"``)
    stored_actions: th.Tensor | None = None
    #: the masks of valid actions in s', ``(B, A)`` bool (masking on)
    masks: th.Tensor | None = None
    #: whether that mask is known, ``(B, 1)``; rows with an unknown mask do not bootstrap
    masks_known: th.Tensor | None = None
    #: every row has a stored next action (no ε-greedy fallback needed), known without a device sync
    all_stored: bool = False


def sample_with_next_state(
    buffer: ReplayBuffer, batch_size: int, env: VecNormalize | None, stored: bool, masked: bool, device: th.device
) -> tuple[Samples, NextState]:
    """
    Sample a minibatch as ``buffer.sample`` does (the same random numbers), with the stored next
    actions (``stored``) and the masks of s' (``masked``: from the buffer's
    :class:`~deep_sarsa.masking.NextStateMasks`).

    :param buffer: the replay buffer
    :param batch_size: the minibatch size
    :param env: the ``VecNormalize`` wrapper that normalizes the samples, if any
    :param stored: read the next actions (``next_action="stored"``)
    :param masked: read the masks of s'
    :param device: where the tensors go
    :return: the samples and what is known of their next states
    """
    mask_store = masks_of(buffer) if masked else None
    if not stored and mask_store is None:
        return buffer.sample(batch_size, env=env), NextState()
    samples, batch_inds, env_indices = sample_with_indices(buffer, batch_size, env)
    last_rows, has_next = bootstrap_rows(buffer, batch_inds, env_indices)
    next_state = NextState()
    if stored:
        actions = stored_or_missing(buffer, last_rows, has_next, env_indices)
        next_state = next_state._replace(
            stored_actions=th.as_tensor(actions.reshape(-1, 1), device=device), all_stored=bool((actions >= 0).all())
        )
    if mask_store is not None:
        masks, known = mask_store.read(last_rows, env_indices)
        masks[~known] = True  # any valid action will do: these rows do not bootstrap
        next_state = next_state._replace(
            masks=th.as_tensor(masks, device=device), masks_known=th.as_tensor(known.reshape(-1, 1), device=device)
        )
    return samples, next_state


def sample_with_indices(
    buffer: ReplayBuffer, batch_size: int, env: VecNormalize | None = None
) -> tuple[ReplayBufferSamples | DictReplayBufferSamples, np.ndarray, np.ndarray]:
    """
    Sample a batch exactly as ``buffer.sample(batch_size, env)`` does, and also return the
    rows and env columns that were drawn.

    SB3's ``_get_samples`` draws the env column of each row itself, with one call to NumPy's
    global generator, and does not return it. To learn it without rewriting SB3's sampling,
    the same draw is made first and the generator's state put back before that call (with one
    env the draw consumes no random numbers and is skipped). The generator ends in the state
    that a plain ``buffer.sample`` leaves it in, so training
    with this function consumes random numbers exactly as SB3 does.

    :param buffer: an SB3 ``ReplayBuffer``, ``DictReplayBuffer`` or ``NStepReplayBuffer``
    :param batch_size: number of transitions to sample
    :param env: the ``VecNormalize`` wrapper to normalize observations and rewards, if any
    :return: the samples, their row indices and their env indices (each of shape ``(batch_size,)``)
    """
    if buffer.optimize_memory_usage and buffer.full:
        # As in ReplayBuffer.sample: with one array for obs and next obs, row `pos` is invalid
        batch_inds = (np.random.randint(1, buffer.buffer_size, size=batch_size) + buffer.pos) % buffer.buffer_size
    else:
        upper_bound = buffer.buffer_size if buffer.full else buffer.pos
        batch_inds = np.random.randint(0, upper_bound, size=batch_size)
    if buffer.n_envs == 1:
        # One env: SB3's draw of the env column (randint(0, 1)) consumes no random numbers
        return buffer._get_samples(batch_inds, env=env), batch_inds, np.zeros(len(batch_inds), dtype=np.int64)
    # Peek: draw the env column as _get_samples is about to, then put the generator back for it
    state_before = np.random.get_state()
    env_indices = np.random.randint(0, high=buffer.n_envs, size=(len(batch_inds),))
    np.random.set_state(state_before)
    return buffer._get_samples(batch_inds, env=env), batch_inds, env_indices


def _episode_boundary(buffer: ReplayBuffer, rows: np.ndarray, env_indices: np.ndarray) -> np.ndarray:
    """
    Whether the next row of each (row, env) belongs to another episode (read at those positions
    only: the whole buffer would cost a pass over it at every minibatch).

    :param buffer: the replay buffer
    :param rows: row indices
    :param env_indices: env indices, broadcastable against ``rows``
    :return: a boolean array of the broadcast shape
    """
    return np.logical_or(buffer.dones[rows, env_indices] > 0, buffer.timeouts[rows, env_indices] > 0)


def bootstrap_rows(buffer: ReplayBuffer, batch_inds: np.ndarray, env_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """
    The row whose next observation each sampled transition bootstraps from, and whether the
    agent's action in that next state is stored in the buffer.

    For a 1-step buffer that row is the sampled row itself. For an ``NStepReplayBuffer`` it is the
    last row of the n-step sequence (the sequence stops early at an episode end or at the newest
    row, exactly as SB3 computes it).

    :param buffer: the replay buffer the rows were sampled from
    :param batch_inds: row indices of the sampled transitions
    :param env_indices: env (column) indices of the sampled transitions
    :return: ``(last_rows, has_next)``: the rows, shape ``(B,)``, and a boolean mask, shape ``(B,)``,
        False where the next action does not exist (episode ended, or not taken yet)
    """
    n_steps = buffer.n_steps if isinstance(buffer, NStepReplayBuffer) else 1
    newest = (buffer.pos - 1) % buffer.buffer_size
    if n_steps == 1:
        last = batch_inds
    else:
        rows = (batch_inds[:, None] + np.arange(n_steps)[None, :]) % buffer.buffer_size  # (B, n)
        ends = np.logical_or(_episode_boundary(buffer, rows, env_indices[:, None]), rows == newest)
        # Offset of the last row used by the n-step return: the first end, else the n-th row
        offset = np.where(ends.any(axis=1), ends.argmax(axis=1), n_steps - 1)
        last = (batch_inds + offset) % buffer.buffer_size
    has_next = np.logical_and(~_episode_boundary(buffer, last, env_indices), last != newest)
    return last, has_next


def stored_next_actions(
    buffer: ReplayBuffer, batch_inds: np.ndarray, env_indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """
    The action actually taken in the state the sampled transitions bootstrap from: the action of
    the row after :func:`bootstrap_rows`' row, in the same env.

    :param buffer: the replay buffer the rows were sampled from
    :param batch_inds: row indices of the sampled transitions
    :param env_indices: env (column) indices of the sampled transitions
    :return: ``(next_actions, available)``: the actions, shape ``(B,)``, and a boolean mask,
        shape ``(B,)``, that is False where the next action does not exist (episode ended,
        or it has not been taken yet); ``next_actions`` is meaningless there
    """
    last, available = bootstrap_rows(buffer, batch_inds, env_indices)
    return actions_after(buffer, last, env_indices), available


def stored_or_missing(buffer: ReplayBuffer, rows: np.ndarray, has_next: np.ndarray, env_indices: np.ndarray) -> np.ndarray:
    """
    The stored next actions of ``next_action="stored"``, with -1 where a' must be sampled instead.

    :param buffer: the replay buffer
    :param rows: the rows the transitions bootstrap from (:func:`bootstrap_rows`)
    :param has_next: whether the action after each row is stored (:func:`bootstrap_rows`)
    :param env_indices: env indices
    :return: shape ``(B,)``: the action taken after the row where it exists; 0 for a terminal row
        (it does not bootstrap: any a' will do); -1 where the episode was truncated or the next
        action has not been taken yet
    """
    next_actions = actions_after(buffer, rows, env_indices)
    return np.where(has_next, next_actions, np.where(terminated(buffer, rows, env_indices), 0, -1)).astype(np.int64)


def actions_after(buffer: ReplayBuffer, rows: np.ndarray, env_indices: np.ndarray) -> np.ndarray:
    """
    :param buffer: the replay buffer
    :param rows: row indices
    :param env_indices: env indices
    :return: the action stored in the row after each one, same env, shape ``(B,)`` (meaningful
        only where :func:`bootstrap_rows` says the next action exists)
    """
    return buffer.actions[(rows + 1) % buffer.buffer_size, env_indices].reshape(len(rows))


def terminated(buffer: ReplayBuffer, rows: np.ndarray, env_indices: np.ndarray) -> np.ndarray:
    """
    :param buffer: the replay buffer
    :param rows: row indices
    :param env_indices: env indices
    :return: whether each row ended its episode by termination (not by a time limit), shape ``(B,)``
    """
    return np.logical_and(buffer.dones[rows, env_indices] > 0, buffer.timeouts[rows, env_indices] == 0)


def mark_newest_rows_truncated(buffer: ReplayBuffer) -> None:
    """
    Record that the episodes running in the newest rows were cut off.

    Called when the envs are reset while the buffer holds transitions of unfinished episodes
    (a second ``learn()`` call that resets the env, or training resumed after ``load``): the
    next row of each env will be the start of a new episode, so it must not be read as the next
    action. Setting ``timeouts`` (and leaving ``dones``) is what a time-limit truncation records:
    the stored next observation is still bootstrapped from, the n-step sum stops there, and the
    ``"stored"`` variant falls back to a sampled a'.

    :param buffer: the replay buffer
    """
    if buffer.pos == 0 and not buffer.full:
        return
    newest = (buffer.pos - 1) % buffer.buffer_size
    running = buffer.dones[newest] == 0
    buffer.timeouts[newest] = np.where(running, 1.0, buffer.timeouts[newest])
