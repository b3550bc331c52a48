"""
Unpickling that rebuilds only an allowlist of globals, so that reading a file from a stranger
runs none of its code.

A pickle names the globals (classes, functions) that rebuild its objects, and the unpickler
imports and calls them: whoever wrote the file chooses what runs. :class:`RestrictedUnpickler`
looks every name up in an allowlist first and refuses the others before they are imported, so
the only code that can run is the code of the allowed classes: NumPy arrays and dtypes, Gymnasium
spaces, SB3's schedules, policies, feature extractors and replay buffers, the torch activations
and optimizers that ``policy_kwargs`` commonly names. It holds no function that evaluates text,
imports a module, or rebuilds code (cloudpickle's reconstructors of lambdas and local classes are
not on it): such a file is refused with :class:`UnsafeFileError`, which says how to load a file
one trusts.
"""

import contextlib
import io
import pickle
from collections.abc import Mapping
from typing import Any

#: module -> names that a file may name there
Allowlist = Mapping[str, frozenset[str]]

TRUST_HINT = (
    "nothing from the file was run; if you trust the file (you wrote it, or know who did), "
    "load it with trusted=True, which unpickles it as SB3 does"
)


class UnsafeFileError(ValueError):
    """A file that names code outside the allowlist: refused before anything in it ran."""


def _names(*names: str) -> frozenset[str]:
    return frozenset(names)


_NUMPY: dict[str, frozenset[str]] = {
    "numpy": _names("ndarray", "dtype"),
    **{f"{core}.multiarray": _names("_reconstruct", "scalar") for core in ("numpy.core", "numpy._core")},
    **{f"{core}.numeric": _names("_frombuffer") for core in ("numpy.core", "numpy._core")},
    "numpy.random._pickle": _names("__generator_ctor", "__bit_generator_ctor", "__randomstate_ctor"),
    "numpy.random._generator": _names("Generator"),
    "numpy.random.mtrand": _names("RandomState"),
    "numpy.random.bit_generator": _names("SeedSequence", "__pyx_unpickle_SeedSequence"),
    "numpy.random._pcg64": _names("PCG64", "PCG64DXSM"),
    "numpy.random._mt19937": _names("MT19937"),
    "numpy.random._philox": _names("Philox"),
    "numpy.random._sfc64": _names("SFC64"),
}

_SPACES: dict[str, frozenset[str]] = {
    "gymnasium.spaces.box": _names("Box"),
    "gymnasium.spaces.discrete": _names("Discrete"),
    "gymnasium.spaces.multi_discrete": _names("MultiDiscrete"),
    "gymnasium.spaces.multi_binary": _names("MultiBinary"),
    "gymnasium.spaces.dict": _names("Dict"),
    "gymnasium.spaces.tuple": _names("Tuple"),
}

_PLAIN: dict[str, frozenset[str]] = {
    "builtins": _names("complex", "set", "frozenset", "bytearray", "slice"),
    "collections": _names("deque", "OrderedDict"),
    "torch": _names("device"),
}

_BUFFERS: dict[str, frozenset[str]] = {
    "stable_baselines3.common.buffers": _names("ReplayBuffer", "DictReplayBuffer", "NStepReplayBuffer"),
    "stable_baselines3.her.her_replay_buffer": _names("HerReplayBuffer"),
    "stable_baselines3.her.goal_selection_strategy": _names("GoalSelectionStrategy"),
}

_ACTIVATIONS = _names(
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
    "Tanh", "Hardtanh", "Tanhshrink", "Sigmoid", "Hardsigmoid", "Hardswish", "Softplus", "Softsign",
)  # fmt: skip

_OPTIMIZERS: dict[str, frozenset[str]] = {
    f"torch.optim.{module}": _names(name)
    for module, name in [
        ("adam", "Adam"),
        ("adamw", "AdamW"),
        ("adamax", "Adamax"),
        ("nadam", "NAdam"),
        ("radam", "RAdam"),
        ("sgd", "SGD"),
        ("rmsprop", "RMSprop"),
        ("adagrad", "Adagrad"),
        ("adadelta", "Adadelta"),
    ]
}

#: what the ``data`` entry of DeepSARSA's model files may name
MODEL_GLOBALS: Allowlist = {
    **_NUMPY,
    **_SPACES,
    **_PLAIN,
    **_BUFFERS,  # replay_buffer_class
    **_OPTIMIZERS,
    "stable_baselines3.common.utils": _names("FloatSchedule", "ConstantSchedule", "LinearSchedule"),
    "stable_baselines3.common.type_aliases": _names("TrainFreq", "TrainFrequencyUnit"),
    "stable_baselines3.dqn.policies": _names("DQNPolicy", "MlpPolicy", "CnnPolicy", "MultiInputPolicy"),
    "stable_baselines3.common.torch_layers": _names("FlattenExtractor", "NatureCNN", "CombinedExtractor"),
    "stable_baselines3.common.sb2_compat.rmsprop_tf_like": _names("RMSpropTFLike"),
    "torch.nn.modules.activation": _ACTIVATIONS,
    "torch.nn.modules.linear": _names("Identity"),
}

#: what a replay buffer pickled by ``save_replay_buffer`` may name
BUFFER_GLOBALS: Allowlist = {
    **_NUMPY,
    **_SPACES,
    **_PLAIN,
    **_BUFFERS,
    "deep_sarsa.masking": _names("NextStateMasks"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """
    A ``pickle.Unpickler`` that imports only the globals of an allowlist (exact module and name:
    no dotted paths, no Python 2 name mapping, no persistent ids).

    :param file: the pickle, a binary file object
    :param allowed: module -> names that may be imported
    :param source: the file, for messages
    :param entry: what is being read (e.g. ``"entry 'lr_schedule'"``), for messages
    """

    def __init__(self, file: io.BufferedIOBase, allowed: Allowlist, source: str, entry: str) -> None:
        super().__init__(file, fix_imports=False)
        self.allowed = allowed
        self.source = source
        self.entry = entry
        #: the state of every global handed out, to tell whether the pickle changed one (:meth:`check_globals_unchanged`)
        self.handed_out: dict[int, tuple[Any, dict[str, Any]]] = {}

    def find_class(self, module: str, name: str) -> Any:
        """
        :param module: the module the pickle names
        :param name: the global it names there
        :return: the global, when the allowlist has it
        :raises UnsafeFileError: otherwise, before importing anything
        """
        if name in self.allowed.get(module, frozenset()):
            found = super().find_class(module, name)
            self.handed_out.setdefault(id(found), (found, _state_of(found)))
            return found
        raise UnsafeFileError(
            f"{self.source}: {self.entry} names the global {module}.{name}, which is not among those "
            f"DeepSARSA's own files contain (arrays, spaces, SB3 schedules, policies and buffers): refused; {TRUST_HINT}"
        )

    def check_globals_unchanged(self) -> None:
        """
        A pickle can set attributes on the objects it names (``BUILD`` on a class sets class
        attributes, on a function its defaults): put back every global it changed, and refuse the file.

        :raises UnsafeFileError: when the pickle changed a global
        """
        changed = [found for found, before in self.handed_out.values() if not _same_state(_state_of(found), before)]
        for found in changed:
            _restore(found, self.handed_out[id(found)][1])
        if changed:
            raise UnsafeFileError(
                f"{self.source}: {self.entry} changes {', '.join(map(repr, changed))} (sets attributes of a class or "
                f"function it names): refused and undone; {TRUST_HINT}"
            )


#: what a pickle could change on a function besides its ``__dict__``
_FUNCTION_STATE = ("__defaults__", "__kwdefaults__", "__code__")


def _state_of(found: Any) -> dict[str, Any]:
    """The attributes of a global that a pickle could set (a copy of its ``__dict__``, a function's defaults and code)."""
    state = dict(getattr(found, "__dict__", {}))
    state.update({f"<{key}>": getattr(found, key) for key in _FUNCTION_STATE if hasattr(found, key)})
    return state


def _same_state(now: dict[str, Any], before: dict[str, Any]) -> bool:
    return now.keys() == before.keys() and all(now[key] is value for key, value in before.items())


def _restore(found: Any, before: dict[str, Any]) -> None:
    """Put a global's attributes back as they were before the pickle set them."""
    now = _state_of(found)
    with contextlib.suppress(AttributeError, TypeError):
        for key, value in before.items():
            if now.get(key, before) is not value:
                setattr(found, key.strip("<>"), value)
        for key in now.keys() - before.keys():
            delattr(found, key)


def restricted_load(file: io.BufferedIOBase, allowed: Allowlist, source: str, entry: str) -> Any:
    """
    Unpickle ``file`` with :class:`RestrictedUnpickler`.

    :param file: the pickle, a binary file object
    :param allowed: module -> names that may be imported
    :param source: the file, for messages
    :param entry: what is being read, for messages
    :return: the object
    :raises UnsafeFileError: for a global outside the allowlist
    :raises ValueError: for bytes that are not a pickle of allowed objects (naming the file and the entry)
    """
    unpickler = RestrictedUnpickler(file, allowed, source, entry)
    try:
        loaded = unpickler.load()
    except Exception as error:
        unpickler.check_globals_unchanged()
        if isinstance(error, UnsafeFileError):
            raise
        # only allowlisted code ran: whatever it raised means a malformed pickle
        raise ValueError(f"{source}: {entry} is not a readable pickle ({type(error).__name__}: {one_line(error)})") from error
    unpickler.check_globals_unchanged()
    return loaded


def restricted_loads(data: bytes, allowed: Allowlist, source: str, entry: str) -> Any:
    """
    :func:`restricted_load` of bytes.

    :param data: the pickle
    :param allowed: module -> names that may be imported
    :param source: the file, for messages
    :param entry: what is being read, for messages
    :return: the object
    """
    return restricted_load(io.BytesIO(data), allowed, source, entry)


def one_line(error: BaseException, limit: int = 300) -> str:
    """
    :param error: an exception
    :param limit: the most characters to keep
    :return: its message on one line, shortened to ``limit`` characters
    """
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
