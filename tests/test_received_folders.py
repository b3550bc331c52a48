"""
A folder from someone else runs none of its code (issue #34): an rl-zoo3 log folder (``python -m deep_sarsa.zoo``),
a ``deep-sarsa train`` run folder (its ``run.json``), and the signing key that would vouch for a checkpoint. Every
file of such a folder is read through one gate (issue #35): opened and read once, its signature checked on the bytes
that are then used; no other module of the package opens a received file, checks a signature or unpickles.

Each attack is crafted as an attacker would: a payload that would create a sentinel file; the sentinel never appears,
the exit code is 2 and the message names the file and says how to trust it. Honest folders and ``--trusted`` still
open.
"""

import ast
import contextlib
import io
import json
import os
import pickle
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from older_checkpoint import write_older_checkpoint
from stable_baselines3 import DQN
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

import deep_sarsa.zoo as zoo
from deep_sarsa import DeepSARSA, gate
from deep_sarsa.checkpoint import MANIFEST_FILE, STATE_FILE, latest_checkpoint, load_checkpoint, save_checkpoint
from deep_sarsa.cli.parser import main as cli
from deep_sarsa.signing import CONFIG_DIR_VARIABLE, SigningKeyError, key_path, sign, signing_key
from deep_sarsa.zoo.__main__ import main as zoo_main
from deep_sarsa.zoo.folders import (
    FolderLoader,
    UnsafeFolderError,
    folder_literal,
    load_vecnormalize,
    load_yml,
    read_saved_hyperparams,
)

ENV = "CartPole-v1"


class Exec:
    """A pickle that runs ``code`` when unpickled (as plain pickle does), returning what it evaluates to."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return eval, (self.code,)


def writes(marker: Path) -> str:
    """Python code that creates ``marker``, as an expression that is true."""
    return f"open({str(marker)!r}, 'w').write('ran')"


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "SENTINEL.monitor.csv"  # the name a Monitor given the filename SENTINEL writes


def planted_module(folder: Path, marker: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module on sys.path that creates ``marker`` when imported, with a wrapper ``Plain`` and an env ``Planted-v0``."""
    name = f"planted_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(
        f"{writes(marker)}\n"
        "import gymnasium\n"
        "from gymnasium import Wrapper as Plain\n"
        "gymnasium.register('Planted-v0', entry_point='gymnasium.envs.classic_control:CartPoleEnv', max_episode_steps=20)\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    return name


# --- rl-zoo3 folders ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def working_folder(folder: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log folder as rl-zoo3 writes it: normalize as a string, env_kwargs, vecnormalize.pkl."""
    root = tmp_path_factory.mktemp("zoo")
    normalize = 'normalize:"dict(norm_obs=True, norm_reward=False)"'
    arguments = ["train", "--algo", "deep_sarsa", "--env", ENV, "-n", "300", "-f", str(root / "logs"), "--seed", "0"]
    options = ["--eval-freq", "-1", "--verbose", "0", "--env-kwargs", "sutton_barto_reward:True"]
    with working_folder(root):
        assert zoo_main([*arguments, *options, "--hyperparams", normalize, "buffer_size:1000"]) == 0
    return root / "logs"


def run_dir(logs: Path, algo: str = "deep_sarsa") -> Path:
    return logs / algo / f"{ENV}_1"


@pytest.fixture
def received(honest: Path, tmp_path: Path) -> Path:
    """A copy of the honest folder, for an attacker to change."""
    shutil.copytree(honest, tmp_path / "received")
    return tmp_path / "received"


def enjoy(logs: Path, *extra: str, algo: str = "deep_sarsa") -> int:
    return zoo_main(["enjoy", "--algo", algo, "--env", ENV, "-f", str(logs), "-n", "30", "--no-render", *extra])


def test_an_honest_rl_zoo3_folder_opens_unchanged(honest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stats = run_dir(honest) / ENV
    assert "!!python/object/apply:collections.OrderedDict" in (stats / "config.yml").read_text()
    assert (stats / "vecnormalize.pkl").is_file()
    hyperparams, path = read_saved_hyperparams(str(stats), test_mode=True)
    assert path == str(stats) and hyperparams["normalize_kwargs"] == {"norm_obs": True, "norm_reward": False}
    assert enjoy(honest) == 0
    assert "Mean reward" in capsys.readouterr().out


def test_an_honest_atari_config_passes_the_checks(tmp_path: Path) -> None:
    stats = tmp_path / "logs" / "deep_sarsa" / "PongNoFrameskip-v4_1" / "PongNoFrameskip-v4"
    stats.mkdir(parents=True)
    config: list[tuple[str, Any]] = [
        ("env_wrapper", ["stable_baselines3.common.atari_wrappers.AtariWrapper"]),
        ("frame_stack", 4),
        ("policy", "CnnPolicy"),
        ("train_freq", (4, "step")),
    ]
    from collections import OrderedDict

    (stats / "config.yml").write_text(yaml.dump(OrderedDict(config)))  # as rl-zoo3 dumps it, tags included
    hyperparams, _ = read_saved_hyperparams(str(stats))
    assert hyperparams["frame_stack"] == 4 and hyperparams["train_freq"] == (4, "step") and not hyperparams["normalize"]


def test_the_loader_reads_what_rl_zoo3_writes_and_names_the_key_of_a_tag() -> None:
    from collections import OrderedDict

    honest = yaml.dump(OrderedDict([("a", 1), ("b", [1.5, None, True]), ("c", {"d": "e"}), ("t", (1, "x"))]))
    assert yaml.load(honest, Loader=FolderLoader) == OrderedDict(
        [("a", 1), ("b", [1.5, None, True]), ("c", {"d": "e"}), ("t", (1, "x"))]
    )
    for text, key in [
        ("!!python/object/apply:collections.OrderedDict\n- - - a\n    - !!python/name:os.system\n", "a"),
        ("x:\n  y: [1, !!python/object/new:os.system [ls]]\n", "x.y[1]"),
        ("!!python/object/apply:collections.OrderedDict\n  state: {a: 1}\n", None),
    ]:
        with pytest.raises(UnsafeFolderError, match="--trusted") as error:
            yaml.load(text, Loader=FolderLoader)
        assert key is None or f"key {key!r}" in str(error.value)


@pytest.mark.parametrize(
    "text, value",
    [("True", True), ("False", False), ("dict(norm_obs=True, norm_reward=False)", {"norm_obs": True, "norm_reward": False}),
     ("{'gamma': 0.9}", {"gamma": 0.9})],
)  # fmt: skip
def test_normalize_is_read_as_a_literal(text: str, value: Any) -> None:
    assert folder_literal(text, "config.yml", "normalize") == value


@pytest.mark.parametrize("text", ["__import__('os').system('ls')", "dict(**x)", "[1, 2]", "dict(a=open('x'))", "x" * 20000])
def test_normalize_that_only_eval_could_read_is_refused(text: str) -> None:
    with pytest.raises(UnsafeFolderError, match=r"config.yml: normalize is .*would evaluate as Python code.*--trusted"):
        folder_literal(text, "config.yml", "normalize")


def _set_config(stats: Path, key: str, value: str) -> None:
    """Put ``key: value`` (yml text) into rl-zoo3's config.yml, as one more [key, value] pair."""
    text = (stats / "config.yml").read_text().rstrip("\n")
    (stats / "config.yml").write_text(f"{text}\n  - - {key}\n    - {value}\n")


def _attack(received: Path, route: str, marker: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Plant the payload of ``route`` in the received folder; return the file the refusal must name."""
    stats = run_dir(received) / ENV
    code = writes(marker)
    if route == "args.yml tag":
        text = (
            (stats / "args.yml")
            .read_text()
            .replace("- - device\n    - auto", f"- - device\n    - !!python/object/apply:eval [\"{code} and 'auto'\"]")
        )
        assert "eval" in text
        (stats / "args.yml").write_text(text)
        return str(stats / "args.yml")
    if route == "config.yml tag":
        _set_config(stats, "extra", f'!!python/object/apply:eval ["{code}"]')
        return str(stats / "config.yml")
    if route == "normalize eval":
        text = (stats / "config.yml").read_text()
        (stats / "config.yml").write_text(
            text.replace("dict(norm_obs=True, norm_reward=False)", f"{code} and dict(norm_obs=True, norm_reward=False)")
        )
        assert code in (stats / "config.yml").read_text()
        return str(stats / "config.yml")
    if route == "vecnormalize.pkl":
        honest_bytes = (stats / "vecnormalize.pkl").read_bytes()
        (stats / "vecnormalize.pkl").write_bytes(
            pickle.dumps(Exec(f"{code} and __import__('pickle').loads({honest_bytes!r})"))
        )
        return str(stats / "vecnormalize.pkl")
    if route == "wrapper module":
        _set_config(stats, "env_wrapper", f"{planted_module(received.parent, marker, monkeypatch)}.Plain")
        return str(stats / "config.yml")
    if route == "Monitor filename":  # Monitor writes FILENAME.monitor.csv
        filename = marker.parent / "SENTINEL"
        monitor = f"{{stable_baselines3.common.monitor.Monitor: {{filename: '{filename}'}}}}"
        _set_config(stats, "env_wrapper", f"[{monitor}]")
        return str(stats / "config.yml")
    raise AssertionError(route)


ROUTES = ["args.yml tag", "config.yml tag", "normalize eval", "vecnormalize.pkl", "wrapper module", "Monitor filename"]


@pytest.mark.parametrize("route", ROUTES)
def test_enjoy_of_a_received_folder_runs_none_of_its_code(
    route: str, received: Path, marker: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    file = _attack(received, route, marker, monkeypatch)
    capsys.readouterr()
    assert enjoy(received) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert file in err and "--trusted" in err and len(err.strip().splitlines()) == 1, err
    # --trusted reads the folder as rl-zoo3 does: the payload runs
    with contextlib.suppress(Exception):
        enjoy(received, "--trusted")
    assert marker.exists()


def test_record_video_refuses_too(received: Path, marker: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _attack(received, "vecnormalize.pkl", marker, monkeypatch)
    command = [
        "record_video",
        "--algo",
        "deep_sarsa",
        "--env",
        ENV,
        "-f",
        str(received),
        "-n",
        "20",
        "-o",
        str(tmp_path / "v"),
    ]
    assert zoo_main(command) == 2
    assert not marker.exists()


@pytest.mark.parametrize("normalize", ["on", "off"])
def test_train_i_reads_the_received_vecnormalize_safely(
    normalize: str,
    received: Path,
    marker: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = run_dir(received) / f"{ENV}.zip"
    arguments = ["train", "--algo", "deep_sarsa", "--env", ENV, "-n", "100", "-f", str(tmp_path / "mine"), "--eval-freq", "-1"]
    extra = ["--hyperparams", "normalize:True"] if normalize == "on" else []
    monkeypatch.chdir(tmp_path)
    assert zoo_main([*arguments, "-i", str(model), "--verbose", "0", *extra]) == 0  # honest: the stats load
    file = _attack(received, "vecnormalize.pkl", marker, monkeypatch)
    capsys.readouterr()
    assert zoo_main([*arguments, "-i", str(model), "--verbose", "0", *extra]) == 2
    assert not marker.exists() and file in capsys.readouterr().err


def test_train_without_i_reads_a_vecnormalize_in_the_working_folder_safely(
    marker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ENV).mkdir()
    (tmp_path / ENV / "vecnormalize.pkl").write_bytes(pickle.dumps(Exec(writes(marker))))
    monkeypatch.chdir(tmp_path)
    arguments = [
        "train",
        "--algo",
        "deep_sarsa",
        "--env",
        ENV,
        "-n",
        "100",
        "-f",
        "logs",
        "--eval-freq",
        "-1",
        "--verbose",
        "0",
    ]
    assert zoo_main(arguments) == 2
    assert not marker.exists() and "vecnormalize.pkl" in capsys.readouterr().err


def test_benchmark_refuses_an_env_id_that_imports_a_module(
    received: Path, marker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = planted_module(tmp_path, marker, monkeypatch)
    args_file = run_dir(received) / ENV / "args.yml"
    args_file.write_text(args_file.read_text().replace(f"- - env\n    - {ENV}", f"- - env\n    - {module}:Planted-v0"))
    command = ["benchmark", "--log-dir", str(received), "--benchmark-dir", str(tmp_path / "b"), "--no-hub", "--test-mode"]
    assert zoo_main([*command, "-n", "50"]) == 2
    err = capsys.readouterr().err
    assert not marker.exists() and str(args_file) in err and "--trusted" in err


def test_another_algorithms_model_is_not_unpickled_unless_trusted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = run_dir(tmp_path / "logs", "dqn")
    folder.mkdir(parents=True)
    DQN("MlpPolicy", ENV, buffer_size=100).save(folder / f"{ENV}.zip")
    assert enjoy(tmp_path / "logs", algo="dqn") == 2
    assert "DQN.load, which unpickles it" in capsys.readouterr().err
    assert enjoy(tmp_path / "logs", "--trusted", algo="dqn") == 0


@pytest.mark.slow  # a fresh interpreter per recording
def test_record_training_stops_with_2_when_its_recordings_are_refused(
    received: Path, marker: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _attack(received, "vecnormalize.pkl", marker, monkeypatch)
    command = ["record_training", "--algo", "deep_sarsa", "--env", ENV, "-f", str(received), "-n", "20"]
    zoo.redirect_subprocesses()
    assert zoo_main([*command, "-o", str(tmp_path / "videos")]) == 2
    assert not marker.exists()


def test_trusted_reaches_the_interpreters_rl_zoo3_starts() -> None:
    from deep_sarsa.zoo.folders import reading_folders

    command = ["python", "-m", "rl_zoo3.record_video", "--algo", "deep_sarsa"]
    assert "--trusted" not in (zoo.zoo_command(command) or [])
    with reading_folders(True):
        assert (zoo.zoo_command(command) or [])[3:5] == ["record_video", "--trusted"]


def test_the_zoo_vecnormalize_loader_round_trips_sb3s_file(tmp_path: Path) -> None:
    from deep_sarsa.zoo.folders import load_vecnormalize

    original = VecNormalize(make_vec_env(ENV, n_envs=2), gamma=0.9)
    original.reset()
    original.save(str(tmp_path / "vecnormalize.pkl"))
    loaded = load_vecnormalize(tmp_path / "vecnormalize.pkl", make_vec_env(ENV, n_envs=2))
    assert type(loaded) is VecNormalize and loaded.gamma == 0.9
    assert np.array_equal(loaded.obs_rms.mean, original.obs_rms.mean)  # type: ignore[attr-defined]


# --- run folders: run.json --------------------------------------------------------------------------------------------

TINY = [
    "--timesteps",
    "200",
    "--no-progress-bar",
    "--eval-episodes",
    "1",
    "--hyperparams",
    "learning_starts=50",
    "buffer_size=500",
]


def quietly(arguments: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return cli(arguments)


@pytest.fixture(scope="module")
def own_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of this user's, on an env that a module of theirs registers (``module:EnvId``, typed by the user)."""
    folder = tmp_path_factory.mktemp("own")
    (folder / "own_envs.py").write_text(
        "import gymnasium\n"
        "gymnasium.register('OwnCartPole-v0', max_episode_steps=20,\n"
        "                   entry_point='gymnasium.envs.classic_control:CartPoleEnv')\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        assert quietly(["train", "own_envs:OwnCartPole-v0", "--output", str(folder / "run"), *TINY]) == 0
    return folder / "run"


def test_ones_own_run_is_signed_and_evaluated_without_a_flag(own_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (own_run / "run.json.sig").is_file()
    monkeypatch.syspath_prepend(str(own_run.parent))
    assert quietly(["evaluate", str(own_run), "--episodes", "1"]) == 0
    assert quietly(["train", "--resume", str(own_run)]) == 0  # complete: checked, loaded, nothing left to do


def _received_run(own_run: Path, tmp_path: Path, **changes: Any) -> Path:
    folder = tmp_path / "received"
    shutil.copytree(own_run, folder)
    run = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**run, **changes}))
    return folder


@pytest.mark.parametrize("command", ["evaluate", "resume"])
@pytest.mark.parametrize("how", ["edited", "another key"])
def test_a_received_run_json_imports_no_module(
    command: str, how: str, own_run: Path, tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    module = planted_module(tmp_path, marker, monkeypatch)
    folder = _received_run(own_run, tmp_path, env_id=f"{module}:Planted-v0")
    if how == "another key":  # signed by its author, whose key is not this user's
        monkeypatch.setenv(CONFIG_DIR_VARIABLE, str(tmp_path / "author"))
        sign(folder / "run.json")
        monkeypatch.setenv(CONFIG_DIR_VARIABLE, str(tmp_path / "me"))
    arguments = ["evaluate", str(folder), "--episodes", "1"] if command == "evaluate" else ["train", "--resume", str(folder)]
    capsys.readouterr()
    assert quietly(arguments) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert str(folder / "run.json") in err and f"would import the module {module!r}" in err and "--trusted" in err
    if command == "evaluate":
        assert quietly([*arguments, "--trusted"]) == 0
    else:  # trusted now: signed, as the checkpoints it writes are; then evaluated without a flag
        assert quietly([*arguments, "--trusted"]) == 0
        assert not marker.exists()  # the run is complete: no env was made
        assert quietly(["evaluate", str(folder), "--episodes", "1"]) == 0
    assert marker.exists()


@pytest.mark.parametrize(
    "wrapper",
    [
        {"stable_baselines3.common.monitor.Monitor": {"filename": "{outside}/0.monitor.csv"}},
        {"gymnasium.wrappers.RecordVideo": {"video_folder": "{outside}/videos"}},
        {"gymnasium.wrappers.RecordVideo": {"video_folder": "{inside}/videos", "name_prefix": "../../x"}},
    ],
)
def test_wrapper_paths_outside_the_run_folder_are_refused(
    wrapper: dict[str, Any], own_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "another project"
    outside.mkdir()
    folder = tmp_path / "received"
    text = json.dumps([wrapper]).replace("{outside}", str(outside)).replace("{inside}", str(folder))
    folder = _received_run(own_run, tmp_path, env_id=ENV, env_wrapper=json.loads(text))
    capsys.readouterr()
    assert quietly(["evaluate", str(folder), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "is a path outside the folder" in err and str(folder / "run.json") in err and "--trusted" in err
    assert list(outside.iterdir()) == []


def test_a_monitor_inside_the_run_folder_is_fine(own_run: Path, tmp_path: Path) -> None:
    monitor = {"stable_baselines3.common.monitor.Monitor": {"filename": str(tmp_path / "received" / "mine")}}
    folder = _received_run(own_run, tmp_path, env_id=ENV, env_wrapper=[monitor])
    assert quietly(["evaluate", str(folder), "--episodes", "1"]) == 0
    assert (folder / "mine.monitor.csv").is_file()


# --- the signing key ----------------------------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "config"
    monkeypatch.setenv(CONFIG_DIR_VARIABLE, str(folder))
    return folder


def _planted_checkpoint(tmp_path: Path, marker: Path) -> Path:
    """A checkpoint whose state.pkl runs code, its manifest signed with the key in the config folder (the planter's)."""
    import hashlib

    folder = tmp_path / "checkpoint"
    model = DeepSARSA("MlpPolicy", make_vec_env(ENV, n_envs=1), buffer_size=100, learning_starts=10)
    model.learn(20)
    save_checkpoint(model, folder)
    generation = latest_checkpoint(folder)
    assert generation is not None
    payload = pickle.dumps(Exec(writes(marker)))
    (generation / STATE_FILE).write_bytes(payload)
    manifest = json.loads((generation / MANIFEST_FILE).read_text())
    manifest["files"][STATE_FILE] = {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    (generation / MANIFEST_FILE).write_text(json.dumps(manifest))
    sign(generation / MANIFEST_FILE)
    return folder


@pytest.mark.parametrize("flaw", ["key readable by others", "folder writable by others", "key of another user"])
def test_a_planted_key_signs_nothing(
    flaw: str, config: Path, tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _planted_checkpoint(tmp_path, marker)
    key = key_path()
    if flaw == "key readable by others":
        key.chmod(0o644)
        expected = rf"{key}: permissions 0644 are too open .*chmod 600 {key}"
    elif flaw == "folder writable by others":
        config.chmod(0o777)
        expected = rf"{config}: the config folder of the signing key is writable by others .*chmod 700 {config}"
    else:
        if os.getuid() == 0:
            os.chown(key, 12345, -1)
        else:  # not root: the key's owner cannot change; this user becomes another one, owning neither file
            monkeypatch.setattr("deep_sarsa.signing._check_folder", lambda folder: None)
            monkeypatch.setattr(os, "getuid", lambda: os.stat(key).st_uid + 1)
        expected = rf"{key}: the signing key belongs to another user"
    with pytest.raises(SigningKeyError, match=expected) as error:
        load_checkpoint(folder)
    assert "\n" not in str(error.value)
    assert not marker.exists()


def test_a_new_key_is_0600_in_a_0700_folder(config: Path) -> None:
    signing_key()
    assert stat.S_IMODE(config.stat().st_mode) == 0o700 and stat.S_IMODE(key_path().stat().st_mode) == 0o600


def test_a_key_that_is_a_folder_is_one_line_and_exit_2(
    own_run: Path, config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config.mkdir(mode=0o700)
    key_path().mkdir()
    monkeypatch.syspath_prepend(str(own_run.parent))
    capsys.readouterr()
    assert quietly(["evaluate", str(own_run), "--episodes", "1"]) == 2  # its run.json.sig is checked with the key
    err = capsys.readouterr().err.strip()
    assert err == f"error: {key_path()}: the signing key is a folder: remove it (a new key is made on first use)"


# --- one gate for every received file ---------------------------------------------------------------------------


def _older_checkpoint(folder: Path) -> DeepSARSA:
    """A checkpoint of the older layout: model.zip, replay_buffer.pkl and state.pkl, each with its own signature."""
    folder.mkdir()
    model = DeepSARSA("MlpPolicy", make_vec_env(ENV, n_envs=1), buffer_size=100, learning_starts=10, seed=0)
    model.learn(20)
    write_older_checkpoint(model, folder)
    return model


def test_a_file_swapped_right_after_its_signature_is_checked_is_never_read(
    tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The moment an attacker who can write into the folder aims at: each file's signature has just been found valid, and
    the file is replaced (renamed over) by one that runs code. The gate checked the bytes it read, or the file it
    opened (the replay buffer, hashed then rewound), so what it loads is what it checked; reading the path again (as
    the older layout's loader did for its model and its replay buffer) would unpickle the attacker's file as signed.
    """
    folder = tmp_path / "checkpoint"
    model = _older_checkpoint(folder)
    payload = pickle.dumps(Exec(writes(marker)))
    checked = []
    verify = gate.verify

    def verify_then_swap(path: str | os.PathLike[str], content: Any = None) -> bool:
        signed = verify(path, content)
        checked.append((Path(path).name, signed))
        swap = Path(path).with_name(".swap")
        swap.write_bytes(payload)
        os.replace(swap, path)
        return signed

    monkeypatch.setattr(gate, "verify", verify_then_swap)
    loaded = load_checkpoint(folder)
    assert sorted(checked) == [("model.zip", True), ("replay_buffer.pkl", True), (STATE_FILE, True)]
    assert not marker.exists()
    assert loaded.replay_buffer is not None and model.replay_buffer is not None
    assert loaded.num_timesteps == model.num_timesteps and loaded.replay_buffer.pos == model.replay_buffer.pos
    monkeypatch.undo()  # the folder now holds the attacker's files: loaded again, they are refused, and run nothing
    with pytest.raises(ValueError, match=r"model.zip is not a model saved by SB3"):
        load_checkpoint(folder)
    assert not marker.exists()


def test_a_fifo_as_a_received_yml_or_vecnormalize_is_refused_without_waiting(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "config.yml")
    with pytest.raises(ValueError, match=r"config.yml is a FIFO \(named pipe\), not a regular file: refused as a yml"):
        load_yml(tmp_path / "config.yml")
    os.mkfifo(tmp_path / "vecnormalize.pkl")
    with pytest.raises(ValueError, match=r"vecnormalize.pkl is a FIFO \(named pipe\), not a regular file"):
        load_vecnormalize(tmp_path / "vecnormalize.pkl", make_vec_env(ENV, n_envs=1))


PACKAGE = Path(zoo.__file__).parent.parent
#: calls that open or read a file, check a signature or unpickle: in the package, only the gate makes them
READS = {
    "open", "io.open", "os.open", "os.fdopen", "verify", "gate.verify", "pickle.load", "pickle.loads", "pickle.Unpickler",
    "pickle._Unpickler", "cloudpickle.load", "cloudpickle.loads", "RestrictedUnpickler", "restricted_load",
    "restricted_loads", "np.load", "numpy.load", "json.load", "yaml.load", "yaml.safe_load", "yaml.unsafe_load",
    "th.load", "torch.load", "zipfile.ZipFile", "shutil.copy", "shutil.copyfile",
}  # fmt: skip
#: methods that read a file
READING_METHODS = {"read_bytes", "read_text"}
#: what calls READS outside the gate, and why none of it reads a file from elsewhere: (module, function, call) -> why
ALLOWED_READS = {
    ("deep_sarsa/atomic.py", "_fsync_folder", "os.open"): "a folder opened to flush it",
    ("deep_sarsa/atomic.py", "atomic_path", "open"): "the temporary file just written, opened to flush it",
    ("deep_sarsa/checkpoint.py", "_fsync_and_describe", "open"): "a checkpoint file just written: its size and hash",
    ("deep_sarsa/checkpoint.py", "_fsync_dir", "os.open"): "a folder opened to flush it",
    ("deep_sarsa/presets.py", "load_presets", ".read_text()"): "the presets files the package ships",
    ("deep_sarsa/presets.py", "load_presets", "yaml.safe_load"): "the presets files the package ships",
    ("deep_sarsa/safe_pickle.py", "RestrictedUnpickler", "class(pickle._Unpickler)"): "its definition",
    ("deep_sarsa/safe_pickle.py", "restricted_load", "RestrictedUnpickler"): "its definition (the gate calls it)",
    ("deep_sarsa/signing.py", "_read_key_file", "os.open"): "the user's key, with OpenSSH's checks of a key file",
    ("deep_sarsa/signing.py", "sign", "open"): "a file this process wrote, hashed to sign it",
    ("deep_sarsa/validation.py", "memory_bytes", "open"): "/proc/meminfo",
}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def _reads_nothing(call: ast.Call, name: str) -> bool:
    """A call of READS that reads no file: a write (its mode or flags say so), or a parse of bytes in memory."""
    if name in ("open", "io.open", "os.fdopen"):
        mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
        return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and bool(set(mode.value) & set("wax+"))
    if name == "os.open":
        flags = {getattr(node, "attr", getattr(node, "id", None)) for node in ast.walk(call.args[1])}
        return bool(flags & {"O_WRONLY", "O_RDWR", "O_CREAT"})
    first = call.args[0] if call.args else None
    return isinstance(first, ast.Call) and _dotted(first.func) in ("io.BytesIO", "named_bytes", "gate.named_bytes")


def _reads_outside_the_gate() -> set[tuple[str, str, str]]:
    """(module, top-level function or class, call) of every call of READS outside the gate."""
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE.parent).as_posix()
        if module == "deep_sarsa/gate.py":
            continue
        for statement in ast.parse(path.read_text()).body:
            scope = getattr(statement, "name", "<module>")
            for node in ast.walk(statement):
                if isinstance(node, ast.ClassDef):
                    bases = [_dotted(base) for base in node.bases]
                    found |= {(module, node.name, f"class({base})") for base in bases if base in READS}
                elif isinstance(node, ast.Call):
                    name = _dotted(node.func)
                    if name in READS and not _reads_nothing(node, name):
                        found.add((module, scope, name))
                    elif isinstance(node.func, ast.Attribute) and node.func.attr in READING_METHODS | {"verify"}:
                        found.add((module, scope, f".{node.func.attr}()"))
    return found


def test_only_the_gate_reads_a_file_checks_a_signature_or_unpickles() -> None:
    """Every other read is listed, with why it reads nothing from elsewhere; a listed one that is gone is stale."""
    found = _reads_outside_the_gate()
    assert not found - ALLOWED_READS.keys(), f"read outside deep_sarsa/gate.py: {sorted(found - ALLOWED_READS.keys())}"
    assert not ALLOWED_READS.keys() - found, f"listed but gone: {sorted(ALLOWED_READS.keys() - found)}"


def _layers() -> list[str]:
    """The package's top-level modules, lowest layer first, as docs/architecture.md lists them."""
    table = (PACKAGE.parent / "docs" / "architecture.md").read_text().split("## The modules, lowest layer first")[1]
    order: list[str] = []
    for row in re.findall(r"^\| (`[^|]*) \|", table.split("\n## ")[0], re.M):
        names = re.findall(r"`([^`]+)`", row)
        if names and "/" not in names[0]:
            order += [name.removesuffix(".py") for name in names if name.endswith(".py")]
    return order


def test_each_module_imports_only_the_layers_below_it() -> None:
    """No call goes back up the layers: the gate sits above signing.py and safe_pickle.py, below its callers."""
    order = _layers()
    assert order.index("safe_pickle") < order.index("signing") < order.index("gate") < order.index("files")
    assert order.index("gate") < order.index("checkpoint")
    modules = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
    assert sorted(order) == modules, "docs/architecture.md must list every top-level module"
    upward = []
    for module in modules:
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        for node in tree.body:  # imports at import time (SaveOnInterrupt's of checkpoint.py, at training, is not one)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deep_sarsa"):
                parts = node.module.split(".")
                targets = [parts[1]] if len(parts) > 1 else [alias.name for alias in node.names]
                upward += [(module, target) for target in targets if order.index(target) >= order.index(module)]
    assert not upward, f"imports of a layer above (or of the same): {upward}"
