"""The benchmark harness runs a (tiny) job, resumes, and reports, so that it does not rot."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import harness


def test_job_report_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.setitem(harness.TASKS, "CartPole-v1", dict(steps=512, eval_freq=256, zoo_dqn=500.0))
    for algorithm in ("dqn", "sarsa-stored"):
        path = harness.run_job(("CartPole-v1", algorithm, 0, 2, tmp_path))
        result = json.loads(path.read_text())
        assert [point[0] for point in result["curve"]] == [256, 512]
        assert result["steps"] == 512 and result["steps_per_second"] > 0
    args = harness.argparse.Namespace(
        tasks=["CartPole-v1"], algorithms=["dqn", "sarsa-stored"], seeds=1, episodes=2, workers=1, shard="1/1", runs=tmp_path
    )
    before = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*/*.json")}
    harness.grid(args)  # everything is done already: nothing reruns
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/*/*.json")} == before
    output = tmp_path / "learning.md"
    harness.report(harness.argparse.Namespace(runs=tmp_path, output=output))
    text = output.read_text()
    assert "| CartPole-v1 | dqn | 1 |" in text and "| CartPole-v1 | sarsa-stored | 1 |" in text
    assert output.with_suffix(".png").stat().st_size > 1000
