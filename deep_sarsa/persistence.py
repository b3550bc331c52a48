"""
Saving and loading a model and its replay buffer: SB3's methods, written atomically and read safely.

:class:`SafeFiles` is the mixin that gives :class:`deep_sarsa.DeepSARSA` its ``save``, ``load``,
``save_replay_buffer`` and ``load_replay_buffer``. Each is SB3's own method, handed to one function:
of :mod:`deep_sarsa.atomic` for writing, of :mod:`deep_sarsa.files` (the checks of what a file may
hold) for loading, whose every read goes through :mod:`deep_sarsa.gate`.
"""

import io
import pathlib
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch as th
from stable_baselines3.common.type_aliases import GymEnv

from deep_sarsa.atomic import save_atomically
from deep_sarsa.files import fit_replay_buffer, load_checked, read_replay_buffer

if TYPE_CHECKING:
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm as _Algorithm
else:
    _Algorithm = object

SelfSafeFiles = TypeVar("SelfSafeFiles", bound="SafeFiles")
Path = str | pathlib.Path | io.BufferedIOBase


class SafeFiles(_Algorithm):
    """Mixin for an SB3 off-policy algorithm: atomic ``save``, safe ``load`` (see docs/trust.md)."""

    #: the value of each setting added after files were first saved, given to a file saved without it
    older_file_settings: ClassVar[dict[str, Any]] = {}

    def save(self, path: Path, exclude: Any = None, include: Any = None) -> None:
        """
        SB3's ``save``, atomically (:func:`deep_sarsa.atomic.save_atomically`): a failure leaves any
        previous file intact and no partial zip behind.

        :param path: the file (``.zip`` is added if it has no suffix), or a file object
        :param exclude: names of parameters that should be excluded in addition to the default ones
        :param include: names of parameters that might be excluded but should be included anyway
        """
        save_atomically(super().save, path, exclude, include)

    def save_replay_buffer(self, path: Path) -> None:
        """
        SB3's ``save_replay_buffer``, atomically as ``save`` (SB3 writes the file in place): a
        failure or a kill leaves any previous buffer intact (:func:`deep_sarsa.atomic.save_atomically`).

        :param path: the file (``.pkl`` is added if it has no suffix), or a file object
        """
        save_atomically(super().save_replay_buffer, path, suffix=".pkl")

    @classmethod
    def load(
        cls: type[SelfSafeFiles],
        path: Path,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        trusted: bool = False,
        **kwargs: Any,
    ) -> SelfSafeFiles:
        """
        SB3's ``load``, safe for a file from anyone unless ``trusted`` (:func:`deep_sarsa.files.load_checked`):
        the file's serialized entries are rebuilt with an allowlist of globals (what DeepSARSA's own
        files contain) and anything else is refused with ``UnsafeFileError`` before it runs; a
        malformed file, a model of another algorithm, invalid hyperparameters and an env whose spaces
        differ from the model's are ``ValueError`` naming the file.

        :param path: the file, or a file object
        :param env: the env to run the model on, as for SB3
        :param device: the device, as for SB3
        :param custom_objects: replacements of saved entries, as for SB3
        :param print_system_info: as for SB3
        :param force_reset: as for SB3
        :param trusted: unpickle the file as SB3 does, running any code it names: only for files
            you trust (needed for, e.g., a ``learning_rate`` that is a lambda or a user class in
            ``policy_kwargs``). See docs/trust.md.
        :param kwargs: attributes to change on the loaded model, as for SB3
        :return: the model
        """
        return load_checked(
            super().load,
            path,
            env,
            device,
            model_class=cls,
            custom_objects=custom_objects,
            trusted=trusted,
            print_system_info=print_system_info,
            force_reset=force_reset,
            older_settings=cls.older_file_settings,
            **kwargs,
        )

    def load_replay_buffer(self, path: Path, truncate_last_traj: bool = True, trusted: bool = False) -> None:
        """
        SB3's ``load_replay_buffer``, safe unless ``trusted``: the pickle is read with an allowlist
        (SB3's replay buffers, arrays, spaces, the masks of :mod:`deep_sarsa.masking`), and a
        buffer whose spaces or number of envs differ from the model's is refused. A failure
        (``ValueError`` naming the file) leaves the model and its current buffer as they were.

        :param path: the pickled replay buffer (``.pkl`` may be left out)
        :param truncate_last_traj: for ``HerReplayBuffer``: end its last trajectory
        :param trusted: unpickle the file as SB3 does, running any code it names
        """
        name, buffer = read_replay_buffer(path, trusted)
        fit_replay_buffer(name, buffer, self, truncate_last_traj)
        self.replay_buffer = buffer

    def _excluded_save_params(self) -> list[str]:
        # Aliases of the policy's parts, rebuilt at set-up
        cached = ["q_net", "q_net_target", "_policy_parameters", "_online_forward", "_target_forward"]
        return [*super()._excluded_save_params(), *cached]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer"], []
