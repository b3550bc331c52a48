"""The ``deep-sarsa`` command: each subcommand on a tiny run, and its errors with their exit codes."""

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import disk
import numpy as np
import pytest
import torch as th

from deep_sarsa import DeepSARSA
from deep_sarsa.checkpoint import latest_checkpoint, load_checkpoint
from deep_sarsa.cli.common import json_value
from deep_sarsa.cli.parser import main
from deep_sarsa.presets import preset

TINY = [
    "--timesteps",
    "600",
    "--no-progress-bar",
    "--eval-episodes",
    "2",
    "--hyperparams",
    "learning_starts=100",
    "train_freq=4",
    "gradient_steps=1",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny CartPole run, and what train printed."""
    output = tmp_path_factory.mktemp("cli") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # rich's console writes to the sys.stdout of the moment
        assert main(["train", "CartPole-v1", "--output", str(output), "--next-action", "stored", *TINY]) == 0
    return output, printed.getvalue()


@pytest.fixture
def run(trained: tuple[Path, str]) -> Path:
    return trained[0]


def test_train_writes_the_run_folder(run: Path) -> None:
    assert (run / "model.zip").exists() and (run / "learning_curve.png").stat().st_size > 1000
    assert list((run / "monitor").glob("*.monitor.csv")) and (run / "eval" / "evaluations.npz").exists()


def test_run_json_stores_json_values_not_reprs(run: Path) -> None:
    settings = json.loads((run / "run.json").read_text())
    assert settings["env_id"] == "CartPole-v1" and settings["timesteps"] == 600
    hyperparameters = settings["hyperparameters"]
    assert hyperparameters["next_action"] == "stored"  # was "'stored'"
    entry = preset("CartPole-v1").hyperparameters
    assert hyperparameters["learning_rate"] == entry["learning_rate"]  # the package's preset, then overrides
    assert hyperparameters["train_freq"] == 4 and hyperparameters["policy_kwargs"] == entry["policy_kwargs"]


def test_train_with_a_variant_starts_from_its_own_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # CartPole's preset uses "sampled"; "expected" has a preset of its own (deep_sarsa_expected.yml), "stored" none
    tuned = preset("CartPole-v1", next_action="expected").hyperparameters
    assert tuned["learning_rate"] != preset("CartPole-v1").hyperparameters["learning_rate"]
    assert main(["train", "CartPole-v1", "--output", str(tmp_path / "run"), "--next-action", "expected", *TINY]) == 0
    hyperparameters = json.loads((tmp_path / "run" / "run.json").read_text())["hyperparameters"]
    assert hyperparameters["next_action"] == "expected" and hyperparameters["train_freq"] == 4  # --hyperparams last
    for key in ("learning_rate", "batch_size", "target_update_interval", "exploration_fraction", "gamma"):
        assert hyperparameters[key] == tuned[key], key
    assert "no preset tuned" not in capsys.readouterr().err
    # without a preset of its own, the variant runs with the task preset's hyperparameters, and says so
    assert main(["train", "CartPole-v1", "--output", str(tmp_path / "stored"), "--next-action", "stored", *TINY]) == 0
    assert "no preset tuned for next_action=stored on CartPole-v1" in " ".join(capsys.readouterr().err.split())


def test_json_value_turns_tuples_into_lists() -> None:
    assert json_value({"target_update_interval": (5, "episode"), "x": [(1, 2)]}) == {
        "target_update_interval": [5, "episode"],
        "x": [[1, 2]],
    }
    assert json_value(int) == "<class 'int'>"  # no JSON type: its repr


def test_the_summary_table_has_no_empty_header_row(trained: tuple[Path, str]) -> None:
    lines = [line for line in trained[1].splitlines() if line.strip()]
    title = next(i for i, line in enumerate(lines) if "DeepSARSA on CartPole-v1" in line)
    top, first = lines[title + 1], lines[title + 2]
    assert top.startswith("┌") and "next_action" in first and "stored" in first  # the first row holds data
    assert not any(re.fullmatch(r"[│┃]\s*[│┃]\s*[│┃]", line.strip()) for line in lines)  # no row of blank cells
    assert "best evaluation" in trained[1]


def test_the_best_model_is_kept_and_is_what_a_run_folder_means(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with np.load(run / "eval" / "evaluations.npz") as data:
        means, timesteps = data["results"].mean(axis=1), data["timesteps"]
    assert len(timesteps) == 10  # every 60 of the 600 steps
    best = DeepSARSA.load(run / "best_model.zip")
    assert best.num_timesteps == timesteps[int(np.argmax(means))]  # saved at its first best evaluation
    assert main(["evaluate", str(run), "--episodes", "1", "--json"]) == 0  # a folder: was "Is a directory"
    assert json.loads(capsys.readouterr().out)["model"] == str(run / "best_model.zip")


def test_a_folder_without_a_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tmp_path)]) == 2
    assert f"{tmp_path} is a folder without best_model.zip or model.zip" in capsys.readouterr().err


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    texts = []
    for command in ([], ["train"], ["evaluate"], ["enjoy"], ["plot"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        texts.append(capsys.readouterr().out)
    for text in texts:
        assert text.startswith("usage: deep-sarsa")
        assert "``" not in text and ":param" not in text and ":func:" not in text and ":class:" not in text
    assert "deep-sarsa train --resume" in texts[0] and "Exit codes" in texts[0]


def test_a_used_run_folder_is_refused_unless_force(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "again"
    shutil.copytree(run, output)
    (output / "checkpoint").mkdir(exist_ok=True)
    (output / "checkpoint" / "old.zip").write_bytes(b"old")
    assert main(["train", "CartPole-v1", "--output", str(output), *TINY]) == 2
    err = capsys.readouterr().err
    assert f"{output} already holds a run" in err and "--resume" in err and "--force" in err
    assert (output / "checkpoint" / "old.zip").exists()  # untouched
    assert main(["train", "CartPole-v1", "--output", str(output), "--force", *TINY]) == 0
    assert not (output / "checkpoint" / "old.zip").exists()  # nothing of the old run is mixed in
    assert json.loads((output / "run.json").read_text())["hyperparameters"]["next_action"] == "sampled"
    assert len(list((output / "monitor").glob("*.csv"))) == 1


def test_a_bad_hyperparameter_with_force_leaves_the_old_run(run: Path, tmp_path: Path) -> None:
    output = tmp_path / "kept"
    shutil.copytree(run, output)
    assert main(["train", "CartPole-v1", "--output", str(output), "--force", "--hyperparams", "gamma=2"]) == 2
    assert (output / "model.zip").exists() and (output / "run.json").exists()


def _run_cli(*argv: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "deep_sarsa.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=timeout, env=_environment())


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cliff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CliffWalking run, in a subprocess: its first evaluation used to hang forever (no time limit)."""
    folder = tmp_path_factory.mktemp("cliff")
    argv = ["train", "CliffWalking-v1", "--output", "run", "--timesteps", "400", "--eval-episodes", "1", "--no-progress-bar"]
    result = _run_cli(*argv, "--hyperparams", "learning_starts=100", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder / "run"


def test_cliff_walking_gets_the_presets_time_limit(cliff: Path) -> None:
    assert json.loads((cliff / "run.json").read_text())["env_kwargs"] == {"max_episode_steps": 200}
    with np.load(cliff / "eval" / "evaluations.npz") as data:
        assert len(data["timesteps"]) == 10 and (data["ep_lengths"] <= 200).all()
    monitor = (cliff / "monitor" / "0.monitor.csv").read_text().splitlines()[2:]
    assert monitor and all(int(row.split(",")[1]) <= 200 for row in monitor)  # the Monitor sees the limit


def test_enjoy_and_evaluate_a_toy_text_env(cliff: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # enjoy used to pass predict's array to the env: TypeError: unhashable type: 'numpy.ndarray'
    assert main(["enjoy", str(cliff), "--gif", str(tmp_path / "cliff.gif")]) == 0
    out = capsys.readouterr().out
    assert "episode 1: return" in out and (tmp_path / "cliff.gif").read_bytes()[:3] == b"GIF"
    frames = int(re.search(r"recorded (\d+) frames", out).group(1))  # type: ignore[union-attr]
    assert 13 <= frames <= 200  # ends at the goal or at the preset's time limit
    assert main(["evaluate", str(cliff / "model.zip"), "--episodes", "2", "--json"]) == 0
    assert all(length <= 200 for length in json.loads(capsys.readouterr().out)["lengths"])
    # elsewhere, without its run.json: --env brings the preset's time limit too
    shutil.copy(cliff / "model.zip", tmp_path / "model.zip")
    assert main(["evaluate", str(tmp_path / "model.zip"), "--env", "CliffWalking-v1", "--episodes", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lengths"][0] <= 200


def _taxi_rows_are_masked(returns: list[float], lengths: list[int]) -> bool:
    # Taxi pays -1 a step, +20 for a delivery (which ends the episode) and -10 for an illegal pick-up or
    # drop-off: without illegal actions, return + length is 0 (no delivery) or 21
    return all(round(r + n) in (0, 21) for r, n in zip(returns, lengths, strict=True))


def test_taxi_is_masked_in_training_and_evaluation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "taxi"
    argv = ["train", "Taxi-v4", "--output", str(output), "--timesteps", "1200", "--eval-episodes", "1", "--no-progress-bar"]
    assert main([*argv, "--hyperparams", "learning_starts=100"]) == 0
    assert json.loads((output / "run.json").read_text())["env_wrapper"] == "deep_sarsa.masking.ToyTextActionMasker"
    rows = [row.split(",") for row in (output / "monitor" / "0.monitor.csv").read_text().splitlines()[2:]]
    assert len(rows) >= 5  # ε is near 1 here: unmasked, illegal actions would be taken in every episode
    assert _taxi_rows_are_masked([float(r[0]) for r in rows], [int(r[1]) for r in rows])
    with np.load(output / "eval" / "evaluations.npz") as data:
        assert _taxi_rows_are_masked(list(data["results"].ravel()), list(data["ep_lengths"].ravel()))
    capsys.readouterr()
    assert main(["evaluate", str(output), "--episodes", "3", "--stochastic", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert _taxi_rows_are_masked(summary["returns"], summary["lengths"])
    assert main(["enjoy", str(output), "--gif", str(tmp_path / "taxi.gif")]) == 0  # masked, and an int action
    out = capsys.readouterr().out
    episode_return = float(re.search(r"episode 1: return (-?[\d.]+)", out).group(1))  # type: ignore[union-attr]
    frames = int(re.search(r"recorded (\d+) frames", out).group(1))  # type: ignore[union-attr]
    assert _taxi_rows_are_masked([episode_return], [frames])  # one frame per step


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


def test_periodic_checkpoints_are_exact_and_know_their_env(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generation = latest_checkpoint(run / "checkpoint")
    assert generation is not None
    assert {"model.zip", "replay_buffer.pkl", "state.pkl", "manifest.json"} <= {f.name for f in generation.iterdir()}
    model = load_checkpoint(run / "checkpoint")  # model, replay buffer, envs and generators: resumable
    assert model.num_timesteps == 600 and model.replay_buffer.size() == 600  # type: ignore[union-attr]
    # a checkpoint folder, or its model file, finds the env in the run's run.json (no --env)
    for path in (run / "checkpoint", generation / "model.zip"):
        assert main(["evaluate", str(path), "--episodes", "1", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["env_id"] == "CartPole-v1"


#: the run the interrupt tests stop and resume: 10 evaluations (every 200 steps) and 5 checkpoints planned
LONGER = ["train", "CartPole-v1", "--output", "run", "--timesteps", "2000", *TINY[2:]]


def _interrupted(
    folder: Path, signum: int, ready: Callable[[Path], bool], delay: float = 0.0
) -> subprocess.CompletedProcess[str]:
    """Start `deep-sarsa train`, send ``signum`` ``delay`` s after ``ready(run folder)`` says it is training; its result."""
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "deep-sarsa"), *LONGER],
        cwd=folder,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready(folder / "run"):
            assert process.poll() is None and time.monotonic() < deadline, "training ended or never started"
            time.sleep(0.02)
        time.sleep(delay)
        process.send_signal(signum)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _monitor_rows(run: Path) -> list[list[str]]:
    return [row.split(",") for row in (run / "monitor" / "0.monitor.csv").read_text().splitlines()[2:]]


def _has_episodes(run: Path) -> bool:
    monitor = run / "monitor" / "0.monitor.csv"
    return monitor.exists() and len(monitor.read_text().splitlines()) >= 3  # a finished episode: training runs


def _has_evaluations(run: Path) -> bool:
    return (run / "eval" / "evaluations.npz").exists()


@pytest.mark.parametrize("signum, code, ready", [(signal.SIGINT, 130, _has_episodes), (signal.SIGTERM, 143, _has_evaluations)])
def test_a_signal_writes_a_checkpoint_and_resume_finishes_the_run(
    tmp_path: Path, reference: Path, signum: int, code: int, ready: Callable[[Path], bool]
) -> None:
    result = _interrupted(tmp_path, signum, ready)
    name = signal.Signals(signum).name
    assert result.returncode == code, result.stderr
    match = re.search(
        rf"{name} at step (\d+) of 2000: checkpoint saved in (\S+); continue with: deep-sarsa train --resume run",
        result.stderr,
    )
    assert match, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run" / "model.zip").exists()
    step, checkpoint = int(match.group(1)), tmp_path / match.group(2)
    assert (
        0 < step < 3000 and checkpoint.parent == tmp_path / "run" / "checkpoint" and checkpoint.name.endswith(f"step-{step}")
    )
    before = _monitor_rows(tmp_path / "run")
    assert before and sum(int(length) for _, length, _ in before) <= step

    resumed = _run_cli("train", "--resume", "run", "--no-progress-bar", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming run at step {step} of 2000" in resumed.stdout
    after = _check_completed(tmp_path / "run", reference)
    assert after[: len(before)] == before and len(after) > len(before)  # one log: both parts' episodes


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run of the interrupt tests, uninterrupted."""
    folder = tmp_path_factory.mktemp("reference")
    result = _run_cli(*LONGER, cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder / "run"


def _check_completed(run: Path, reference: Path) -> list[list[str]]:
    """
    The run has its planned steps, the uninterrupted run's parameters, its evaluations on schedule
    and with the same results, every step once in its monitor log; the log.
    """
    model, expected = DeepSARSA.load(run / "model.zip"), DeepSARSA.load(reference / "model.zip")
    assert model.num_timesteps == 2000  # the planned steps
    for name, tensor in expected.policy.state_dict().items():
        assert th.equal(model.policy.state_dict()[name], tensor), name  # bit for bit
    rows = _monitor_rows(run)
    assert 2000 - 500 < sum(int(length) for _, length, _ in rows) <= 2000  # every step once (the last episode runs on)
    assert [row[:2] for row in rows] == [row[:2] for row in _monitor_rows(reference)]  # the same episodes
    with np.load(run / "eval" / "evaluations.npz") as data, np.load(reference / "eval" / "evaluations.npz") as uninterrupted:
        assert list(data["timesteps"]) == list(range(200, 2001, 200))  # the evaluation log goes on, on schedule
        assert np.array_equal(data["results"], uninterrupted["results"])
    return rows


def _has_a_checkpoint(run: Path) -> bool:
    return (run / "checkpoint").is_dir() and latest_checkpoint(run / "checkpoint") is not None


def test_after_sigkill_resume_goes_on_from_the_newest_periodic_checkpoint(tmp_path: Path, reference: Path) -> None:
    # killed at a random moment after the first periodic checkpoint (step 400): evaluations, episodes
    # and maybe a checkpoint after it are lost or redone, never doubled
    delay = float(np.random.default_rng().uniform(0, 0.5))  # the run has 1600 steps and 8 evaluations to go
    result = _interrupted(tmp_path, signal.SIGKILL, _has_a_checkpoint, delay)
    assert result.returncode == -signal.SIGKILL, f"delay {delay:.2f} s: {result.stderr}"
    resumed = _run_cli("train", "--resume", "run", "--no-progress-bar", cwd=tmp_path)
    assert resumed.returncode == 0, f"delay {delay:.2f} s: {resumed.stderr}"
    assert re.search(r"resuming run at step (400|800|1200|1600) of 2000", resumed.stdout), resumed.stdout
    _check_completed(tmp_path / "run", reference)


def test_resume_refuses_new_settings_and_a_folder_without_a_run(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--resume", str(run), "--timesteps", "900"]) == 2
    assert "--resume continues a run with the settings in its run.json: drop --timesteps" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no run.json there" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--force"]) == 2
    assert "drop --force" in capsys.readouterr().err
    without = tmp_path / "without"
    shutil.copytree(run, without, ignore=shutil.ignore_patterns("checkpoint"))
    assert main(["train", "--resume", str(without)]) == 2
    assert f"the run has no checkpoint to continue from ({without / 'checkpoint'} is missing)" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert main(["train", "CartPole-v1", "--output", str(tmp_path / "a-file"), *TINY]) == 2
    assert "is a file: the run folder must be a folder" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--no-progress-bar"]) == 0  # already complete: nothing to do
    assert "the run is complete (600 of 600 steps)" in capsys.readouterr().out
    assert main(["train"]) == 2
    assert "train needs an ENV_ID, or --resume RUN_DIR" in capsys.readouterr().err


def test_a_run_json_naming_a_foreign_wrapper_module_is_refused_unless_trusted(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # importing a module runs its code: a run folder from elsewhere must not get to choose one
    marker = tmp_path / "imported"
    (tmp_path / "planted_wrappers.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\nfrom gymnasium import Wrapper as Plain\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "foreign"
    shutil.copytree(run, folder)
    settings = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**settings, "env_wrapper": "planted_wrappers.Plain"}))
    assert main(["evaluate", str(folder), "--episodes", "1", "--json"]) == 2
    assert "env_wrapper 'planted_wrappers.Plain' is outside gymnasium, stable_baselines3" in capsys.readouterr().err
    assert not marker.exists()
    assert main(["evaluate", str(folder), "--episodes", "1", "--json", "--trusted"]) == 0
    assert marker.read_text() == "ran"


@pytest.mark.parametrize(
    "env_wrapper, message",
    [
        (["deep_sarsa.masking.NoSuchWrapper"], "cannot be imported"),
        ([{"gymnasium.wrappers.TimeLimit": 5}], "must be {'module.Wrapper': {keyword: value}}"),
        ([7], "env_wrapper must be 'module.Wrapper'"),
        ("TimeLimit", "must be a full import path"),
        ("deep_sarsa.checkpoint.resume", "is not a gymnasium.Wrapper class"),  # a function of an allowed module
    ],
)
def test_a_bad_env_wrapper_names_the_run_file(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], env_wrapper: Any, message: str
) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(run, folder)
    settings = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**settings, "env_wrapper": env_wrapper}))
    assert main(["evaluate", str(folder), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert str(folder / "run.json") in err and message in err


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs: room for a run's first files, not for its checkpoint."""
    with disk.small_disk(tmp_path, "3m") as mount_point:
        yield mount_point


def test_a_full_disk_stops_training_with_one_line_saying_what_is_left(
    small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the first periodic checkpoint (a 1 MB model and a 5 MB replay buffer) does not fit
    assert main(["train", "CartPole-v1", "--output", str(small_disk / "run"), *TINY]) == 1
    err = capsys.readouterr().err
    assert "error: training stopped at step 120:" in err and "[Errno 28]" in err, err
    assert "no checkpoint was written: start again (with --force) once that is fixed" in err
    assert "Traceback" not in err and not (small_disk / "run" / "model.zip").exists()
    assert json.loads((small_disk / "run" / "run.json").read_text())["env_id"] == "CartPole-v1"  # what was written is intact
