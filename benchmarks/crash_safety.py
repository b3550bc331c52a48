"""
Crash safety: a child process saves new content over a good file or checkpoint (``save``, ``save_replay_buffer``,
``save_checkpoint``) and is SIGKILLed at a random moment, or saves onto a full tmpfs (as root), or several save one path
at once; what is left is loaded with the public API and classified as consistent-old, consistent-new, mixed or
unloadable. Details: docs/reliability.md.

    python benchmarks/crash_safety.py --kills 100 --full-disk 10 --compare-sb3   # the committed results
    python benchmarks/crash_safety.py --kills 7 --kinds save,buffer --json out.json  # the test suite's version
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: forked children never wait on a thread pool

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import json
import pathlib
import platform
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import stable_baselines3
import torch as th
from ablation import cpu_model
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from deep_sarsa import DeepSARSA
from deep_sarsa import checkpoint as checkpoints
from deep_sarsa.files import STALE_AFTER_S, TEMPORARY_PATTERN
from deep_sarsa.signing import CONFIG_DIR_VARIABLE

KINDS = ("save", "buffer", "checkpoint")
OUTCOMES = ("consistent-old", "consistent-new", "mixed", "unloadable")
ROOT = pathlib.Path(__file__).resolve().parents[1]
SETTINGS: dict[str, Any] = dict(
    buffer_size=20_000, learning_starts=100, policy_kwargs=dict(net_arch=[64, 64]), device="cpu", train_freq=4
)


def parameter_hash(model: DeepSARSA) -> str:
    """The networks' parameters (online and target)."""
    items = model.policy.state_dict().items()
    return hashlib.sha256(b"".join(name.encode() + tensor.cpu().numpy().tobytes() for name, tensor in items)).hexdigest()[:16]


def buffer_hash(model: DeepSARSA) -> str:
    """The replay buffer's position and contents."""
    buffer = model.replay_buffer
    assert buffer is not None
    digest = hashlib.sha256(f"{buffer.pos} {buffer.full}".encode())
    for array in (buffer.observations, buffer.next_observations, buffer.actions, buffer.rewards, buffer.dones):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def generators_hash() -> str:
    """The global generators a checkpoint's state restores (NumPy's, PyTorch's, Python's)."""
    digest = hashlib.sha256(repr(np.random.get_state(legacy=False)).encode())
    digest.update(th.get_rng_state().numpy().tobytes())
    digest.update(repr(random.getstate()).encode())
    return digest.hexdigest()[:16]


@dataclasses.dataclass
class Trial:
    kind: str
    writer: str
    outcome: str
    detail: str = ""
    delay_s: float = 0.0
    temporaries_left: int = 0
    temporaries_left_after_next_save: int = 0
    warned: bool = False


class Bench:
    """The old and new contents of each kind, their signatures, and the writers."""

    def __init__(self, work: pathlib.Path) -> None:
        self.work = work
        model = DeepSARSA("MlpPolicy", "CartPole-v1", seed=0, **SETTINGS)
        model.learn(600)
        checkpoints.save_checkpoint(model, work / "sources" / "old" / "checkpoint")
        model.learn(400, reset_num_timesteps=False)
        checkpoints.save_checkpoint(model, work / "sources" / "new" / "checkpoint")
        self.old = self.load_source("old")
        self.new = self.load_source("new")
        self.reader = DeepSARSA("MlpPolicy", "CartPole-v1", seed=1, **SETTINGS)  # loads buffers to compare them
        self.signatures = {which: self.checkpoint_signature(self.source(which)) for which in ("old", "new")}
        for part in ("model", "buffer", "state"):
            if self.signatures["old"][part] == self.signatures["new"][part]:
                raise RuntimeError(f"the old and new checkpoints have the same {part}: the benchmark cannot tell them apart")

    def new_model(self, kind: str) -> DeepSARSA:
        """The new content (a checkpoint's loaded afresh: it restores the new generators)."""
        return self.load_source("new") if kind == "checkpoint" else self.new

    def source(self, which: str) -> pathlib.Path:
        return self.work / "sources" / which / "checkpoint"

    def load_source(self, which: str) -> DeepSARSA:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return checkpoints.load_checkpoint(self.source(which), device="cpu")

    def checkpoint_signature(self, folder: pathlib.Path) -> dict[str, str]:
        model = checkpoints.load_checkpoint(folder, device="cpu")
        return {
            "model": f"{parameter_hash(model)} {model.num_timesteps}",
            "buffer": buffer_hash(model),
            "state": generators_hash(),
        }

    def target(self, kind: str, folder: pathlib.Path) -> pathlib.Path:
        return folder / {"save": "model.zip", "buffer": "replay_buffer.pkl", "checkpoint": "checkpoint"}[kind]

    def writer(self, kind: str, writer: str) -> Callable[[DeepSARSA, pathlib.Path], object]:
        if kind == "checkpoint":
            return lambda model, path: checkpoints.save_checkpoint(model, path)
        if writer == "sb3":  # SB3's own, in place
            return BaseAlgorithm.save if kind == "save" else OffPolicyAlgorithm.save_replay_buffer
        return (
            (lambda model, path: model.save(path)) if kind == "save" else (lambda model, path: model.save_replay_buffer(path))
        )

    def write_old(self, kind: str, folder: pathlib.Path) -> None:
        if kind == "checkpoint":  # the old checkpoint as save_checkpoint laid it out, with whatever lies beside it
            shutil.copytree(self.source("old").parent, folder, symlinks=True)
        else:
            folder.mkdir(parents=True)
            self.writer(kind, "ours")(self.old, self.target(kind, folder))

    def classify(self, kind: str, folder: pathlib.Path) -> tuple[str, str, bool]:
        """:return: the outcome, a detail (the error of an unloadable one), whether loading warned"""
        target = self.target(kind, folder)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                if kind == "save":
                    model = DeepSARSA.load(target, device="cpu")
                    parts = {"model": f"{parameter_hash(model)} {model.num_timesteps}"}
                elif kind == "buffer":
                    self.reader.load_replay_buffer(target)
                    parts = {"buffer": buffer_hash(self.reader)}
                else:
                    parts = self.checkpoint_signature(target)
            except Exception as error:  # what a user would get
                return "unloadable", f"{type(error).__name__}: {' '.join(str(error).split())}", bool(caught)
        warned = any("fall" in str(w.message).lower() or "previous" in str(w.message).lower() for w in caught)
        known = {which: {part: self.signatures[which][part] for part in parts} for which in ("old", "new")}
        for which in ("old", "new"):
            if parts == known[which]:
                return f"consistent-{which}", "", warned
        origin = {
            part: next((w for w in ("old", "new") if value == known[w][part]), "neither") for part, value in parts.items()
        }
        return "mixed", ", ".join(f"{part} {which}" for part, which in origin.items()), warned


def temporaries(folder: pathlib.Path) -> list[pathlib.Path]:
    return [path for path in folder.rglob("*") if TEMPORARY_PATTERN.match(path.name)]


def save_duration(bench: Bench, kind: str, writer: str) -> float:
    """The median time of one save of the new content, in seconds."""
    save = bench.writer(kind, writer)
    model, times = bench.new_model(kind), []
    for index in range(5):
        (folder := bench.work / "timing" / f"{kind}-{writer}-{index}").mkdir(parents=True)
        start = time.perf_counter()
        save(model, bench.target(kind, folder))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


#: the children running now: killed before the work folder is removed
CHILDREN: set[int] = set()


def die_with_parent() -> None:
    """In a forked child: SIGKILL when the parent dies (Linux; elsewhere the save loops check the parent)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def fork(function: Callable[[], int]) -> int:
    """Run ``function`` in a forked child that dies with this process and exits with its return value; the child's pid."""
    if (pid := os.fork()) == 0:
        code = 255
        try:
            die_with_parent()
            code = function()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    CHILDREN.add(pid)
    return pid


def kill_trial(bench: Bench, kind: str, writer: str, folder: pathlib.Path, window_s: float, chance: random.Random) -> Trial:
    """Kill a child saving the new content over the old after a random delay in ``[0, window_s]``; what is left."""
    bench.write_old(kind, folder)
    outcome, detail, _ = bench.classify(kind, folder)
    if outcome != "consistent-old":
        raise RuntimeError(f"{folder}: the old content did not load as itself before the kill ({outcome}: {detail})")
    target = bench.target(kind, folder)
    save = bench.writer(kind, writer)
    read_end, write_end = os.pipe()
    parent = os.getpid()

    def child() -> int:  # save the new content over the old, until killed
        os.close(read_end)
        model = bench.new_model(kind)
        os.write(write_end, b"r")
        while os.getppid() == parent:  # never outlives the benchmark
            save(model, target)
        return 0

    pid = fork(child)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], 120)
    started = bool(ready) and os.read(read_end, 1) == b"r"
    os.close(read_end)
    time.sleep(delay := chance.uniform(0.0, window_s) if started else 0.0)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    CHILDREN.discard(pid)
    if not started:
        raise RuntimeError(f"the saving child for {kind} never started")
    if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
        raise RuntimeError(f"the saving child for {kind} ended by itself (status {status}): see its traceback above")
    outcome, detail, warned = bench.classify(kind, folder)
    left = temporaries(folder)
    trial = Trial(kind, writer, outcome, detail, delay, temporaries_left=len(left), warned=warned)
    if kind != "checkpoint" and writer == "ours" and left:  # once older than STALE_AFTER_S, the next save removes them
        for path in left:
            os.utime(path, (time.time() - 2 * STALE_AFTER_S,) * 2)
        bench.writer(kind, writer)(bench.old, folder / f"other-{target.name}")
        trial.temporaries_left_after_next_save = len(temporaries(folder))
    return trial


def folder_size(folder: pathlib.Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


@contextlib.contextmanager
def tmpfs(mount_point: pathlib.Path, size: int) -> Iterator[bool]:
    """A tmpfs of ``size`` bytes at ``mount_point``; ``False`` where it cannot be mounted (not root)."""
    mount_point.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)]
    mounted = hasattr(os, "geteuid") and os.geteuid() == 0 and subprocess.run(mount, capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


def full_disk_trials(bench: Bench, kind: str, writer: str, trials: int, chance: random.Random) -> list[Trial] | None:
    """Save the new content over the old on a tmpfs filled so that it cannot fit; ``None`` where no tmpfs can be mounted."""
    probe = bench.work / "probe" / f"{kind}-{writer}"
    bench.write_old(kind, probe)
    old_size = folder_size(probe)
    (probe / "n").mkdir()
    bench.writer(kind, writer)(bench.new_model(kind), bench.target(kind, probe / "n"))
    new_size, results, mount_point = folder_size(probe / "n"), [], bench.work / "disk" / f"{kind}-{writer}"
    with tmpfs(mount_point, 2 * (old_size + new_size) + 2**20) as mounted:
        if not mounted:
            return None
        for index in range(trials):
            folder = mount_point / f"trial{index}"
            bench.write_old(kind, folder)
            model, stat, filler = bench.new_model(kind), os.statvfs(mount_point), mount_point / "filler"
            leave = int(chance.uniform(0.0, 1.0) * new_size)
            filler.write_bytes(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))
            try:
                bench.writer(kind, writer)(model, bench.target(kind, folder))
                error = "no error raised"
            except Exception as caught:
                error = f"{type(caught).__name__}: {' '.join(str(caught).split())}"
            outcome, detail, warned = bench.classify(kind, folder)
            results.append(Trial(kind, writer, outcome, f"{error}; {detail}" if detail else error, warned=warned))
            filler.unlink()
            shutil.rmtree(folder)
    return results


@dataclasses.dataclass
class Concurrency:
    kind: str
    writer: str
    mode: str
    saves: int
    save_errors: list[str]
    reads: Counter[str]
    final: str


def concurrent_trial(bench: Bench, kind: str, writer: str, mode: str, workers: int, saves: int) -> Concurrency:
    """``workers`` threads or processes save ``saves`` times each on one path (old and new by turns), loaded meanwhile."""
    folder = bench.work / "concurrent" / f"{kind}-{writer}-{mode}"
    bench.write_old(kind, folder)
    target = bench.target(kind, folder)
    save = bench.writer(kind, writer)
    errors: list[str] = []
    reads: Counter[str] = Counter()

    def work(index: int) -> int:
        for turn in range(saves):
            try:
                save(bench.new if (index + turn) % 2 else bench.old, target)
            except Exception as error:
                errors.append(f"{type(error).__name__}: {' '.join(str(error).split())[:200]}")
        return min(len(errors), 254)

    if mode == "threads":
        threads = [threading.Thread(target=work, args=(index,)) for index in range(workers)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            reads[bench.classify(kind, folder)[0]] += 1
    else:
        running = {fork(functools.partial(work, index)) for index in range(workers)}
        while running:
            reads[bench.classify(kind, folder)[0]] += 1
            for pid in list(running):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    running.discard(pid)
                    CHILDREN.discard(pid)
                    errors += [f"a save raised (in process {pid})"] * (os.WEXITSTATUS(status) if os.WIFEXITED(status) else 255)
    final = bench.classify(kind, folder)[0]
    return Concurrency(kind, writer, mode, workers * saves, errors, reads, final)


def git_revision(path: pathlib.Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args, "--", str(path)], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    try:
        dirty = " (modified)" if git("status", "--porcelain").strip() else ""
        return (git("log", "-1", "--format=%h %s").strip()[:70] or "not committed") + dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(
    trials: list[Trial],
    disk: dict[str, list[Trial] | None],
    concurrency: list[Concurrency],
    args: argparse.Namespace,
    seconds: float,
) -> str:
    labels = {
        ("save", "ours"): "`save` (DeepSARSA)",
        ("save", "sb3"): "`save`, SB3's `BaseAlgorithm.save` (before)",
        ("buffer", "ours"): "`save_replay_buffer` (DeepSARSA)",
        ("buffer", "sb3"): "`save_replay_buffer`, SB3's in-place writer (before)",
        ("checkpoint", "ours"): "`save_checkpoint` over a checkpoint",
    }
    lines = [
        "# Crash safety: SIGKILL and a full disk while saving",
        "",
        f"`python benchmarks/crash_safety.py {' '.join(sys.argv[1:])}` ({seconds:.0f} s; {cpu_model()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, torch {th.__version__}, "
        f"SB3 {stable_baselines3.__version__}; "
        f"deep_sarsa/checkpoint.py at {git_revision(ROOT / 'deep_sarsa' / 'checkpoint.py')}; "
        f"deep_sarsa/files.py at {git_revision(ROOT / 'deep_sarsa' / 'files.py')}).",
        "",
        "A child process saves the new content over the old in a loop and is SIGKILLed after a random delay "
        "(uniform in [0, 1.5 x one save's duration]); what is left is loaded with the public API "
        "(`DeepSARSA.load`, `load_replay_buffer`, `load_checkpoint`) and compared with the old and new contents "
        "(parameter hash and `num_timesteps`, the buffer's position and contents, the restored generators). "
        "Full disk: the new content is saved over the old on a tmpfs filled to leave a random part of the room it needs. "
        "Goal: 0 mixed, 0 unloadable.",
        "",
        "| event | file | trials | consistent-old | consistent-new | mixed | unloadable | notes |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]

    def row(event: str, label: str, group: list[Trial]) -> str:
        counts = Counter(trial.outcome for trial in group)
        notes = []
        if event.startswith("SIGKILL"):
            left = sum(trial.temporaries_left for trial in group)
            if left:
                notes.append(f"{left} temporary files left by the kills")
                after = sum(trial.temporaries_left_after_next_save for trial in group)
                if group[0].kind != "checkpoint" and group[0].writer == "ours":
                    notes.append(f"{after} after the next save (once {STALE_AFTER_S:.0f} s old)")
        else:
            raised = sum(not trial.detail.startswith("no error raised") for trial in group)
            notes.append(f"an error raised in {raised}/{len(group)}")
            if group[0].writer == "sb3":
                notes.append("written in place, so the old file's room is reused and the new one fits here")
        if warned := sum(trial.warned for trial in group):
            notes.append(f"a fallback warning in {warned}")
        cells = " | ".join(str(counts[outcome]) for outcome in OUTCOMES)
        return f"| {event} | {label} | {len(group)} | {cells} | {'; '.join(notes)} |"

    groups: dict[tuple[str, str], list[Trial]] = {}
    for trial in trials:
        groups.setdefault((trial.kind, trial.writer), []).append(trial)
    for key, group in groups.items():
        lines.append(row("SIGKILL while saving", labels[key], group))
    for disk_key, found in disk.items():
        kind, writer = disk_key.split("/")
        not_run = f"| full disk | {labels[(kind, writer)]} | 0 | | | | | not run: no tmpfs could be mounted (needs root) |"
        lines.append(not_run if found is None else row("full disk (tmpfs)", labels[(kind, writer)], found))
    for result in concurrency:
        cells = " | ".join(str(result.reads[outcome]) for outcome in OUTCOMES)
        note = f"{len(result.save_errors)} of the {result.saves} saves raised; the file at the end: {result.final}"
        if result.save_errors:
            note += f" (first: {result.save_errors[0]})"
        event = f"{result.saves // args.saves} {result.mode} x {args.saves} saves on one path, loaded meanwhile"
        lines.append(
            f"| {event} | {labels[(result.kind, result.writer)]} | {sum(result.reads.values())} loads | {cells} | {note} |"
        )
    examples = [trial for trial in [*trials, *(t for found in disk.values() if found for t in found)] if trial.detail]
    if examples:
        what = "What loading found, and the errors the full-disk saves raised (the first 3 of each row and outcome; "
        lines += ["", what + "WORK is the benchmark's temporary folder):", ""]
        shown: Counter[tuple[str, str, str]] = Counter()
        for trial in examples:
            shown[key3 := (trial.kind, trial.writer, trial.outcome)] += 1
            if shown[key3] <= 3:
                detail = trial.detail if len(trial.detail) <= 300 else trial.detail[:297] + "..."
                lines.append(f"- {labels[(trial.kind, trial.writer)]}, {trial.outcome}: {detail}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=100, help="SIGKILLs per kind of file (default 100)")
    parser.add_argument("--full-disk", type=int, default=10, help="full-disk trials per kind (default 10; 0: none)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="a comma-separated subset of save,buffer,checkpoint")
    parser.add_argument("--compare-sb3", action="store_true", help="also measure SB3's own save and save_replay_buffer")
    parser.add_argument("--workers", type=int, default=3, help="threads, then processes, saving one path at once (default 3)")
    parser.add_argument("--saves", type=int, default=50, help="saves by each of them (default 50; 0: no concurrency trials)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, help="write the Markdown report here")
    parser.add_argument("--json", type=pathlib.Path, help="write the counts as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args(argv)
    kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    if set(kinds) - set(KINDS) or not kinds:
        parser.error(f"--kinds must be a comma-separated subset of {','.join(KINDS)}, got {args.kinds!r}")
    if min(args.kills, args.full_disk, args.saves) < 0 or args.workers < 1:
        parser.error("--kills, --full-disk and --saves must be non-negative, --workers positive")
    th.set_num_threads(1)
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))  # SIGTERM: clean up the work folder
    start = time.time()
    work = pathlib.Path(tempfile.mkdtemp(prefix="crash_safety_"))
    os.environ.setdefault(CONFIG_DIR_VARIABLE, str(work / "config"))  # the checkpoints' signing key: not the user's
    chance, trials, concurrency = random.Random(args.seed), list[Trial](), list[Concurrency]()
    disk: dict[str, list[Trial] | None] = {}
    try:
        bench = Bench(work)
        for kind in kinds:
            for writer in ["ours", "sb3"] if args.compare_sb3 and kind != "checkpoint" else ["ours"]:
                window = 1.5 * save_duration(bench, kind, writer)
                for index in range(args.kills):
                    folder = work / "kills" / f"{kind}-{writer}" / f"trial{index}"
                    trials.append(trial := kill_trial(bench, kind, writer, folder, window, chance))
                    moment = f"after {trial.delay_s * 1e3:6.1f} ms"
                    print(f"{kind:10} {writer:4} kill {index + 1:3}/{args.kills} {moment}: {trial.outcome}", flush=True)
                if args.full_disk:
                    disk[f"{kind}/{writer}"] = full_disk_trials(bench, kind, writer, args.full_disk, chance)
                if args.saves and kind != "checkpoint":
                    for mode in ("threads", "processes"):
                        concurrency.append(concurrent_trial(bench, kind, writer, mode, args.workers, args.saves))
                        print(f"{kind:10} {writer:4} {mode}: {dict(concurrency[-1].reads)}", flush=True)
    finally:
        for pid in CHILDREN:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for trial in [*trials, *(trial for found in disk.values() if found for trial in found)]:
        trial.detail = trial.detail.replace(str(work), "WORK")  # the report names files, not this run's folder
    text = report(trials, disk, concurrency, args, time.time() - start)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.json:
        counts: dict[str, dict[str, int]] = {}
        for trial in trials:
            counts.setdefault(f"kill/{trial.kind}/{trial.writer}", dict.fromkeys(OUTCOMES, 0))[trial.outcome] += 1
        for result in concurrency:
            reads = {outcome: result.reads[outcome] for outcome in OUTCOMES}
            counts[f"{result.mode}/{result.kind}/{result.writer}"] = reads | {"save_errors": len(result.save_errors)}
            counts[f"{result.mode}/{result.kind}/{result.writer}"]["final_" + result.final] = 1
        for key, found in disk.items():
            for trial in found or []:
                counts.setdefault(f"disk/{key}", dict.fromkeys(OUTCOMES, 0))[trial.outcome] += 1
        disk_run = {key: found is not None for key, found in disk.items()}
        args.json.write_text(json.dumps({"counts": counts, "disk_run": disk_run}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
