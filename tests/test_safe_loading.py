"""
Loading a file from a stranger runs none of its code: crafted model zips, replay buffers and
checkpoints whose unpickling would create a marker file are refused (and no marker appears);
malformed files are a ValueError naming the file; everything the package saves loads unchanged.
"""

import base64
import hashlib
import json
import pickle
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
import torch as th
from sb3_contrib.common.wrappers import ActionMasker
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv, SimpleMultiObsEnv
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.utils import LinearSchedule

from deep_sarsa import DeepSARSA, checkpoint, files
from deep_sarsa.checkpoint import BUFFER_FILE, MANIFEST_FILE, MODEL_FILE, STATE_FILE, load_checkpoint, resume, save_checkpoint
from deep_sarsa.cli.parser import main
from deep_sarsa.gate import verify
from deep_sarsa.masking import toy_text_action_mask
from deep_sarsa.safe_pickle import MODEL_GLOBALS, UnsafeFileError, restricted_loads
from deep_sarsa.signing import CONFIG_DIR_VARIABLE, key_path, sign, signature_path

SMALL = dict(learning_starts=20, buffer_size=200, batch_size=8, train_freq=4, target_update_interval=20, seed=0)


class Payload:
    """Whoever unpickles it creates the marker file: the stand-in for an attacker's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


class UserActivation(th.nn.ReLU):
    """A policy_kwargs activation that is a user class: not on the allowlist."""


def serialized(value: Any) -> dict[str, str]:
    """An entry of SB3's ``data`` JSON as SB3 writes what JSON cannot hold."""
    return {":type:": str(type(value)), ":serialized:": base64.b64encode(cloudpickle.dumps(value)).decode()}


def rewrite(source: Path, target: Path, data: Any = None, **members: bytes) -> Path:
    """Copy a model zip, replacing its ``data`` (a JSON value) and other members."""
    with zipfile.ZipFile(source) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    if data is not None:
        entries["data"] = json.dumps(data).encode()
    entries.update({name.replace("__", "."): content for name, content in members.items()})
    with zipfile.ZipFile(target, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return target


def data_of(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("data"))


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model saved by the package, and its replay buffer beside it."""
    folder = tmp_path_factory.mktemp("good")
    model = DeepSARSA("MlpPolicy", "CartPole-v1", **SMALL)  # type: ignore[arg-type]
    model.learn(60)
    model.save(folder / "model.zip")
    model.save_replay_buffer(folder / "buffer.pkl")
    return folder / "model.zip"


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "MARKER"


def test_the_payload_runs_when_unpickled_as_sb3_does(marker: Path) -> None:
    """Control: the payload is potent, so that its absence below means it was refused."""
    pickle.loads(cloudpickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("entry", ["policy_class", "lr_schedule", "_last_obs", "observation_space", "an_added_key"])
def test_a_payload_in_any_entry_is_refused_before_it_runs(entry: str, good: Path, tmp_path: Path, marker: Path) -> None:
    data = data_of(good)
    data[entry] = serialized(Payload(marker))
    evil = rewrite(good, tmp_path / "evil.zip", data)
    # a key that neither SB3 nor DeepSARSA writes is refused for being serialized at all, before it is unpickled
    refusal = (
        "is a serialized object under a key that neither SB3 nor DeepSARSA writes"
        if entry == "an_added_key"
        else ("names the global pathlib\\.")
    )
    with pytest.raises(UnsafeFileError, match=rf"{re.escape(str(evil))}: entry '{entry}' {refusal}") as error:
        DeepSARSA.load(evil)
    assert "trusted=True" in str(error.value)
    if entry == "an_added_key":  # custom_objects with every key the file should have does not let an extra one through
        with pytest.raises(UnsafeFileError, match=entry):
            DeepSARSA.load(evil, custom_objects=dict.fromkeys(data_of(good)))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("predict", "would replace DeepSARSA.predict"),
        ("__class__", "would replace DeepSARSA.__class__"),
        ("env", "is one that save\\(\\) never writes"),  # SB3 would gym.make it: "module:EnvId" imports the module
        ("policy", "is one that save\\(\\) never writes"),
    ],
)
def test_an_entry_that_save_never_writes_is_refused(key: str, message: str, good: Path, tmp_path: Path) -> None:
    data = data_of(good)
    data[key] = "antigravity:Fly-v0"
    evil = rewrite(good, tmp_path / "evil.zip", data)
    with pytest.raises(UnsafeFileError, match=rf"evil.zip: entry '{re.escape(key)}' {message}"):
        DeepSARSA.load(evil)
    assert "antigravity" not in sys.modules


def test_a_pickle_that_sets_attributes_of_an_allowed_class_is_refused_and_undone(tmp_path: Path) -> None:
    # GLOBAL LinearSchedule, then BUILD with (None, {"tampered": 1}): a class attribute, set by the file
    tamper = b"cstable_baselines3.common.utils\nLinearSchedule\n(N}Vtampered\nI1\nstb."
    with pytest.raises(UnsafeFileError, match=r"entry 'x' changes <class .*LinearSchedule'>.*refused and undone"):
        restricted_loads(tamper, MODEL_GLOBALS, "tamper.zip", "entry 'x'")
    assert not hasattr(LinearSchedule, "tampered")
    (tmp_path / "tamper.pkl").write_bytes(tamper.replace(b"utils\nLinearSchedule", b"buffers\nReplayBuffer"))
    with pytest.raises(UnsafeFileError, match=r"tamper.pkl: the replay buffer changes"):
        DeepSARSA("MlpPolicy", "CartPole-v1", **SMALL).load_replay_buffer(tmp_path / "tamper.pkl")  # type: ignore[arg-type]
    assert not hasattr(LinearSchedule, "tampered") and not hasattr(ReplayBuffer, "tampered")


def test_a_lambda_schedule_is_refused_by_default_and_loaded_when_trusted(tmp_path: Path) -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", learning_rate=lambda _: 5e-4, **SMALL)  # type: ignore[arg-type]
    model.save(tmp_path / "lambda.zip")
    with pytest.raises(UnsafeFileError, match=r"lambda.zip: entry '(learning_rate|lr_schedule)' names the global cloudpickle"):
        DeepSARSA.load(tmp_path / "lambda.zip")
    loaded = DeepSARSA.load(tmp_path / "lambda.zip", trusted=True)
    assert loaded.learning_rate(0.5) == 5e-4  # type: ignore[operator]


def test_a_user_class_in_policy_kwargs_needs_trusted(tmp_path: Path) -> None:
    model = DeepSARSA("MlpPolicy", "CartPole-v1", policy_kwargs=dict(activation_fn=UserActivation), **SMALL)  # type: ignore[arg-type]
    model.save(tmp_path / "user.zip")
    with pytest.raises(UnsafeFileError, match=r"entry 'policy_kwargs' names the global .*UserActivation"):
        DeepSARSA.load(tmp_path / "user.zip")
    assert DeepSARSA.load(tmp_path / "user.zip", trusted=True).policy_kwargs["activation_fn"] is UserActivation


def _mlp() -> DeepSARSA:
    return DeepSARSA("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), **SMALL)  # type: ignore[arg-type]


def _with_classes() -> DeepSARSA:
    policy_kwargs = dict(
        activation_fn=th.nn.Tanh,
        optimizer_class=th.optim.RMSprop,
        optimizer_kwargs=dict(alpha=0.9),
        features_extractor_class=FlattenExtractor,
        net_arch=[16],
    )
    return DeepSARSA("MlpPolicy", "CartPole-v1", policy_kwargs=policy_kwargs, **SMALL)  # type: ignore[arg-type]


def _linear_schedule() -> DeepSARSA:
    return DeepSARSA("MlpPolicy", "CartPole-v1", learning_rate=LinearSchedule(1e-3, 1e-4, 0.5), **SMALL)  # type: ignore[arg-type]


def _n_steps_by_episode() -> DeepSARSA:
    settings: dict[str, Any] = dict(SMALL, target_update_interval=(2, "episode"))
    return DeepSARSA("MlpPolicy", "CartPole-v1", n_steps=3, next_action="stored", **settings)


def _masked() -> DeepSARSA:
    env = make_vec_env(lambda: ActionMasker(gym.make("Taxi-v4"), toy_text_action_mask), n_envs=2, seed=0)
    return DeepSARSA("MlpPolicy", env, next_action="expected", **SMALL)  # type: ignore[arg-type]


def _cnn() -> DeepSARSA:
    env = FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=True)
    return DeepSARSA("CnnPolicy", env, **SMALL)  # type: ignore[arg-type]


def _multi_input() -> DeepSARSA:
    return DeepSARSA("MultiInputPolicy", SimpleMultiObsEnv(random_start=True), **SMALL)  # type: ignore[arg-type]


@pytest.mark.parametrize("make", [_mlp, _with_classes, _linear_schedule, _n_steps_by_episode, _masked, _cnn, _multi_input])
def test_every_model_the_package_saves_loads_by_default(make: Callable[[], DeepSARSA], tmp_path: Path) -> None:
    model = make()
    model.learn(40)
    model.save(tmp_path / "model.zip")
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    loaded = DeepSARSA.load(tmp_path / "model.zip", env=model.get_env())
    loaded.load_replay_buffer(tmp_path / "buffer.pkl")
    assert loaded.replay_buffer is not None and model.replay_buffer is not None
    assert type(loaded.replay_buffer) is type(model.replay_buffer)
    assert loaded.replay_buffer.size() == model.replay_buffer.size()
    for name, value in model.policy.state_dict().items():
        th.testing.assert_close(loaded.policy.state_dict()[name], value)
    for setting in ("policy_kwargs", "next_action", "n_steps", "_target_update_frequency", "_target_update_unit"):
        assert getattr(loaded, setting) == getattr(model, setting), setting
    assert loaded.lr_schedule(0.3) == model.lr_schedule(0.3)
    loaded.learn(20, reset_num_timesteps=False)


MALFORMED: dict[str, Callable[[dict[str, Any]], Any]] = {
    "data is a list": lambda data: [1, 2],
    "data is an int": lambda data: 3,
    "data is a string": lambda data: "data",
    "policy_class is a string": lambda data: {**data, "policy_class": "MlpPolicy"},
    "non-pickle bytes": lambda data: {**data, "lr_schedule": {":serialized:": base64.b64encode(b"no pickle").decode()}},
    "no observation_space": lambda data: {key: value for key, value in data.items() if key != "observation_space"},
    "next_action bogus": lambda data: {**data, "next_action": "bogus"},
    "gamma out of range": lambda data: {**data, "gamma": 7},
}


@pytest.mark.parametrize("trusted", [False, True])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_data_entry_is_a_value_error_naming_the_file(case: str, trusted: bool, good: Path, tmp_path: Path) -> None:
    bad = rewrite(good, tmp_path / "bad.zip", MALFORMED[case](data_of(good)))
    with pytest.raises(ValueError, match=re.escape(str(bad))) as error:
        DeepSARSA.load(bad, trusted=trusted)
    assert "\n" not in str(error.value)
    if case == "next_action bogus":
        assert "next_action must be one of" in str(error.value)


@pytest.mark.parametrize("trusted", [False, True])
def test_other_malformed_files_are_value_errors_naming_the_file(trusted: bool, good: Path, tmp_path: Path) -> None:
    cases = {
        "garbage_pth.zip": lambda path: rewrite(good, path, policy__pth=b"garbage, not a torch file"),
        "truncated.zip": lambda path: path.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
        "not_a_zip.zip": lambda path: path.write_text("plain text"),
    }
    for name, make in cases.items():
        make(tmp_path / name)
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / name))):
            DeepSARSA.load(tmp_path / name, trusted=trusted)


def test_an_entry_over_its_size_cap_is_refused_before_it_is_read(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "MAX_DATA_BYTES", 1000)  # the real cap is 64 MiB
    with pytest.raises(ValueError, match=r"model.zip: its entry 'data' is \d+ bytes, more than 1000 allowed"):
        DeepSARSA.load(good)
    monkeypatch.setattr(files, "MAX_PTH_BYTES", 1000)
    monkeypatch.setattr(files, "MAX_DATA_BYTES", 2**20)
    with pytest.raises(ValueError, match=r"its entry '[\w.]+\.pth' is \d+ bytes, more than 1000 allowed"):
        DeepSARSA.load(good)


def test_a_file_object_is_loaded_safely_too(good: Path, tmp_path: Path, marker: Path) -> None:
    data = data_of(good)
    data["lr_schedule"] = serialized(Payload(marker))
    evil = rewrite(good, tmp_path / "evil.zip", data)
    with open(evil, "rb") as file, pytest.raises(UnsafeFileError, match=r"evil\.zip: entry 'lr_schedule'"):
        DeepSARSA.load(file)
    with open(good, "rb") as file:
        assert DeepSARSA.load(file).num_timesteps == 60
    assert not marker.exists()


def test_an_evil_replay_buffer_is_refused_and_the_current_one_kept(good: Path, tmp_path: Path, marker: Path) -> None:
    model = DeepSARSA.load(good, env=gym.make("CartPole-v1"))
    model.load_replay_buffer(good.parent / "buffer.pkl")
    before = model.replay_buffer
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UnsafeFileError, match=r"evil.pkl: the replay buffer names the global pathlib\..*trusted=True"):
        model.load_replay_buffer(tmp_path / "evil.pkl")
    assert model.replay_buffer is before and not marker.exists()

    with open(good.parent / "buffer.pkl", "rb") as file:
        buffer = pickle.load(file)
    buffer.hidden = Payload(marker)  # inside a real buffer
    (tmp_path / "nested.pkl").write_bytes(pickle.dumps(buffer))
    with pytest.raises(UnsafeFileError, match=r"nested.pkl: the replay buffer names the global pathlib\."):
        model.load_replay_buffer(tmp_path / "nested")  # ".pkl" may be left out, as in SB3
    assert model.replay_buffer is before and not marker.exists()


def test_a_malformed_or_unfitting_replay_buffer_is_a_value_error_and_the_current_one_kept(good: Path, tmp_path: Path) -> None:
    model = DeepSARSA.load(good)
    before = model.replay_buffer
    (tmp_path / "garbage.pkl").write_bytes(b"garbage")
    (tmp_path / "array.pkl").write_bytes(pickle.dumps(np.zeros(3)))
    other = DeepSARSA("MlpPolicy", "Acrobot-v1", **SMALL)  # type: ignore[arg-type]
    other.save_replay_buffer(tmp_path / "acrobot.pkl")
    for name, message in [
        ("garbage.pkl", "is not a readable pickle"),
        ("array.pkl", "is not a replay buffer saved by SB3: it holds a ndarray"),
        ("acrobot.pkl", "the replay buffer's observation_space"),
    ]:
        for trusted in (False, True):
            with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path / name))}.*{message}"):
                model.load_replay_buffer(tmp_path / name, trusted=trusted)
            assert model.replay_buffer is before
    with pytest.raises(FileNotFoundError, match="no such replay buffer file"):
        model.load_replay_buffer(tmp_path / "missing.pkl")


def _checkpoint(folder: Path) -> Path:
    model = DeepSARSA("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=1), **SMALL)  # type: ignore[arg-type]
    model.learn(60)  # 64 steps: whole rollouts of 2 envs x train_freq 4
    model._total_timesteps = 100  # resume() learns the steps left
    return save_checkpoint(model, folder)


def _generation(folder: Path) -> Path:
    newest = checkpoint.latest_checkpoint(folder)
    assert newest is not None
    return newest


def _set_manifest_entry(generation: Path, name: str) -> None:
    """Make the manifest agree with the file as it is now (the manifest's old signature no longer matches)."""
    manifest = json.loads((generation / MANIFEST_FILE).read_text())
    content = (generation / name).read_bytes()
    manifest["files"][name] = {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    (generation / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_a_checkpoint_written_here_is_signed_and_resumes_without_arguments(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path / "checkpoint")
    manifest = _generation(folder) / MANIFEST_FILE
    assert verify(manifest) and signature_path(manifest).read_text().startswith("hmac-sha256:")
    assert set(json.loads(manifest.read_text())["files"]) == {MODEL_FILE, BUFFER_FILE, STATE_FILE}
    assert key_path().stat().st_mode & 0o777 == 0o600
    assert resume(folder).num_timesteps >= 100


@pytest.mark.parametrize("signature", ["manifest unchanged", "missing", "bad", "another key"])
def test_an_evil_state_pkl_is_refused_before_it_runs(
    signature: str, tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _checkpoint(tmp_path / "checkpoint")
    generation = _generation(folder)
    (generation / STATE_FILE).write_bytes(cloudpickle.dumps(Payload(marker)))
    error: type[ValueError]
    if signature == "manifest unchanged":  # the manifest's hash of state.pkl gives it away
        error, message = checkpoint.CheckpointError, "state.pkl: .* but the manifest records"
    else:
        _set_manifest_entry(generation, STATE_FILE)
        error = UnsafeFileError
        if signature == "missing":
            signature_path(generation / MANIFEST_FILE).unlink()
            message = "manifest.json: it is not signed"
        elif signature == "bad":
            message = "manifest.json: its signature does not match"  # the signature of the manifest it replaced
        else:
            sign(generation / MANIFEST_FILE)  # signed by the stranger's key, not this user's
            monkeypatch.setenv(CONFIG_DIR_VARIABLE, str(tmp_path / "this user"))
            message = "manifest.json: (it is not signed|its signature does not match)"
    with pytest.raises(error, match=message):
        load_checkpoint(folder)
    with pytest.raises(error):
        resume(folder)
    assert not marker.exists()


def test_a_changed_checkpoint_model_is_refused_before_state_pkl_is_touched(tmp_path: Path, marker: Path) -> None:
    folder = _checkpoint(tmp_path / "checkpoint")
    generation = _generation(folder)
    (generation / STATE_FILE).write_bytes(cloudpickle.dumps(Payload(marker)))
    data = data_of(generation / MODEL_FILE)
    data["lr_schedule"] = serialized(Payload(marker))
    rewrite(generation / MODEL_FILE, tmp_path / "evil.zip", data).replace(generation / MODEL_FILE)
    with pytest.raises(checkpoint.CheckpointError, match=r"model.zip: .*manifest records"):
        load_checkpoint(folder)
    (generation / MODEL_FILE).write_text("broken")
    with pytest.raises(checkpoint.CheckpointError, match=r"model.zip: .*manifest records"):
        load_checkpoint(folder)
    assert not marker.exists()


def test_a_checkpoint_from_elsewhere_resumes_when_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _checkpoint(tmp_path / "checkpoint")
    monkeypatch.setenv(CONFIG_DIR_VARIABLE, str(tmp_path / "another machine"))
    with pytest.raises(UnsafeFileError, match=r"manifest\.json: its signature does not match"):
        resume(folder)
    assert not key_path().exists()  # checking a signature creates no key
    assert resume(folder, trusted=True).num_timesteps >= 100


def test_a_checkpoint_that_cannot_be_signed_is_kept_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_key() -> bytes:
        raise PermissionError(f"cannot create {key_path()}")

    monkeypatch.setattr(checkpoint, "signing_key", no_key)
    with pytest.warns(UserWarning, match="could not be signed.*resume it with trusted=True"):
        folder = _checkpoint(tmp_path / "checkpoint")
    assert not signature_path(_generation(folder) / MANIFEST_FILE).exists()
    with pytest.raises(UnsafeFileError, match="it is not signed"):
        load_checkpoint(folder)
    assert load_checkpoint(folder, trusted=True).num_timesteps == 64


def _evil_model(good: Path, tmp_path: Path, marker: Path) -> Path:
    data = data_of(good)
    data["policy_class"] = serialized(Payload(marker))
    return rewrite(good, tmp_path / "evil.zip", data)


@pytest.mark.parametrize("command", ["evaluate", "enjoy"])
def test_the_cli_refuses_an_evil_model_with_exit_code_2(
    command: str, good: Path, tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evil = _evil_model(good, tmp_path, marker)
    extra = ["--gif", str(tmp_path / "out.gif")] if command == "enjoy" else []
    assert main([command, str(evil), "--env", "CartPole-v1", *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "evil.zip: entry 'policy_class'" in err and "--trusted" in err
    assert not marker.exists()


def test_the_console_script_refuses_an_evil_model(good: Path, tmp_path: Path, marker: Path) -> None:
    evil = _evil_model(good, tmp_path, marker)
    executable = Path(sys.executable).parent / "deep-sarsa"
    result = subprocess.run([executable, "evaluate", str(evil)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "names the global pathlib." in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("case", ["data is a list", "policy_class is a string", "non-pickle bytes", "no observation_space"])
def test_the_cli_reports_a_malformed_model_in_one_line(
    case: str, good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = rewrite(good, tmp_path / "bad.zip", MALFORMED[case](data_of(good)))
    for trusted in ([], ["--trusted"]):
        assert main(["evaluate", str(bad), "--env", "CartPole-v1", *trusted]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and str(bad) in err


def test_the_cli_loads_a_trusted_lambda_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    DeepSARSA("MlpPolicy", "CartPole-v1", learning_rate=lambda _: 5e-4, **SMALL).save(tmp_path / "lambda.zip")  # type: ignore[arg-type]
    arguments = ["evaluate", str(tmp_path / "lambda.zip"), "--env", "CartPole-v1", "--episodes", "1", "--json"]
    assert main(arguments) == 2
    assert main([*arguments, "--trusted"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["episodes"] == 1
