"""
A run folder is self-contained, and its checkpoints carry their run's identity (issue #35, items 5 and 6): a resumed
copy writes only inside itself, no write follows a symbolic link out of the folder, and a generation copied under
another name or from another run is refused, naming it.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from stable_baselines3.common.env_util import make_vec_env

import deep_sarsa.checkpoint as checkpoint
from deep_sarsa import DeepSARSA
from deep_sarsa.checkpoint import CheckpointError, CheckpointIdentityError, list_checkpoints, load_checkpoint, save_checkpoint
from deep_sarsa.cli.parser import main
from deep_sarsa.cli.run_folder import MAX_RUN_FILE_BYTES
from deep_sarsa.files import atomic_path
from deep_sarsa.gate import verify
from deep_sarsa.signing import MAX_SIGNATURE_BYTES, sign

SMALL = dict(learning_starts=40, buffer_size=300, batch_size=16, train_freq=4, policy_kwargs=dict(net_arch=[8]))
TINY = [
    "--timesteps",
    "300",
    "--no-progress-bar",
    "--eval-episodes",
    "1",
    "--hyperparams",
    "learning_starts=50",
    "train_freq=4",
    "gradient_steps=1",
    "buffer_size=500",
    "policy_kwargs=dict(net_arch=[8])",
]


def quietly(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


def tiny_run(run: Path, steps: int = 200, run_id: str | None = None) -> DeepSARSA:
    """A model whose Monitor logs are in ``run/monitor``, checkpointed into ``run/checkpoint``, its envs closed."""
    limit = dict(max_episode_steps=20)
    env = make_vec_env("CartPole-v1", n_envs=1, seed=3, monitor_dir=str(run / "monitor"), env_kwargs=limit)
    model = DeepSARSA("MlpPolicy", env, seed=0, **SMALL)  # type: ignore[arg-type]
    model.learn(steps)
    save_checkpoint(model, run / "checkpoint", run_id=run_id)
    env.close()
    return model


def digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


# --- item 5: a run folder is self-contained --------------------------------------------------------


def test_a_resumed_copy_writes_its_own_monitor_log_not_the_originals(tmp_path: Path) -> None:
    original, copy = tmp_path / "original", tmp_path / "copy"
    tiny_run(original)
    shutil.copytree(original, copy)
    before = digests(original)
    log = copy / "monitor" / "0.monitor.csv"
    size = log.stat().st_size
    model = load_checkpoint(copy / "checkpoint")
    model.learn(200, reset_num_timesteps=False)
    model.get_env().close()  # type: ignore[union-attr]
    assert digests(original) == before  # the original's log (and everything else) is byte-identical
    assert log.stat().st_size > size  # the copy's own log grew


def test_state_pkl_keeps_the_monitor_log_relative_to_the_run_folder(tmp_path: Path) -> None:
    tiny_run(tmp_path / "run")
    state = (list_checkpoints(tmp_path / "run" / "checkpoint")[0] / "state.pkl").read_bytes()
    assert b"monitor/0.monitor.csv" in state and str(tmp_path).encode() not in state


def test_a_monitor_log_path_that_leaves_the_run_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    env = make_vec_env("CartPole-v1", n_envs=1, seed=3, monitor_dir=str(elsewhere), env_kwargs=dict(max_episode_steps=20))
    model = DeepSARSA("MlpPolicy", env, seed=0, **SMALL)  # type: ignore[arg-type]
    model.learn(100)
    # as an attacker would craft it: a signed state.pkl whose relative Monitor path is "../elsewhere/0.monitor.csv"
    monkeypatch.setattr(checkpoint, "_inside_lexically", lambda path, folder: True)
    save_checkpoint(model, tmp_path / "run" / "checkpoint")
    env.close()
    assert b"../elsewhere/0.monitor.csv" in (list_checkpoints(tmp_path / "run" / "checkpoint")[0] / "state.pkl").read_bytes()
    log = elsewhere / "0.monitor.csv"
    content = log.read_bytes()
    with pytest.raises(CheckpointError, match=r"state\.pkl: the Monitor log \.\./elsewhere/0\.monitor\.csv leads out of"):
        load_checkpoint(tmp_path / "run" / "checkpoint")
    assert log.read_bytes() == content


def test_a_monitor_folder_linked_out_of_the_copy_is_refused(tmp_path: Path) -> None:
    original, copy = tmp_path / "original", tmp_path / "copy"
    tiny_run(original)
    shutil.copytree(original, copy)
    shutil.rmtree(copy / "monitor")
    (copy / "monitor").symlink_to(original / "monitor")
    before = digests(original)
    with pytest.raises(CheckpointError, match=r"0\.monitor\.csv leads out of the run folder"):
        load_checkpoint(copy / "checkpoint")
    assert digests(original) == before


def test_an_absolute_monitor_log_outside_the_run_folder_is_refused_when_the_run_folder_is_given(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    env = make_vec_env("CartPole-v1", n_envs=1, seed=3, monitor_dir=str(logs), env_kwargs=dict(max_episode_steps=20))
    model = DeepSARSA("MlpPolicy", env, seed=0, **SMALL)  # type: ignore[arg-type]
    model.learn(100)
    save_checkpoint(model, tmp_path / "run" / "checkpoint")
    env.close()
    with pytest.raises(CheckpointError, match="is outside the run folder"):
        load_checkpoint(tmp_path / "run" / "checkpoint", run_folder=tmp_path / "run")
    load_checkpoint(tmp_path / "run" / "checkpoint").get_env().close()  # type: ignore[union-attr]  # the library's logs elsewhere


@pytest.mark.parametrize("name", ["model.zip", "run.json", "monitor"])
def test_a_dangling_link_in_output_is_refused_and_force_removes_it_unfollowed(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    outside, output = tmp_path / "outside", tmp_path / "run"
    outside.mkdir()
    output.mkdir()
    (output / name).symlink_to(outside / "x")
    assert quietly(["train", "CartPole-v1", "--output", str(output), *TINY]) == 2
    assert f"{output} already holds a run ({name})" in capsys.readouterr().err
    assert (output / name).is_symlink() and not (outside / "x").exists()
    assert quietly(["train", "CartPole-v1", "--output", str(output), "--force", *TINY]) == 0
    assert not (outside / "x").exists() and list(outside.iterdir()) == []
    assert not (output / name).is_symlink() and (output / "model.zip").is_file()


def test_any_entry_makes_the_output_folder_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "run"
    output.mkdir()
    (output / "notes").symlink_to(tmp_path / "nowhere")
    assert quietly(["train", "CartPole-v1", "--output", str(output), *TINY]) == 2
    assert f"{output} is not empty (notes)" in capsys.readouterr().err
    assert quietly(["train", "CartPole-v1", "--output", str(output), "--force", *TINY]) == 2  # a link out is left: refused
    assert "notes is a symbolic link to" in capsys.readouterr().err and not (output / "run.json").exists()


def test_atomic_path_refuses_a_link_out_of_its_folder(tmp_path: Path) -> None:
    folder, outside = tmp_path / "run", tmp_path / "outside"
    folder.mkdir()
    (folder / "run.json").symlink_to(outside)
    with pytest.raises(PermissionError, match="leads out of"), atomic_path(folder / "run.json", folder) as temporary:
        temporary.write_text("{}")
    assert not outside.exists() and (folder / "run.json").is_symlink() and os.listdir(folder) == ["run.json"]
    (folder / "inner.json").write_text("old")
    (folder / "link.json").symlink_to("inner.json")  # a link inside the folder is written through, as before
    with atomic_path(folder / "link.json", folder) as temporary:
        temporary.write_text("new")
    assert (folder / "inner.json").read_text() == "new" and (folder / "link.json").is_symlink()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "run"
    assert quietly(["train", "CartPole-v1", "--output", str(run), *TINY]) == 0
    return run


def test_resume_of_a_copied_run_folder_writes_only_inside_the_copy(cli_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(cli_run, copy)
    before = digests(cli_run)
    run = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**run, "timesteps": 400}))  # unsigned now: CartPole needs no trust
    log = copy / "monitor" / "0.monitor.csv"
    size = log.stat().st_size
    assert quietly(["train", "--resume", str(copy), "--no-progress-bar"]) == 0
    assert digests(cli_run) == before
    assert log.stat().st_size > size


def test_resume_refuses_a_link_out_of_the_run_folder(
    cli_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy, outside = tmp_path / "copy", tmp_path / "outside"
    shutil.copytree(cli_run, copy)
    (copy / "model.zip").unlink()
    (copy / "model.zip").symlink_to(outside)
    assert quietly(["train", "--resume", str(copy), "--no-progress-bar"]) == 2
    assert f"{copy / 'model.zip'} is a symbolic link to {outside}, outside the run folder" in capsys.readouterr().err
    assert not outside.exists()


# --- item 6: checkpoint generations carry their run's identity --------------------------------------


def test_an_old_generation_copied_under_a_newer_name_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "checkpoint"
    env = make_vec_env("CartPole-v1", n_envs=1, seed=3, monitor_dir=str(tmp_path / "run" / "monitor"))
    model = DeepSARSA("MlpPolicy", env, seed=0, **SMALL)  # type: ignore[arg-type]
    for _ in range(2):
        model.learn(100, reset_num_timesteps=False)
        save_checkpoint(model, folder, keep=2, run_id="a" * 32)
    env.close()
    old = list_checkpoints(folder)[1]
    step = old.name.rsplit("-", 1)[1]
    for forged in (f"gen-00000003-step-{step}", f"gen-00000003-step-{int(step) + 200}"):
        shutil.copytree(old, folder / forged)
        with pytest.raises(CheckpointIdentityError, match=rf"{forged}: its manifest records sequence 1 at step {step}"):
            load_checkpoint(folder)  # never falls back past it
        with pytest.raises(CheckpointIdentityError, match=forged):
            load_checkpoint(folder / forged)
        shutil.rmtree(folder / forged)
    newest = list_checkpoints(folder)[0]  # the right sequence, renamed for another step
    renamed = folder / f"gen-00000002-step-{int(step) + 1000}"
    newest.rename(renamed)
    with pytest.raises(CheckpointIdentityError, match=rf"{renamed.name}: its model is at step \d+, but the folder is named"):
        load_checkpoint(folder)
    renamed.rename(newest)
    load_checkpoint(folder, run_id="a" * 32).get_env().close()  # type: ignore[union-attr]


def test_a_generation_from_another_run_is_refused_naming_the_run_ids(tmp_path: Path) -> None:
    ours, theirs = "1" * 32, "2" * 32
    tiny_run(tmp_path / "ours", run_id=ours)
    other = tiny_run(tmp_path / "theirs", 300, run_id=theirs)
    save_checkpoint(other, tmp_path / "theirs" / "checkpoint", run_id=theirs)  # sequence 2, as ours would be next
    generation = list_checkpoints(tmp_path / "theirs" / "checkpoint")[0]
    shutil.copytree(generation, tmp_path / "ours" / "checkpoint" / generation.name)
    with pytest.raises(CheckpointIdentityError, match=f"another run \\(its run id is {theirs}, this run's is {ours}\\)"):
        load_checkpoint(tmp_path / "ours" / "checkpoint", run_id=ours)


def test_a_checkpoint_without_a_run_id_still_loads(tmp_path: Path) -> None:
    tiny_run(tmp_path / "run")  # as 0.1.0 wrote it: no run id in the manifest
    manifest = json.loads((list_checkpoints(tmp_path / "run" / "checkpoint")[0] / "manifest.json").read_text())
    assert "run_id" not in manifest
    load_checkpoint(tmp_path / "run" / "checkpoint", run_id="f" * 32).get_env().close()  # type: ignore[union-attr]


def test_resume_refuses_another_runs_checkpoint(cli_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = json.loads((cli_run / "run.json").read_text())["run_id"]
    generation = list_checkpoints(cli_run / "checkpoint")[0]
    assert len(run_id) == 32 and json.loads((generation / "manifest.json").read_text())["run_id"] == run_id
    copy = tmp_path / "copy"
    shutil.copytree(cli_run, copy)
    other = tmp_path / "other"
    assert quietly(["train", "CartPole-v1", "--output", str(other), *TINY]) == 0
    other_id = json.loads((other / "run.json").read_text())["run_id"]
    shutil.copy(other / "run.json", copy / "run.json")  # the other run's settings over this run's checkpoint
    shutil.copy(other / "run.json.sig", copy / "run.json.sig")
    assert quietly(["train", "--resume", str(copy), "--no-progress-bar"]) == 2
    err = capsys.readouterr().err
    assert generation.name in err and f"its run id is {run_id}, this run's is {other_id}" in err


# --- the gaps of the gate ---------------------------------------------------------------------------


def test_a_huge_or_linked_signature_signs_nothing_and_is_not_read(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    signed = folder / "file.json"
    signed.write_text("{}")
    sign(signed)
    assert verify(signed)
    good = (folder / "file.json.sig").read_bytes()
    (folder / "file.json.sig").write_bytes(good + b" " * (MAX_SIGNATURE_BYTES + 1))  # a valid line, then a huge tail
    assert not verify(signed)
    (tmp_path / "elsewhere.sig").write_bytes(good)
    (folder / "file.json.sig").unlink()
    (folder / "file.json.sig").symlink_to(tmp_path / "elsewhere.sig")  # a signature out of the folder
    assert not verify(signed)


def test_run_json_is_read_through_the_gate(cli_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(cli_run, copy)
    (copy / "run.json").write_text(" " * (MAX_RUN_FILE_BYTES + 1))
    assert quietly(["train", "--resume", str(copy), "--no-progress-bar"]) == 2
    assert f"{copy / 'run.json'} is {MAX_RUN_FILE_BYTES + 1} bytes, more than a run file may be" in capsys.readouterr().err
    (copy / "run.json").unlink()
    shutil.copy(cli_run / "run.json", tmp_path / "elsewhere.json")
    (copy / "run.json").symlink_to(tmp_path / "elsewhere.json")  # settings from out of the folder
    assert quietly(["evaluate", str(copy), "--episodes", "1"]) == 2
    assert f"{copy / 'run.json'} leads out of {copy}" in capsys.readouterr().err


def test_a_best_model_linked_out_of_the_run_folder_is_refused(
    cli_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy, outside = tmp_path / "copy", tmp_path / "outside.zip"
    shutil.copytree(cli_run, copy)
    shutil.copy(copy / "model.zip", outside)
    (copy / "best_model.zip").unlink()
    (copy / "best_model.zip").symlink_to(outside)
    assert quietly(["evaluate", str(copy), "--episodes", "1"]) == 2
    assert f"{copy / 'best_model.zip'} leads out of {copy} (a symbolic link to {outside})" in capsys.readouterr().err
