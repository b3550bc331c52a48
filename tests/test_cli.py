"""The ``deep-sarsa`` command: each subcommand on a tiny run, and its errors with their exit codes."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deep_sarsa import DeepSARSA
from deep_sarsa.cli import main

TINY = [
    "--timesteps",
    "600",
    "--no-progress-bar",
    "--eval-episodes",
    "2",
    "--hyperparams",
    "learning_starts=100",
    "train_freq=4",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "CartPole-v1", "--output", str(output), "--next-action", "stored", *TINY]) == 0
    return output


def test_train_writes_the_run_folder(run: Path) -> None:
    assert (run / "model.zip").exists() and (run / "learning_curve.png").stat().st_size > 1000
    settings = json.loads((run / "run.json").read_text())
    assert settings["env_id"] == "CartPole-v1" and settings["hyperparameters"]["next_action"] == "'stored'"
    assert settings["hyperparameters"]["learning_rate"] == "0.0023"  # rl-zoo's preset, then overrides
    assert list((run / "monitor").glob("*.monitor.csv")) and (run / "eval" / "evaluations.npz").exists()
    assert list((run / "checkpoints").glob("*.zip"))


def test_evaluate_json(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(run / "model.zip"), "--episodes", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["env_id"] == "CartPole-v1" and len(summary["returns"]) == 3
    assert summary["mean_return"] == pytest.approx(sum(summary["returns"]) / 3)


def test_evaluate_table_and_plot(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(run / "model.zip"), "--episodes", "2"]) == 0
    assert "mean return" in capsys.readouterr().out
    assert main(["plot", str(run), str(run), "--output", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_enjoy_records_a_gif(run: Path, tmp_path: Path) -> None:
    assert main(["enjoy", str(run / "model.zip"), "--gif", str(tmp_path / "agent.gif")]) == 0
    assert (tmp_path / "agent.gif").read_bytes()[:3] == b"GIF"


def test_enjoy_records_an_mp4_with_one_frame_per_step(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import imageio.v2 as imageio  # the dev extra installs the video extra

    video = tmp_path / "agent.mp4"
    assert main(["enjoy", str(run / "model.zip"), "--record", str(video), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    # CartPole pays 1 per step: the returns are the episode lengths, one frame per step
    steps = sum(int(float(value)) for value in re.findall(r"episode \d: return ([\d.]+)", out))
    assert steps > 0 and f"recorded {steps} frames to" in out
    reader = imageio.get_reader(video, format="FFMPEG")
    try:
        assert reader.count_frames() == steps  # type: ignore[attr-defined]  # ffmpeg decodes and counts them
        assert reader.get_meta_data()["fps"] == 50  # CartPole's render_fps
        first = reader.get_data(0)
    finally:
        reader.close()
    assert first.shape == (400, 600, 3) and first.std() > 0  # CartPole's picture, not a blank one


def test_interrupted_recording_leaves_no_video_behind(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    original = DeepSARSA.predict

    def interrupted_predict(self: DeepSARSA, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DeepSARSA, "predict", interrupted_predict)
    assert main(["enjoy", str(run / "model.zip"), "--record", str(tmp_path / "agent.mp4")]) == 130
    assert calls == 5
    assert list(tmp_path.iterdir()) == []  # neither the video nor its partial file


def test_enjoy_gif_and_record_are_mutually_exclusive(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["enjoy", str(run / "model.zip"), "--gif", str(tmp_path / "a.gif"), "--record", str(tmp_path / "a.mp4")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "a.gif").exists() and not (tmp_path / "a.mp4").exists()


@pytest.mark.parametrize(
    "name, message",
    [("agent.avi", "must end in .mp4"), ("missing/agent.mp4", "does not exist")],
)
def test_record_to_a_bad_path_exits_2(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, message: str
) -> None:
    assert main(["enjoy", str(run / "model.zip"), "--record", str(tmp_path / name)]) == 2
    assert message in capsys.readouterr().err


def test_record_without_the_video_extra_exits_1(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # makes `import imageio_ffmpeg` fail
    assert main(["enjoy", str(run / "model.zip"), "--record", str(tmp_path / "agent.mp4")]) == 1
    assert "pip install 'deep-sarsa[video]'" in capsys.readouterr().err
    assert not (tmp_path / "agent.mp4").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "CartPol-v1"], "env='CartPol-v1' is not an environment"),
        (["train", "CartPole-v1", "--hyperparams", "gama=0.9"], "unknown hyperparameter 'gama'; valid ones: .*gamma"),
        (["train", "CartPole-v1", "--hyperparams", "gamma"], "key=value"),
        (["train", "CartPole-v1", "--hyperparams", "gamma=2"], r"gamma must be in \[0, 1\]"),
        (["evaluate", "missing.zip"], "no such model file"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_model_without_run_json_needs_env(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(run / "model.zip", tmp_path / "model.zip")
    assert main(["evaluate", str(tmp_path / "model.zip")]) == 2
    assert "pass --env" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "model.zip"), "--env", "CartPole-v1", "--episodes", "1", "--json"]) == 0


def test_unreadable_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.zip").write_text("not a zip")
    assert main(["evaluate", str(tmp_path / "bad.zip"), "--env", "CartPole-v1"]) == 2
    assert "is not a model saved by SB3" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    executable = Path(sys.executable).parent / "deep-sarsa"  # installed beside this Python
    assert executable.exists()
    out = subprocess.run([executable, "--help"], capture_output=True, text=True, check=True).stdout
    assert "train" in out and "evaluate" in out and "enjoy" in out and "plot" in out
    assert subprocess.run([executable, "train"], capture_output=True, text=True).returncode == 2  # argparse usage


def test_a_non_literal_dict_value_names_its_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "CartPole-v1", "--hyperparams", "replay_buffer_kwargs=dict(x=foo)"]) == 2
    assert "replay_buffer_kwargs must be a literal 'dict(key=value, ...)'" in capsys.readouterr().err
