"""
Invalid-action masking for DeepSARSA, with sb3-contrib's conventions.

Masks are found the way sb3-contrib finds them (:func:`sb3_contrib.common.maskable.utils.is_masking_supported`
and ``get_action_masks``: an ``action_masks()`` method on the env, on a wrapper such as
:class:`sb3_contrib.common.wrappers.ActionMasker`, or on every env of a VecEnv).

The targets need the mask of s'. :class:`NextStateMasks` keeps it beside SB3's replay buffer, row
for row (same ``(buffer_size, n_envs)`` layout, written at the same position as the transition), as
packed bits: ``ceil(n_actions / 8)`` bytes plus one "known" byte per transition (Taxi's 6 actions:
2 bytes, against 8 for the action alone). It is attached to the buffer object, so
``save_replay_buffer`` / ``load_replay_buffer`` keep it.

The mask of s' is read from the env right after each step: for an episode that goes on, that is
the mask of s'. When the episode ended, VecEnvs have already reset the env; a terminal row needs
no mask (it does not bootstrap), and a row cut by a time limit uses ``info["action_mask"]`` of
that step if the env reports one (as Gymnasium's Taxi does); otherwise its mask is unknown and
the row does not bootstrap, so that the value of an invalid action can never leak into a target.
"""

from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from sb3_contrib.common.wrappers import ActionMasker
from stable_baselines3.common.buffers import ReplayBuffer

if TYPE_CHECKING:
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm as _Algorithm
else:
    _Algorithm = object

#: The attribute of the replay buffer that holds its :class:`NextStateMasks`
MASKS_ATTRIBUTE = "next_state_action_masks"


class NextStateMasks:
    """
    The action masks of the next observation of every transition in a replay buffer, packed as bits.

    :param buffer_size: rows of the replay buffer (its ``buffer_size`` after division by ``n_envs``)
    :param n_envs: number of envs (columns)
    :param n_actions: size of the Discrete action space
    """

    def __init__(self, buffer_size: int, n_envs: int, n_actions: int) -> None:
        self.n_actions = n_actions
        self.bits = np.zeros((buffer_size, n_envs, (n_actions + 7) // 8), dtype=np.uint8)
        self.known = np.zeros((buffer_size, n_envs), dtype=bool)

    def write(self, row: int, masks: np.ndarray, known: np.ndarray) -> None:
        """
        Store the masks of one row (one step of every env).

        :param row: the buffer row the step was written to
        :param masks: boolean masks, shape ``(n_envs, n_actions)``
        :param known: whether each env's mask is known, shape ``(n_envs,)``
        """
        self.bits[row] = np.packbits(masks.astype(bool), axis=-1)
        self.known[row] = known

    def read(self, rows: np.ndarray, env_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """
        :param rows: row indices, shape ``(B,)``
        :param env_indices: env indices, shape ``(B,)``
        :return: the masks, shape ``(B, n_actions)``, and whether they are known, shape ``(B,)``
        """
        masks = np.unpackbits(self.bits[rows, env_indices], axis=-1, count=self.n_actions).astype(bool)
        return masks, self.known[rows, env_indices]


def masks_of(buffer: ReplayBuffer) -> NextStateMasks | None:
    """
    :param buffer: a replay buffer
    :return: its next-state masks, if it keeps them
    """
    return getattr(buffer, MASKS_ATTRIBUTE, None)


def attach_masks(buffer: ReplayBuffer, n_actions: int) -> NextStateMasks:
    """
    Give a replay buffer a :class:`NextStateMasks` store, unless it has one already. Rows written
    before are marked unknown (they will not bootstrap).

    :param buffer: the replay buffer
    :param n_actions: size of the Discrete action space
    :return: the store
    """
    store = masks_of(buffer)
    if store is None or store.n_actions != n_actions or store.known.shape != buffer.dones.shape:
        store = NextStateMasks(buffer.buffer_size, buffer.n_envs, n_actions)
        setattr(buffer, MASKS_ATTRIBUTE, store)
    return store


def record_next_masks(
    buffer: ReplayBuffer, current: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]], n_actions: int
) -> None:
    """
    Store the masks of s' of the transitions just added to ``buffer`` (its newest row).

    :param buffer: the replay buffer, with a store attached (:func:`attach_masks`)
    :param current: the masks of the envs' current states, shape ``(n_envs, n_actions)``: s' where
        the episode goes on, a reset state where it ended
    :param dones: the episode ends of the step
    :param infos: the infos of the step (``info["action_mask"]`` of a truncated episode's last state)
    :param n_actions: size of the Discrete action space
    """
    next_masks, known = current.copy(), ~dones.astype(bool)
    for i, info in enumerate(infos):
        if dones[i] and info.get("TimeLimit.truncated", False) and info.get("action_mask") is not None:
            next_masks[i] = check_action_masks(info["action_mask"], 1, n_actions)[0]
            known[i] = True
    store = masks_of(buffer)
    assert store is not None, "attach_masks first"
    store.write((buffer.pos - 1) % buffer.buffer_size, next_masks, known)


def check_action_masks(action_masks: np.ndarray | list, n_envs: int, n_actions: int) -> np.ndarray:
    """
    Validate masks and return them as a boolean array of shape ``(n_envs, n_actions)``.

    :param action_masks: one mask per observation (True or 1 = valid), or a single mask when
        ``n_envs`` is 1
    :param n_envs: number of observations the masks are for
    :param n_actions: size of the Discrete action space
    :return: the masks as booleans
    """
    masks = np.asarray(action_masks)
    if masks.dtype != bool:
        if masks.dtype.kind not in "iuf" or not np.isin(masks, (0, 1)).all():
            raise ValueError(
                f"action_masks must be booleans (or 0/1), got dtype {masks.dtype} with values {np.unique(masks)[:5]}"
            )
        masks = masks.astype(bool)
    if masks.shape == (n_actions,) and n_envs == 1:
        masks = masks.reshape(1, n_actions)
    if masks.shape != (n_envs, n_actions):
        raise ValueError(
            f"action_masks must have shape ({n_envs}, {n_actions}) (one mask of {n_actions} actions per observation), "
            f"got shape {masks.shape}"
        )
    empty = ~masks.any(axis=1)
    if empty.any():
        raise ValueError(
            f"action_masks allow no action for observation(s) {np.flatnonzero(empty).tolist()}: at least one must be valid"
        )
    return masks


def env_masks(env: Any, n_envs: int, n_actions: int) -> np.ndarray:
    """
    The masks of the envs' current states (sb3-contrib's ``get_action_masks``), checked (:func:`check_action_masks`).

    :param env: the VecEnv, one that :func:`sb3_contrib.common.maskable.utils.is_masking_supported` accepts
    :param n_envs: its number of envs
    :param n_actions: size of the Discrete action space
    :return: boolean masks, shape ``(n_envs, n_actions)``
    """
    return check_action_masks(get_action_masks(env), n_envs, n_actions)


def masked_predict(
    model: Any, observation: np.ndarray | dict[str, np.ndarray], state: Any, deterministic: bool, action_masks: np.ndarray
) -> tuple[np.ndarray, Any]:
    """
    ``DeepSARSA.predict`` with masks (as ``MaskablePPO.predict``): both the random and the greedy
    action are chosen among the valid actions.

    :param model: the DeepSARSA model
    :param observation: the input observation(s)
    :param state: passed through (used by recurrent policies)
    :param deterministic: always the greedy action
    :param action_masks: valid actions, shape ``(n_envs, n_actions)`` (or ``(n_actions,)`` for one observation)
    :return: the actions and ``state``
    """
    model.policy.set_training_mode(False)
    obs_tensor, vectorized = model.policy.obs_to_tensor(observation)
    first = next(iter(obs_tensor.values())) if isinstance(obs_tensor, dict) else obs_tensor
    masks = check_action_masks(action_masks, len(first), int(model.action_space.n))
    if not deterministic and np.random.rand() < model.exploration_rate:
        actions = sample_valid_actions(masks)
    else:
        actions = model._greedy(obs_tensor, masks)
    return (actions if vectorized else actions.squeeze(axis=0)), state


def sample_valid_actions(masks: np.ndarray) -> np.ndarray:
    """
    One uniformly random valid action per row.

    :param masks: boolean masks, shape ``(n, n_actions)``, each row with a valid action
    :return: actions, shape ``(n,)``
    """
    return np.array([np.random.choice(np.flatnonzero(row)) for row in masks])


def toy_text_action_mask(env: gym.Env) -> np.ndarray:
    """
    The valid actions in the current state of a Gymnasium toy-text env that has an
    ``action_mask(state)`` method (Taxi), for sb3-contrib's ``ActionMasker``::

        env = ActionMasker(gym.make("Taxi-v4"), toy_text_action_mask)

    :param env: the env (wrapped or not)
    :return: boolean mask, shape ``(n_actions,)``
    """
    toy_text = env.unwrapped
    if not hasattr(toy_text, "action_mask"):
        raise ValueError(f"{toy_text} has no action_mask(state) method (Gymnasium's Taxi has one)")
    return np.asarray(toy_text.action_mask(toy_text.s), dtype=bool)  # type: ignore[attr-defined]


class ToyTextActionMasker(ActionMasker):
    """
    sb3-contrib's ``ActionMasker`` with :func:`toy_text_action_mask`, as a class that a presets
    file's ``env_wrapper:`` can name (``deep_sarsa.masking.ToyTextActionMasker``, Taxi's preset).

    :param env: a toy-text env with an ``action_mask(state)`` method (Taxi)
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env, toy_text_action_mask)


class ActionMasking(_Algorithm):
    """
    Mixin for an SB3 off-policy algorithm with a ``use_masking`` setting and a Discrete action space: while
    ``learn()`` runs on an env with masks, ``_masking`` is True, ``_last_masks`` holds the masks of the envs'
    current states, and the replay buffer keeps the mask of each transition's s' (:class:`NextStateMasks`).
    """

    use_masking: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._masking = False  # whether the current env is masked (set by `learn()`)
        self._last_masks: np.ndarray | None = None  # the masks of its current states
        super().__init__(*args, **kwargs)

    @property
    def _n_actions(self) -> int:
        assert isinstance(self.action_space, gym.spaces.Discrete)
        return int(self.action_space.n)

    def _setup_learn(self, *args: Any, **kwargs: Any) -> Any:
        result = super()._setup_learn(*args, **kwargs)
        assert self.env is not None and self.replay_buffer is not None
        self._masking = self.use_masking and is_masking_supported(self.env)
        if self._masking:
            attach_masks(self.replay_buffer, self._n_actions)
            self._last_masks = env_masks(self.env, self.n_envs, self._n_actions)
        return result

    def _store_transition(
        self,
        replay_buffer: ReplayBuffer,
        buffer_action: np.ndarray,
        new_obs: np.ndarray | dict[str, np.ndarray],
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)
        if self._masking:
            # The envs are in their new states now: s' where the episode goes on, a reset state where it ended
            self._last_masks = env_masks(self.env, self.n_envs, self._n_actions)
            record_next_masks(replay_buffer, self._last_masks, dones, infos, self._n_actions)
