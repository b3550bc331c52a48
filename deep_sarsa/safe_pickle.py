"""
Unpickling that rebuilds only an allowlist of globals, so that reading a file from a stranger
runs none of its code. The package unpickles only through :func:`deep_sarsa.gate.unpickle`,
which calls :func:`restricted_load` on the bytes the gate has read.

A pickle names the globals (classes, functions) that rebuild its objects, and the unpickler
imports and calls them: whoever wrote the file chooses what runs. :class:`RestrictedUnpickler`
looks every name up in an allowlist first and refuses the others before they are imported, so
the only code that can run is the code of the allowed classes: NumPy arrays and dtypes, Gymnasium
spaces, SB3's schedules, policies, feature extractors and replay buffers, the torch activations
and optimizers that ``policy_kwargs`` commonly names. It holds no function that evaluates text,
imports a module, or rebuilds code (cloudpickle's reconstructors of lambdas and local classes are
not on it): such a file is refused with :class:`UnsafeFileError`, which says how to load a file
one trusts.

Running no code is not enough: ``bytearray(10 GiB)`` is allowlisted code. Only the globals of
:data:`CALLABLE` may be called (NumPy's rebuilding helpers, with the shapes they are given checked);
the others (spaces, buffers, policies, ``ndarray``) may only be named, created empty and given
their state. Every length, shape and size a pickle declares is compared with the bytes it holds
before anything is allocated: a pickle that asks for more is refused with
:class:`DeclaredSizeError`, naming both sizes.
"""

import contextlib
import io
import math
import os
import pickle
import struct
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

#: module -> names that a file may name there
Allowlist = Mapping[str, frozenset[str]]

TRUST_HINT = (
    "nothing from the file was run; if you trust the file (you wrote it, or know who did), "
    "load it with trusted=True, which unpickles it as SB3 does"
)


class UnsafeFileError(ValueError):
    """A file that names code outside the allowlist: refused before anything in it ran."""


class DeclaredSizeError(ValueError):
    """A file that declares an object larger than it holds: refused before the object is allocated."""


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

#: what SB3's ``VecNormalize.save`` pickles (rl-zoo3's ``vecnormalize.pkl``): the wrapper without its
#: env, its running statistics, arrays, spaces
VECNORMALIZE_GLOBALS: Allowlist = {
    **_NUMPY,
    **_SPACES,
    "builtins": _names("set", "frozenset"),
    "collections": _names("OrderedDict"),
    "stable_baselines3.common.vec_env.vec_normalize": _names("VecNormalize"),
    "stable_baselines3.common.running_mean_std": _names("RunningMeanStd"),
}


#: Bytes a pickle may declare (an array, a buffer) beyond its own size: what a small file may
#: reasonably make (no crafted file can ask for more than it holds plus this)
ALLOCATION_SLACK = 2**16
#: Read when the size of a stream cannot be known
UNKNOWN_SIZE_LIMIT = 2**30


def stream_size(file: io.IOBase) -> int | None:
    """
    :param file: an open binary file
    :return: the bytes left to read in it (its size less its position), where that can be known
    """
    try:
        return max(os.fstat(file.fileno()).st_size - file.tell(), 0)
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        pass
    if isinstance(file, io.BytesIO):
        return len(file.getbuffer()) - file.tell()
    try:
        here = file.tell()
        end = file.seek(0, io.SEEK_END)
        file.seek(here)
        return max(end - here, 0)
    except (OSError, AttributeError, ValueError):
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _array_bytes(shape: Any, dtype: Any) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` (raises ``ValueError`` for a shape that is not one)."""
    dims = (shape,) if _is_int(shape) else tuple(shape)
    if not all(_is_int(dim) and dim >= 0 for dim in dims):
        raise ValueError(f"the shape {shape!r} is not a tuple of non-negative integers")
    return math.prod(int(dim) for dim in dims) * max(np.dtype(dtype).itemsize, 1)


class RestrictedUnpickler(pickle._Unpickler):
    """
    An unpickler that imports only the globals of an allowlist (exact module and name: no dotted
    paths, no Python 2 name mapping, no persistent ids), calls only those of them that rebuild
    SB3's and NumPy's objects (:data:`CALLABLE`), and allocates nothing much larger than the
    pickle itself: every length, array shape or size it declares is checked against the bytes it
    holds (``limit``) before anything is allocated (Python's own unpicklers allocate a
    ``BYTEARRAY8`` of any declared length before reading it). It is ``pickle``'s Python
    implementation, with those opcodes checked.

    :param file: the pickle, a binary file object
    :param allowed: module -> names that may be imported
    :param source: the file, for messages
    :param entry: what is being read (e.g. ``"entry 'lr_schedule'"``), for messages
    :param limit: the most bytes an object of it may declare (default: the bytes left in ``file``
        plus :data:`ALLOCATION_SLACK`)
    """

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)
    # the internals of pickle's Python unpickler that the checked opcodes use (typeshed does not declare them)
    stack: list[Any]
    append: Callable[[Any], None]
    read: Callable[[int], bytes]
    readinto: Callable[[bytearray], int]
    _unframer: Any
    _decode_string: Callable[[bytes], Any]

    def __init__(self, file: io.BufferedIOBase, allowed: Allowlist, source: str, entry: str, limit: int | None = None) -> None:
        super().__init__(file, fix_imports=False)
        self.allowed = allowed
        self.source = source
        self.entry = entry
        size = stream_size(file)
        self.limit = limit if limit is not None else (UNKNOWN_SIZE_LIMIT if size is None else size) + ALLOCATION_SLACK
        #: the state of every global handed out, to tell whether the pickle changed one (:meth:`check_globals_unchanged`)
        self.handed_out: dict[int, tuple[Any, dict[str, Any]]] = {}
        #: the name of every global handed out, by id
        self.names: dict[int, tuple[str, str]] = {}

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
            self.names.setdefault(id(found), (module, name))
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

    # -- what the pickle declares, checked before it is allocated ------------------------------

    def check_size(self, declared: int, what: str) -> None:
        """
        :param declared: bytes an opcode or a call would allocate
        :param what: what declares them, for the message
        :raises ValueError: when that is more than the pickle holds (plus :data:`ALLOCATION_SLACK`)
        """
        if declared > self.limit:
            raise DeclaredSizeError(
                f"{self.source}: {self.entry} declares {what} of {declared} bytes, but holds only "
                f"{self.limit - ALLOCATION_SLACK} bytes: refused before allocating it"
            )

    def _counted(self, size_format: str, what: str) -> int:
        (declared,) = struct.unpack(size_format, self.read(struct.calcsize(size_format)))
        if declared < 0:
            raise pickle.UnpicklingError(f"{what} has a negative length")
        self.check_size(declared, what)
        return int(declared)

    def load_frame(self) -> None:
        self._unframer.load_frame(self._counted("<Q", "a frame"))

    def load_binbytes(self) -> None:
        self.append(self.read(self._counted("<I", "a bytes object")))

    def load_binbytes8(self) -> None:
        self.append(self.read(self._counted("<Q", "a bytes object")))

    def load_binunicode(self) -> None:
        self.append(str(self.read(self._counted("<I", "a string")), "utf-8", "surrogatepass"))

    def load_binunicode8(self) -> None:
        self.append(str(self.read(self._counted("<Q", "a string")), "utf-8", "surrogatepass"))

    def load_binstring(self) -> None:
        self.append(self._decode_string(self.read(self._counted("<i", "a string"))))

    def load_long4(self) -> None:
        self.append(pickle.decode_long(self.read(self._counted("<i", "an integer"))))

    def load_bytearray8(self) -> None:
        buffer = bytearray(self._counted("<Q", "a bytearray"))
        self.readinto(buffer)
        self.append(buffer)

    # -- calls: only the globals of CALLABLE, with their arguments checked ---------------------

    def _call(self, function: Any, args: Any) -> Any:
        name = self.names.get(id(function))
        if name is None or name not in CALLABLE:
            shown = ".".join(name) if name is not None else type(function).__name__
            raise UnsafeFileError(
                f"{self.source}: {self.entry} calls {shown}, which DeepSARSA's own files never call "
                f"(a call could build or allocate anything): refused; {TRUST_HINT}"
            )
        if not isinstance(args, tuple):
            raise pickle.UnpicklingError(f"the arguments of {'.'.join(name)} are not a tuple")
        check = CALLABLE[name]
        if check is not None:
            check(self, args)
        return function(*args)

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST and OBJ (protocols 0 and 1)
        self.append(self._call(klass, tuple(args)))

    def _new(self, cls: Any, args: Any, kwargs: Any) -> None:
        if not isinstance(cls, type) or id(cls) not in self.names:
            raise UnsafeFileError(f"{self.source}: {self.entry} creates an object of something that is not a class it names")
        if issubclass(cls, np.ndarray):  # ndarray.__new__(shape) allocates: NumPy's pickles never create one so
            raise UnsafeFileError(f"{self.source}: {self.entry} creates an array from a shape, as NumPy's pickles never do")
        self.append(cls.__new__(cls, *args, **kwargs))

    def load_newobj(self) -> None:
        args = self.stack.pop()
        self._new(self.stack.pop(), args, {})

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        self._new(self.stack.pop(), args, kwargs)

    def load_build(self) -> None:
        state, instance = self.stack[-1], self.stack[-2]
        if isinstance(instance, np.ndarray):  # ndarray.__setstate__((version, shape, dtype, fortran, data)) allocates
            fields = state[1:] if isinstance(state, tuple) and len(state) == 5 else state
            if not (isinstance(fields, tuple) and len(fields) == 4 and isinstance(fields[1], np.dtype)):
                raise pickle.UnpicklingError("the state of an array is not (shape, dtype, fortran, data)")
            self.check_size(_array_bytes(fields[0], fields[1]), f"an array of shape {fields[0]!r} and dtype {fields[1]}")
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]


for _opcode, _method in [
    (pickle.FRAME, RestrictedUnpickler.load_frame),
    (pickle.BINBYTES, RestrictedUnpickler.load_binbytes),
    (pickle.BINBYTES8, RestrictedUnpickler.load_binbytes8),
    (pickle.BINUNICODE, RestrictedUnpickler.load_binunicode),
    (pickle.BINUNICODE8, RestrictedUnpickler.load_binunicode8),
    (pickle.BINSTRING, RestrictedUnpickler.load_binstring),
    (pickle.LONG4, RestrictedUnpickler.load_long4),
    (pickle.BYTEARRAY8, RestrictedUnpickler.load_bytearray8),
    (pickle.REDUCE, RestrictedUnpickler.load_reduce),
    (pickle.NEWOBJ, RestrictedUnpickler.load_newobj),
    (pickle.NEWOBJ_EX, RestrictedUnpickler.load_newobj_ex),
    (pickle.BUILD, RestrictedUnpickler.load_build),
]:
    RestrictedUnpickler.dispatch[_opcode[0]] = _method


# -- the globals a pickle may call, and the checks of their arguments ------------------------------

Check = Callable[[RestrictedUnpickler, tuple[Any, ...]], None]


def _reconstruct_args(unpickler: RestrictedUnpickler, args: tuple[Any, ...]) -> None:
    """``_reconstruct(ndarray, shape, dtype)``: NumPy's pickles ask for an empty array, filled by ``BUILD``."""
    if len(args) != 3 or not (isinstance(args[0], type) and issubclass(args[0], np.ndarray)):
        raise pickle.UnpicklingError("_reconstruct takes (ndarray, shape, dtype)")
    dtype = args[2] if isinstance(args[2], np.dtype) else np.dtype("b")
    unpickler.check_size(_array_bytes(args[1], dtype), f"an array of shape {args[1]!r}")


def _scalar_args(unpickler: RestrictedUnpickler, args: tuple[Any, ...]) -> None:
    if not args or not isinstance(args[0], np.dtype):
        raise pickle.UnpicklingError("scalar takes (dtype, data)")
    unpickler.check_size(args[0].itemsize, f"a scalar of dtype {args[0]}")


def _no_size_args(unpickler: RestrictedUnpickler, args: tuple[Any, ...]) -> None:
    """``bytearray(n)`` allocates ``n`` bytes: only ``bytearray(bytes)`` / ``bytearray(text, encoding)`` are taken."""
    if args and _is_int(args[0]):
        unpickler.check_size(int(args[0]), "a bytearray")
        raise UnsafeFileError(f"{unpickler.source}: {unpickler.entry} asks for a bytearray of a size ({args[0]}): refused")


def _bit_generator_args(unpickler: RestrictedUnpickler, args: tuple[Any, ...]) -> None:
    """``__bit_generator_ctor(name)`` calls any class it is given: only NumPy's bit generators."""
    from numpy.random.bit_generator import BitGenerator

    if len(args) > 1 or (
        args and not (isinstance(args[0], str) or (isinstance(args[0], type) and issubclass(args[0], BitGenerator)))
    ):
        raise UnsafeFileError(f"{unpickler.source}: {unpickler.entry} builds a bit generator from {args!r}: refused")


def _generator_args(unpickler: RestrictedUnpickler, args: tuple[Any, ...]) -> None:
    """``__generator_ctor(name, ctor)`` calls ``ctor(name)``: only NumPy's own ``__bit_generator_ctor``."""
    from numpy.random import _pickle as numpy_pickle
    from numpy.random.bit_generator import BitGenerator

    if len(args) > 2 or (len(args) == 2 and args[1] is not numpy_pickle.__bit_generator_ctor):
        raise UnsafeFileError(f"{unpickler.source}: {unpickler.entry} builds a random generator with {args[1:]!r}: refused")
    if args and not isinstance(args[0], BitGenerator):
        _bit_generator_args(unpickler, args[:1])


def _callables(checks: dict[str, Check | None], *modules: str) -> dict[tuple[str, str], Check | None]:
    return {(module, name): check for module in modules for name, check in checks.items()}


#: (module, name) -> the check of its arguments (None: any): the globals a pickle may call (``REDUCE``,
#: ``INST``, ``OBJ``). The others of an allowlist (spaces, buffers, policies, schedules, ``ndarray``)
#: may be named (and created empty, then given their state), never called: a call with a size builds it.
CALLABLE: dict[tuple[str, str], Check | None] = {
    **_callables(
        {"_reconstruct": _reconstruct_args, "scalar": _scalar_args}, "numpy.core.multiarray", "numpy._core.multiarray"
    ),
    **_callables({"_frombuffer": None}, "numpy.core.numeric", "numpy._core.numeric"),
    ("numpy", "dtype"): None,
    ("numpy.random._pickle", "__bit_generator_ctor"): _bit_generator_args,
    ("numpy.random._pickle", "__generator_ctor"): _generator_args,
    ("numpy.random._pickle", "__randomstate_ctor"): _generator_args,
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"): None,
    ("numpy.random._generator", "Generator"): None,
    ("numpy.random.mtrand", "RandomState"): None,
    **_callables({"complex": None, "set": None, "frozenset": None, "slice": None, "bytearray": _no_size_args}, "builtins"),
    ("collections", "deque"): None,
    ("collections", "OrderedDict"): None,
    ("torch", "device"): None,
    ("stable_baselines3.common.type_aliases", "TrainFrequencyUnit"): None,
    ("stable_baselines3.her.goal_selection_strategy", "GoalSelectionStrategy"): None,
}


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
        if isinstance(error, (UnsafeFileError, DeclaredSizeError)):
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
