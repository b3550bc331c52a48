"""
Files crafted as an attacker would (issue #35): each is refused before it allocates what it
declares, with an error naming the file and the key or field, and nothing outside is touched.
Sizes and times of the same inputs are measured by benchmarks/hostile_inputs.py, not here.
"""

import base64
import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from deep_sarsa import DeepSARSA, validation
from deep_sarsa.checkpoint import FORMAT, CheckpointError, load_checkpoint
from deep_sarsa.cli.parser import main
from deep_sarsa.files import check_replay_buffer
from deep_sarsa.gate import read_npz, read_regular
from deep_sarsa.safe_pickle import BUFFER_GLOBALS, MODEL_GLOBALS, DeclaredSizeError, UnsafeFileError, restricted_loads

SMALL = dict(learning_starts=20, buffer_size=200, batch_size=8, train_freq=4, target_update_interval=20, seed=0)
GIB = 2**30


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model saved by the package, its replay buffer beside it and a run.json, as `deep-sarsa train` writes them."""
    folder = tmp_path_factory.mktemp("good")
    model = DeepSARSA("MlpPolicy", "CartPole-v1", **SMALL)  # type: ignore[arg-type]
    model.learn(60)
    model.save(folder / "model.zip")
    model.save_replay_buffer(folder / "buffer.pkl")
    (folder / "run.json").write_text(json.dumps({"env_id": "CartPole-v1"}))
    return folder / "model.zip"


def serialized(value: Any) -> dict[str, str]:
    return {":type:": str(type(value)), ":serialized:": base64.b64encode(cloudpickle.dumps(value)).decode()}


def rewrite(source: Path, target: Path, data: dict[str, Any] | None = None, **members: bytes) -> Path:
    """Copy a model zip, replacing its ``data`` and adding or replacing other entries (deflated)."""
    with zipfile.ZipFile(source) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    if data is not None:
        entries["data"] = json.dumps(data).encode()
    entries.update({name.replace("__", "."): content for name, content in members.items()})
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return target


def data_of(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as archive:
        return dict(json.loads(archive.read("data")))


def buffer_of(good: Path) -> Any:
    with open(good.parent / "buffer.pkl", "rb") as file:
        return pickle.load(file)


# -- item 1: nothing is allocated from a size that the file declares but does not hold -------------

#: 32 bytes that ask for bytearray(10 GiB)
BYTEARRAY_CALL = b"\x80\x04cbuiltins\nbytearray\n\x8a\x05\x00\x00\x00\x80\x02\x85R."
#: the same through NumPy's generator helper, which calls whatever it is given
GENERATOR_GADGET = b"\x80\x04cnumpy.random._pickle\n__generator_ctor\n\x8a\x05\x00\x00\x00\x80\x02cbuiltins\nbytearray\n\x86R."
#: the module of NumPy's array rebuilder, as the installed NumPy names it in a pickle (numpy.core before NumPy 2)
RECONSTRUCT_MODULE = np.zeros(1).__reduce__()[0].__module__.encode()
CRAFTED_PICKLES = {
    "bytearray(10 GiB)": (BYTEARRAY_CALL, DeclaredSizeError, r"declares a bytearray of 10737418240 bytes, but holds only 32"),
    "BYTEARRAY8 opcode": (
        b"\x80\x05\x96" + struct.pack("<Q", 10 * GIB) + b".",
        DeclaredSizeError,
        "a bytearray of 10737418240",
    ),
    "BINBYTES8 opcode": (
        b"\x80\x05\x8e" + struct.pack("<Q", 10 * GIB) + b".",
        DeclaredSizeError,
        "a bytes object of 10737418240",
    ),
    "FRAME opcode": (b"\x80\x05\x95" + struct.pack("<Q", 10 * GIB) + b".", DeclaredSizeError, "a frame of 10737418240"),
    "generator gadget": (GENERATOR_GADGET, UnsafeFileError, "builds a random generator with"),
    "_reconstruct": (
        b"\x80\x04c" + RECONSTRUCT_MODULE + b"\n_reconstruct\ncnumpy\nndarray\n\x8a\x05\x00\x00\x00\x80\x02\x85C\x01b\x87R.",
        DeclaredSizeError,
        r"an array of shape \(10737418240,\)",
    ),
    "ndarray.__new__": (
        b"\x80\x04cnumpy\nndarray\n\x8a\x05\x00\x00\x00\x80\x02\x85\x85\x81.",
        UnsafeFileError,
        "from a shape",
    ),
    "a space called": (b"\x80\x04cgymnasium.spaces.discrete\nDiscrete\nK\x05\x85R.", UnsafeFileError, "calls gymnasium"),
}


@pytest.mark.parametrize("case", list(CRAFTED_PICKLES))
def test_a_pickle_that_declares_more_than_it_holds_is_refused(case: str) -> None:
    content, error, message = CRAFTED_PICKLES[case]
    for allowed in (MODEL_GLOBALS, BUFFER_GLOBALS):
        with pytest.raises(error, match=f"crafted.pkl: the replay buffer .*{message}"):
            restricted_loads(content, allowed, "crafted.pkl", "the replay buffer")


class ObjectArrayState:
    """Pickles as NumPy pickles an object array (an empty array, then its state), the state declaring 10**10 items."""

    def __reduce__(self) -> tuple[Any, ...]:
        reconstruct = np.ndarray.__reduce__(np.zeros(1, dtype=object))[0]
        return (reconstruct, (np.ndarray, (0,), b"b"), (1, (10**10,), np.dtype(object), False, []))


def test_an_array_state_declaring_a_huge_shape_is_refused() -> None:
    with pytest.raises(
        DeclaredSizeError, match=r"declares an array of shape \(10000000000,\) and dtype object of 80000000000"
    ):
        restricted_loads(pickle.dumps(ObjectArrayState()), BUFFER_GLOBALS, "crafted.pkl", "the replay buffer")


def test_a_crafted_replay_buffer_file_is_refused_and_the_current_buffer_kept(good: Path, tmp_path: Path) -> None:
    model = DeepSARSA.load(good)
    before = model.replay_buffer
    (tmp_path / "crafted.pkl").write_bytes(BYTEARRAY_CALL)
    with pytest.raises(DeclaredSizeError, match=r"crafted.pkl: the replay buffer declares a bytearray of 10737418240 bytes"):
        model.load_replay_buffer(tmp_path / "crafted.pkl")
    assert model.replay_buffer is before


def test_a_serialized_entry_under_an_unknown_key_is_refused_and_plain_json_is_kept(good: Path, tmp_path: Path) -> None:
    data = data_of(good)
    data["extra"] = {":type:": "<class 'bytearray'>", ":serialized:": base64.b64encode(BYTEARRAY_CALL).decode()}
    crafted = rewrite(good, tmp_path / "crafted.zip", data)
    with pytest.raises(UnsafeFileError, match=r"crafted.zip: entry 'extra' is a serialized object under a key that neither"):
        DeepSARSA.load(crafted)
    # what SB3's save(include=...) writes for a plain value stays, as in SB3
    model = DeepSARSA.load(good)
    model.note = {"run": 3}  # type: ignore[attr-defined]
    model.save(tmp_path / "included.zip", include=["note"])
    assert DeepSARSA.load(tmp_path / "included.zip").note == {"run": 3}  # type: ignore[attr-defined]


def test_a_zip_entry_that_sb3_does_not_write_is_refused(good: Path, tmp_path: Path) -> None:
    crafted = rewrite(good, tmp_path / "crafted.zip", extra__pth=bytes(2**20))
    with pytest.raises(
        ValueError, match=r"crafted.zip: its entry 'extra.pth' \(1048576 bytes\) is not one that SB3 or DeepSARSA"
    ):
        DeepSARSA.load(crafted)


def test_a_policy_pth_that_inflates_far_beyond_its_networks_is_refused(good: Path, tmp_path: Path) -> None:
    crafted = rewrite(good, tmp_path / "crafted.zip", policy__pth=bytes(8 * 2**20))  # deflates to 8 KB
    assert crafted.stat().st_size < 200_000
    with pytest.raises(ValueError, match=r"crafted.zip: its entry 'policy.pth' is 8388608 bytes once decompressed, far more"):
        DeepSARSA.load(crafted)


@pytest.mark.parametrize(
    ("key", "change", "shown"),
    [
        ("net_arch", lambda data: {"policy_kwargs": {"net_arch": [30000, 30000, 30000]}}, r"policy_kwargs\['net_arch'\]"),
        ("action_space", lambda data: {"action_space": serialized(spaces.Discrete(10**9))}, "action_space Discrete"),
        ("observation_space", lambda data: {"observation_space": serialized(_huge_box())}, "observation_space Box"),
    ],
)
def test_networks_larger_than_the_weights_the_file_holds_are_refused_naming_the_key(
    key: str, change: Any, shown: str, good: Path, tmp_path: Path
) -> None:
    data = data_of(good)
    data.update(change(data))
    crafted = rewrite(good, tmp_path / "crafted.zip", data)
    held = r"but its 'policy.pth' holds \d+ bytes"
    pattern = rf"crafted.zip: its {shown}.* declares Q-networks of \d+ parameters \(\d+ bytes\), {held}"
    for load in (lambda: DeepSARSA.load(crafted), lambda: DeepSARSA.load(crafted, buffer_size=1)):
        with pytest.raises(ValueError, match=pattern):
            load()


def _huge_box() -> spaces.Box:
    """A Box that declares 10**8 dimensions (its bounds stay small: only the declaration is large)."""
    box = spaces.Box(-1, 1, (4,))
    box._shape = (10**8,)
    return box


def test_the_cli_refuses_a_crafted_model_in_one_line(good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = data_of(good)
    data["policy_kwargs"] = {"net_arch": [30000, 30000, 30000]}
    rewrite(good, tmp_path / "model.zip", data)
    (tmp_path / "run.json").write_text((good.parent / "run.json").read_text())
    assert main(["evaluate", str(tmp_path / "model.zip"), "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "net_arch" in err and "policy.pth" in err and len(err.splitlines()) == 1


# -- item 3: a replay buffer whose state does not hold together is refused at load ------------------


def _broken(buffer: Any, field: str) -> Any:
    if field == "rewards":
        buffer.rewards[0, 0] = np.nan
    elif field == "observations":
        buffer.observations[1, 0, 2] = np.inf
    elif field == "pos":
        buffer.pos = buffer.buffer_size + 5
    elif field == "full":
        buffer.full = "yes"
    elif field == "actions":
        buffer.actions[0, 0, 0] = 7
    elif field == "buffer_size":
        buffer.buffer_size = 10 * buffer.buffer_size
    elif field == "dones":
        buffer.dones = buffer.dones.astype(object)
    elif field == "next_observations":
        buffer.next_observations = buffer.next_observations.astype(np.float64)
    return buffer


BUFFER_FIELDS = {
    "rewards": "holds NaN or infinite values",
    "observations": "holds NaN or infinite values",
    "pos": r"is 205, expected an integer from 0 to 199",
    "full": "expected True or False",
    "actions": r"hold values outside the action space Discrete\(2\)",
    "buffer_size": r"has the shape \(200, 1, 4\), expected \(2000, 1, 4\)",
    "dones": "not a numeric one",
    "next_observations": "has the dtype float64, but its space says float32",
}


@pytest.mark.parametrize("field", list(BUFFER_FIELDS))
def test_an_inconsistent_replay_buffer_is_refused_naming_the_file_and_the_field(
    field: str, good: Path, tmp_path: Path
) -> None:
    model = DeepSARSA.load(good)
    before = model.replay_buffer
    path = tmp_path / "broken.pkl"
    path.write_bytes(pickle.dumps(_broken(buffer_of(good), field)))
    for trusted in (False, True):
        if field == "dones" and not trusted:
            continue  # an object array needs trusted=True to be read at all; the check refuses it then
        shown = field if field != "buffer_size" else "observations"
        with pytest.raises(ValueError, match=rf"broken.pkl: the replay buffer's {shown} .*{BUFFER_FIELDS[field]}"):
            model.load_replay_buffer(path, trusted=trusted)
        assert model.replay_buffer is before


def test_non_finite_values_load_with_check_finite_false(good: Path, tmp_path: Path) -> None:
    model = DeepSARSA.load(good, check_finite=False)
    (tmp_path / "nan.pkl").write_bytes(pickle.dumps(_broken(buffer_of(good), "rewards")))
    model.load_replay_buffer(tmp_path / "nan.pkl")
    assert model.replay_buffer is not None and np.isnan(model.replay_buffer.rewards[0, 0])


def test_every_replay_buffer_the_package_saves_passes_the_check(good: Path) -> None:
    check_replay_buffer("buffer.pkl", buffer_of(good))


# -- item 4: batch_size and n_envs are checked against the memory at construction --------------------


def test_a_batch_that_cannot_fit_in_memory_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match=r"batch_size must fit in memory: batch_size=1000000000 needs about [\d.]+ GiB"):
        DeepSARSA("MlpPolicy", "CartPole-v1", batch_size=10**9)


def test_more_envs_than_rows_names_n_envs(monkeypatch: pytest.MonkeyPatch) -> None:
    estimate = validation.replay_buffer_bytes(spaces.Box(-1, 1, (4,)), spaces.Discrete(2), 1, 5000, False)
    with pytest.raises(ValueError, match=r"n_envs must fit in memory: n_envs=5000 \(one row of the buffer per env\)"):
        validation.check_buffer_memory(estimate, 1, estimate - 1, None, n_envs=5000)


def test_the_cli_refuses_a_huge_batch_size_in_one_line_before_the_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "run"
    assert main(["train", "CartPole-v1", "--output", str(output), "--hyperparams", "batch_size=1000000000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: batch_size must fit in memory") and len(err.splitlines()) == 1
    assert not output.exists()


# -- item 7: every bad number of the command line is one line naming the flag, exit code 2 ----------


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "m.zip", "--episodes", "0"],
        ["evaluate", "m.zip", "--seed", "-1"],
        ["evaluate", "m.zip", "--seed", str(2**40)],
        ["enjoy", "m.zip", "--episodes", "-3"],
        ["enjoy", "m.zip", "--seed", "x"],
        ["train", "CartPole-v1", "--timesteps", "0"],
        ["train", "CartPole-v1", "--n-envs", "0"],
        ["train", "CartPole-v1", "--n-envs", "100000"],
        ["train", "CartPole-v1", "--eval-episodes", "0"],
        ["train", "CartPole-v1", "--seed", "-1"],
    ],
)
def test_a_bad_number_is_one_line_naming_the_flag(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    flag = next(item for item in argv if item.startswith("--"))
    assert len(err.splitlines()) == 1 and f"argument {flag}: must be" in err and "Traceback" not in err


# -- item 2: a received file must be a regular file inside its folder, read with a size cap -----------


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def _fake_generation(folder: Path) -> Path:
    generation = folder / "checkpoint" / "gen-00000001-step-64"
    generation.mkdir(parents=True)
    return generation


def test_a_fifo_or_a_device_as_a_checkpoint_manifest_is_refused_without_waiting(tmp_path: Path, fifo: Path) -> None:
    generation = _fake_generation(tmp_path)
    os.mkfifo(generation / "manifest.json")
    with pytest.raises(CheckpointError, match=r"manifest.json is a FIFO \(named pipe\), not a regular file"):
        load_checkpoint(tmp_path / "checkpoint")
    (generation / "manifest.json").unlink()
    (generation / "manifest.json").symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="leads out of"):
        load_checkpoint(tmp_path / "checkpoint", trusted=True)


def test_a_checkpoint_file_that_leads_out_of_its_generation_is_refused_and_not_read(tmp_path: Path) -> None:
    generation = _fake_generation(tmp_path)
    outside = tmp_path / "outside.zip"
    outside.write_bytes(b"secret")
    (generation / "model.zip").symlink_to(outside)
    entry = {"size": 6, "sha256": "0" * 64}
    files = dict.fromkeys(("model.zip", "replay_buffer.pkl", "state.pkl"), entry)
    (generation / "manifest.json").write_text(json.dumps({"format": FORMAT, "files": files}))
    with pytest.raises(CheckpointError, match=r"model.zip leads out of .*gen-00000001-step-64 \(a symbolic link to"):
        load_checkpoint(tmp_path / "checkpoint", trusted=True)
    assert outside.read_bytes() == b"secret"


def test_a_device_or_a_fifo_as_a_model_or_a_buffer_is_refused(good: Path, tmp_path: Path, fifo: Path) -> None:
    (tmp_path / "model.zip").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=r"model.zip is a character device, not a regular file: refused as a model file"):
        DeepSARSA.load(tmp_path / "model.zip")
    with pytest.raises(ValueError, match=r"fifo is a FIFO \(named pipe\), not a regular file: refused as a model file"):
        DeepSARSA.load(fifo)
    model = DeepSARSA.load(good)
    with pytest.raises(ValueError, match=r"fifo is a FIFO \(named pipe\), not a regular file: refused as a replay buffer"):
        model.load_replay_buffer(fifo)
    with pytest.raises(ValueError, match=r"model.zip is a character device"):
        model.load_replay_buffer(tmp_path / "model.zip")


def test_the_cli_refuses_dev_zero_as_a_model_in_one_line(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "model.zip").symlink_to("/dev/zero")
    (tmp_path / "run.json").write_text((good.parent / "run.json").read_text())
    assert main(["evaluate", str(tmp_path / "model.zip")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a character device, not a regular file" in err and len(err.splitlines()) == 1


def test_read_regular_caps_the_size(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(bytes(1001))
    with pytest.raises(ValueError, match=r"big is 1001 bytes, more than a test file may be here \(1000 bytes\)"):
        read_regular(tmp_path / "big", "a test file", 1000)
    assert read_regular(tmp_path / "big", "a test file", 1001) == bytes(1001)


def _npz_declaring(path: Path, shape: tuple[int, ...]) -> Path:
    """An .npz whose 'results' member's header declares ``shape`` (float64) but holds a few bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("timesteps.npy", _npy(np.arange(3)))
        archive.writestr("results.npy", header.getvalue() + bytes(64))
    return path


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_an_evaluation_log_declaring_16_gb_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    _npz_declaring(run / "eval" / "evaluations.npz", (2 * GIB, 1))
    with pytest.raises(
        ValueError, match=r"its member 'results.npy' declares an array of \(2147483648, 1\) float64 \(17179869184 bytes\)"
    ):
        read_npz(run / "eval" / "evaluations.npz", "an evaluation log", 2**20, run)
    pytest.importorskip("matplotlib")
    assert main(["plot", str(run), "--output", str(tmp_path / "curves.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "17179869184 bytes" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "curves.png").exists()


def test_a_fifo_as_the_evaluation_log_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    os.mkfifo(run / "eval" / "evaluations.npz")
    assert main(["plot", str(run), "--output", str(tmp_path / "curves.png")]) == 2
    assert "is a FIFO (named pipe), not a regular file" in capsys.readouterr().err


def test_an_evaluation_log_written_by_numpy_reads_back(tmp_path: Path) -> None:
    np.savez(tmp_path / "log.npz", timesteps=np.arange(3), results=np.ones((3, 2)), ep_lengths=np.ones((3, 2), dtype=int))
    arrays = read_npz(tmp_path / "log.npz", "an evaluation log", 2**20, tmp_path)
    assert arrays["results"].shape == (3, 2) and list(arrays["timesteps"]) == [0, 1, 2]


def test_gym_is_untouched(good: Path) -> None:
    """Control: the package's own model loads with an env (the checks above refuse only crafted files)."""
    model = DeepSARSA.load(good, env=gym.make("CartPole-v1"))
    assert model.num_timesteps == 60
