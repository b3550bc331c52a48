"""
Hostile inputs (issue #35): builds each crafted file of the issue's table in a temporary folder, loads it in a fresh
subprocess whose address space is capped at 12 GiB (``RLIMIT_AS``), and prints a markdown table of the outcome, the
seconds of the load itself and of the whole process, and the peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` in a
process that runs only that load); the process's figures include starting Python and importing torch and SB3.

    python benchmarks/hostile_inputs.py --output benchmarks/results/hostile_inputs.md   # the committed results
"""

import argparse
import base64
import io
import json
import os
import pathlib
import pickle
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable

CONFIG = "DEEP_SARSA_CONFIG_DIR"  # deep_sarsa.signing.CONFIG_DIR_VARIABLE: the signing key of these runs, not the user's
GIB, CAP = 2**30, 12 * 2**30  # the address-space cap of each load
BYTEARRAY_CALL = b"\x80\x04cbuiltins\nbytearray\n\x8a\x05\x00\x00\x00\x80\x02\x85R."  # 32 bytes: bytearray(10 GiB)


def _rewrite(folder: pathlib.Path, name: str, change: Callable[[dict], None], **members: bytes) -> pathlib.Path:
    with zipfile.ZipFile(folder / "good.zip") as archive:
        entries = {entry: archive.read(entry) for entry in archive.namelist()}
    data = json.loads(entries["data"])
    change(data)
    entries["data"] = json.dumps(data).encode()
    entries.update({key.replace("__", "."): value for key, value in members.items()})
    with zipfile.ZipFile(folder / name, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry, content in entries.items():
            archive.writestr(entry, content)
    return folder / name


def _serialized(value: object) -> dict[str, str]:
    return {":type:": "", ":serialized:": base64.b64encode(__import__("cloudpickle").dumps(value)).decode()}


def _buffer(folder: pathlib.Path, name: str, change: Callable[[object], None]) -> pathlib.Path:
    with open(folder / "good.pkl", "rb") as file:
        buffer = pickle.load(file)
    change(buffer)
    (folder / name).write_bytes(pickle.dumps(buffer))
    return folder / name


def _run(folder: pathlib.Path, run_id: str, steps: int = 200, keep: int = 1) -> None:
    """A tiny run in ``folder``: its Monitor log in ``monitor/``, checkpointed (``run_id``) into ``checkpoint/``."""
    from stable_baselines3.common.env_util import make_vec_env

    from deep_sarsa import DeepSARSA
    from deep_sarsa.checkpoint import save_checkpoint

    env = make_vec_env("CartPole-v1", n_envs=1, seed=3, monitor_dir=str(folder / "monitor"))
    model = DeepSARSA("MlpPolicy", env, buffer_size=300, learning_starts=40, batch_size=8, seed=0)
    for _ in range(keep):
        model.learn(steps, reset_num_timesteps=False)
        save_checkpoint(model, folder / "checkpoint", keep=keep, run_id=run_id)
    env.close()


def _files(folder: str) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for path in sorted(pathlib.Path(folder).rglob("*")) if path.is_file()}


def resume_copy() -> str:
    """(In the worker) resume ``copy``, a copy of ``original``: the outcome, and whether the original was touched."""
    from deep_sarsa.checkpoint import load_checkpoint

    before, log = _files("original"), pathlib.Path("copy/monitor/0.monitor.csv")
    size = log.stat().st_size
    model = load_checkpoint("copy/checkpoint")
    model.learn(200, reset_num_timesteps=False)
    model.get_env().close()  # type: ignore[union-attr]
    touched = "TOUCHED" if _files("original") != before else "untouched"
    return f"resumed: the copy's log grew by {log.stat().st_size - size} bytes; the original's files {touched}"


def train_into_links() -> str:
    """(In the worker) ``train --output links``, ``links`` holding dangling links out of it: its error, what was written."""
    from contextlib import redirect_stderr

    from deep_sarsa.cli.parser import main

    error, status = io.StringIO(), None
    with redirect_stderr(error):
        try:
            status = main(["train", "CartPole-v1", "--output", "links", "--timesteps", "100", "--no-progress-bar"])
        except SystemExit as exit:
            status = exit.code  # type: ignore[assignment]
    written = sorted(path.name for path in pathlib.Path("outside").iterdir())
    return f"exit {status}, written outside the folder: {written or 'nothing'}; {error.getvalue().strip()}"


def build(folder: pathlib.Path) -> list[tuple[str, str]]:
    """Write every crafted input into ``folder``; return (row label, Python statement that loads it)."""
    import numpy as np
    from gymnasium import spaces

    from deep_sarsa import DeepSARSA

    model = DeepSARSA("MlpPolicy", "CartPole-v1", buffer_size=200, learning_starts=20, batch_size=8, seed=0)
    model.learn(60)
    model.save(folder / "good.zip")
    model.save_replay_buffer(folder / "good.pkl")
    (folder / "run.json").write_text(json.dumps({"env_id": "CartPole-v1"}))
    load, buffer = "DeepSARSA.load(P)", "DeepSARSA.load(G).load_replay_buffer(P)"
    (folder / "bytearray.pkl").write_bytes(BYTEARRAY_CALL)
    extra = {":type:": "", ":serialized:": base64.b64encode(BYTEARRAY_CALL).decode()}
    _rewrite(folder, "unknown_key.zip", lambda data: data.update(extra=extra))
    _rewrite(folder, "net_arch.zip", lambda data: data.update(policy_kwargs={"net_arch": [30000, 30000, 30000]}))
    _rewrite(folder, "actions.zip", lambda data: data.update(action_space=_serialized(spaces.Discrete(10**9))))
    box = spaces.Box(-1, 1, (4,))
    box._shape = (10**9,)
    _rewrite(folder, "observations.zip", lambda data: data.update(observation_space=_serialized(box)))
    bomb = _rewrite(folder, "bomb.zip", lambda data: None)
    with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED) as zipped, zipped.open("extra.pth", "w", force_zip64=True) as entry:
        for _ in range(4096):
            entry.write(bytes(2**20))
    for path in ("zero/gen-00000001-step-64", "fifo/gen-00000001-step-64", "z", "npz/eval", "links", "outside"):
        (folder / path).mkdir(parents=True)
    (folder / "zero/gen-00000001-step-64/manifest.json").symlink_to("/dev/zero")
    os.mkfifo(folder / "fifo/gen-00000001-step-64/manifest.json")
    (folder / "z" / "model.zip").symlink_to("/dev/zero")
    (folder / "z" / "run.json").write_text((folder / "run.json").read_text())
    header = io.BytesIO()  # an .npy header declaring 2**31 x 1 float64 (16 GiB), followed by 64 bytes
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (2 * GIB, 1)})
    with zipfile.ZipFile(folder / "npz" / "eval" / "evaluations.npz", "w") as archive:
        for member in ("timesteps.npy", "results.npy"):
            archive.writestr(member, header.getvalue() + bytes(64))
    _buffer(folder, "nan.pkl", lambda b: b.rewards.__setitem__((0, 0), np.nan))  # type: ignore[attr-defined]
    _buffer(folder, "pos.pkl", lambda b: setattr(b, "pos", 10**6))
    _buffer(folder, "action.pkl", lambda b: b.actions.__setitem__((0, 0, 0), 7))  # type: ignore[attr-defined]
    _buffer(folder, "size.pkl", lambda b: setattr(b, "buffer_size", 10**6))
    _run(folder / "original", "a" * 32)
    shutil.copytree(folder / "original", folder / "copy")
    for name in ("model.zip", "run.json", "best_model.zip"):
        (folder / "links" / name).symlink_to(folder / "outside" / name)
    _run(folder / "rolled", "b" * 32, 100, keep=2)  # the older generation copied under the next name
    old = sorted((folder / "rolled" / "checkpoint").glob("gen-*"))[0]
    shutil.copytree(old, old.parent / f"gen-00000003-step-{10**6}")
    _run(folder / "ours", "c" * 32)  # sequence 1; theirs has sequence 2, as ours would be next
    _run(folder / "theirs", "d" * 32, 150, keep=2)
    theirs = sorted((folder / "theirs" / "checkpoint").glob("gen-*"))[-1]
    shutil.copytree(theirs, folder / "ours" / "checkpoint" / theirs.name)
    (folder / "keys" / "signing.key").mkdir(parents=True, mode=0o700)
    (folder / "keys").chmod(0o700)
    cli = "sys.exit(main({}))"
    return [
        ("32-byte pickle asking for `bytearray(10 GiB)`, as a replay buffer", buffer.replace("P", "'bytearray.pkl'")),
        ("the same under an unknown key of a model's `data` (`evaluate`)", cli.format("['evaluate', 'unknown_key.zip']")),
        ("100 KB model declaring `net_arch` [30000, 30000, 30000] (`evaluate`)", cli.format("['evaluate', 'net_arch.zip']")),
        ("model declaring `Discrete(10**9)` actions", load.replace("P", "'actions.zip'")),
        ("model declaring a `Box` of 10**9 dimensions", load.replace("P", "'observations.zip'")),
        ("4 MB model zip whose extra `.pth` inflates to 4 GiB", load.replace("P", "'bomb.zip'")),
        ("`/dev/zero` as a checkpoint's `manifest.json`", "load_checkpoint('zero')"),
        ("`/dev/zero` as `model.zip` (`evaluate`)", cli.format("['evaluate', 'z/model.zip']")),
        ("a FIFO as a checkpoint's `manifest.json`", "load_checkpoint('fifo')"),
        ("`evaluations.npz` declaring 16 GB (`deep-sarsa plot`)", cli.format("['plot', 'npz', '--output', 'c.png']")),
        (
            "`train --hyperparams batch_size=1000000000`",
            cli.format("['train', 'CartPole-v1', '--output', 'bs', '--hyperparams', 'batch_size=1000000000']"),
        ),
        ("replay buffer with NaN rewards", buffer.replace("P", "'nan.pkl'")),
        ("replay buffer with `pos` past its end", buffer.replace("P", "'pos.pkl'")),
        ("replay buffer with an action outside the space", buffer.replace("P", "'action.pkl'")),
        ("replay buffer whose `buffer_size` is unlike its arrays", buffer.replace("P", "'size.pkl'")),
        ("`--resume` of a copied run folder (`load_checkpoint`, `learn`)", "sys.exit(H.resume_copy())"),
        ("`train --output DIR`, DIR holding dangling links `model.zip`, `run.json`, ...", "sys.exit(H.train_into_links())"),
        ("an older signed generation copied under a newer name", "load_checkpoint('rolled/checkpoint')"),
        ("a generation of another run copied in", f"load_checkpoint('ours/checkpoint', run_id='{'c' * 32}')"),
        ("`evaluate --episodes 0`", cli.format("['evaluate', 'good.zip', '--episodes', '0']")),
        ("`evaluate --seed -1`", cli.format("['evaluate', 'good.zip', '--seed', '-1']")),
        (
            "`signing.key` a folder (a signed checkpoint loaded)",
            f"os.environ['{CONFIG}'] = 'keys'; load_checkpoint('original/checkpoint')",
        ),
    ]


WORKER = """
import atexit, os, sys, time
sys.path.insert(0, {here!r})
import hostile_inputs as H
from deep_sarsa import DeepSARSA
from deep_sarsa.checkpoint import load_checkpoint
from deep_sarsa.cli.parser import main
G, start = 'good.zip', time.perf_counter()
atexit.register(lambda: print(f'LOAD {{time.perf_counter() - start:.2f}}'))
try:
    {statement}
except Exception as error:
    print('refused:', type(error).__name__ + ':', ' '.join(str(error).split())[:160])
    sys.exit(3)
print('loaded')
"""


def measure(folder: str, statement: str, timeout: float) -> None:
    """(In a process of its own) run ``statement`` in a capped child; print its seconds, peak RSS and outcome as JSON."""
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", WORKER.format(statement=statement, here=str(pathlib.Path(__file__).resolve().parent))]
    try:
        cap = (CAP, CAP)
        kwargs = dict(cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
        done = subprocess.run(command, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, cap), **kwargs)  # type: ignore[call-overload]
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        load = next((float(line.split()[1]) for line in lines if line.startswith("LOAD ")), None)
        outcome = next((line for line in reversed(lines) if not line.startswith("LOAD ")), "")[:200].replace("|", "/")
    except subprocess.TimeoutExpired:
        load, outcome = None, f"killed after {timeout:.0f} s (hangs)"
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KB on Linux: the child's peak
    print(json.dumps({"seconds": time.perf_counter() - start, "load": load, "peak": peak, "outcome": outcome}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=pathlib.Path, default=None, help="also write the table (markdown) here")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a load is killed as hanging")
    parser.add_argument("--measure", nargs=3, metavar=("FOLDER", "STATEMENT", "TIMEOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure[0], args.measure[1], float(args.measure[2]))
        return
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lscpu if line.startswith("Model name")), "?")
    rows = [
        f"CPU: {cpu} ({os.cpu_count()} cores); Python {platform.python_version()}; each load in a fresh process, 12 GiB cap",
        "",
        "| input | load (s) | process (s) | peak RSS (MB) | outcome |",
        "|---|---:|---:|---:|---|",
    ]
    with tempfile.TemporaryDirectory() as directory:
        folder = pathlib.Path(directory)
        os.environ[CONFIG] = str(folder / "config")
        for label, statement in build(folder):  # each measured in a process of its own
            command = [sys.executable, __file__, "--measure", str(folder), statement, str(args.timeout)]
            result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
            load = "-" if result["load"] is None else f"{result['load']:.2f}"
            rows.append(f"| {label} | {load} | {result['seconds']:.1f} | {result['peak']:.0f} | {result['outcome']} |")
            print(rows[-1], flush=True)
    text = "\n".join(rows) + "\n"
    if args.output is not None:
        kept = args.output.read_text().split("\nCPU: ")[0] + "\n" if args.output.exists() else "# Hostile inputs\n\n"
        args.output.write_text(kept + text)  # the intro written by hand above the CPU line stays
    print(text)


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    main()
