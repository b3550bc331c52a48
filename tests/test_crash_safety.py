"""
The short version of benchmarks/crash_safety.py: SIGKILL at random moments while saving over a
good file (and a full disk, on a tmpfs where one can be mounted), what is left loaded with the
public API. It runs as a subprocess: the benchmark forks its children from a process without
pytest's threads.
"""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def crash_safety(tmp_path: pathlib.Path, *arguments: str) -> dict[str, dict[str, int]]:
    out = tmp_path / "counts.json"
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "crash_safety.py"),
            *arguments,
            "--json",
            str(out),
            "--out",
            str(tmp_path / "report.md"),
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts: dict[str, dict[str, int]] = json.loads(out.read_text())["counts"]
    return counts


def test_sigkill_and_full_disk_during_save_and_save_replay_buffer(tmp_path: pathlib.Path) -> None:
    """
    14 kills (7 during ``save``, 7 during ``save_replay_buffer``), a full disk, 3 threads and 3
    processes saving one path: 0 mixed, 0 unloadable, no save raising.
    """
    counts = crash_safety(tmp_path, "--kinds", "save,buffer", "--kills", "7", "--full-disk", "1", "--saves", "10")
    for kind in ("save", "buffer"):
        kills = counts[f"kill/{kind}/ours"]
        assert sum(kills.values()) == 7
        assert kills["mixed"] == 0 and kills["unloadable"] == 0, (kind, kills)
        assert kills["consistent-old"] + kills["consistent-new"] == 7
        disk = counts.get(f"disk/{kind}/ours")
        if disk is not None:  # a tmpfs was mounted (root): the previous file survives the full disk
            assert disk == {"consistent-old": 1, "consistent-new": 0, "mixed": 0, "unloadable": 0}, (kind, disk)
        for mode in ("threads", "processes"):  # 3 of them x 10 saves on one path, loaded meanwhile
            concurrent = counts[f"{mode}/{kind}/ours"]
            assert concurrent["consistent-old"] + concurrent["consistent-new"] >= 1, (kind, mode, concurrent)
            assert concurrent["mixed"] == concurrent["unloadable"] == concurrent["save_errors"] == 0, (kind, mode, concurrent)
            assert concurrent.get("final_consistent-old", 0) + concurrent.get("final_consistent-new", 0) == 1
    report = (tmp_path / "report.md").read_text()
    assert "| SIGKILL while saving | `save` (DeepSARSA) | 7 |" in report


def test_sigkill_and_full_disk_during_save_checkpoint(tmp_path: pathlib.Path) -> None:
    """6 kills during ``save_checkpoint`` over a good checkpoint (and a full disk): 0 mixed, 0 unloadable."""
    counts = crash_safety(tmp_path, "--kinds", "checkpoint", "--kills", "6", "--full-disk", "1", "--saves", "0")
    kills = counts["kill/checkpoint/ours"]
    assert sum(kills.values()) == 6
    if os.geteuid() == 0:  # root mounts a small tmpfs: the full disk ran and must have kept the old checkpoint
        assert counts["disk/checkpoint/ours"]["consistent-old"] == 1, counts["disk/checkpoint/ours"]
    disk = counts.get("disk/checkpoint/ours", {"mixed": 0, "unloadable": 0})
    assert kills["mixed"] == kills["unloadable"] == disk["mixed"] == disk["unloadable"] == 0, (kills, disk)
