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
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import stable_baselines3
import torch as th
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from throughput import cpu_model, write_output

from deep_sarsa import DeepSARSA
from deep_sarsa import checkpoint as checkpoints
from deep_sarsa.atomic import STALE_AFTER_S, TEMPORARY_PATTERN
from deep_sarsa.signing import CONFIG_DIR_VARIABLE

KINDS = ("save", "buffer", "checkpoint")
OUTCOMES = ("consistent-old", "consistent-new", "mixed", "unloadable")
ROOT = pathlib.Path(__file__).resolve().parents[1]
SETTINGS: dict[str, Any] = dict(buffer_size=20_000, learning_starts=100, policy_kwargs=dict(net_arch=[64, 64]), train_freq=4)
TARGETS = {"save": "model.zip", "buffer": "replay_buffer.pkl", "checkpoint": "checkpoint"}
#: what a load of each kind compares with the old and new contents
PARTS = {"save": ["model"], "buffer": ["buffer"], "checkpoint": ["model", "buffer", "state"]}
LABELS = {
    ("save", "ours"): "`save` (DeepSARSA)",
    ("save", "sb3"): "`save`, SB3's `BaseAlgorithm.save` (before)",
    ("buffer", "ours"): "`save_replay_buffer` (DeepSARSA)",
    ("buffer", "sb3"): "`save_replay_buffer`, SB3's in-place writer (before)",
    ("checkpoint", "ours"): "`save_checkpoint` over a checkpoint",
}
#: the children running now: killed before the work folder is removed
CHILDREN: set[int] = set()


def one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def signature(model: DeepSARSA, parts: Sequence[str]) -> dict[str, str]:
    """A hash of each of ``parts``: "model" (parameters, num_timesteps), "buffer" (position, contents), "state" (the
    global generators that loading a checkpoint restores)."""
    hashes = {}
    for part in parts:
        if part == "model":
            items = model.policy.state_dict().items()
            chunks = [str(model.num_timesteps).encode(), *(name.encode() + t.cpu().numpy().tobytes() for name, t in items)]
        elif part == "buffer":
            buffer = model.replay_buffer
            assert buffer is not None
            arrays = (buffer.observations, buffer.next_observations, buffer.actions, buffer.rewards, buffer.dones)
            chunks = [f"{buffer.pos} {buffer.full}".encode(), *(np.ascontiguousarray(array).tobytes() for array in arrays)]
        else:
            chunks = [repr(np.random.get_state(legacy=False)).encode(), th.get_rng_state().numpy().tobytes()]
            chunks.append(repr(random.getstate()).encode())
        hashes[part] = hashlib.sha256(b"".join(chunks)).hexdigest()[:16]
    return hashes


def writer(kind: str, who: str) -> Callable[[DeepSARSA, pathlib.Path], object]:
    """The save of ``kind``: DeepSARSA's (``who="ours"``) or SB3's own, in place (``"sb3"``)."""
    if kind == "checkpoint":
        return checkpoints.save_checkpoint
    owner = DeepSARSA if who == "ours" else OffPolicyAlgorithm
    return owner.save if kind == "save" else owner.save_replay_buffer


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
    """The old and new contents of each kind and their signatures."""

    def __init__(self, work: pathlib.Path) -> None:
        self.work = work
        model = DeepSARSA("MlpPolicy", "CartPole-v1", seed=0, device="cpu", **SETTINGS)
        model.learn(600)
        checkpoints.save_checkpoint(model, work / "sources" / "old" / "checkpoint")
        model.learn(400, reset_num_timesteps=False)
        checkpoints.save_checkpoint(model, work / "sources" / "new" / "checkpoint")
        self.old, self.new = self.load_source("old"), self.load_source("new")
        self.reader = DeepSARSA("MlpPolicy", "CartPole-v1", seed=1, device="cpu", **SETTINGS)  # loads buffers to compare
        self.signatures = {which: self.load("checkpoint", self.source(which)) for which in ("old", "new")}
        for part in PARTS["checkpoint"]:
            if self.signatures["old"][part] == self.signatures["new"][part]:
                raise RuntimeError(f"the old and new checkpoints have the same {part}: the benchmark cannot tell them apart")

    def source(self, which: str) -> pathlib.Path:
        return self.work / "sources" / which / "checkpoint"

    def load_source(self, which: str) -> DeepSARSA:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return checkpoints.load_checkpoint(self.source(which), device="cpu")

    def new_model(self, kind: str) -> DeepSARSA:
        """The new content (a checkpoint's loaded afresh: it restores the new generators)."""
        return self.load_source("new") if kind == "checkpoint" else self.new

    def write_old(self, kind: str, folder: pathlib.Path) -> None:
        if kind == "checkpoint":  # the old checkpoint as save_checkpoint laid it out, with whatever lies beside it
            shutil.copytree(self.source("old").parent, folder, symlinks=True)
        else:
            folder.mkdir(parents=True)
            writer(kind, "ours")(self.old, folder / TARGETS[kind])

    def load(self, kind: str, target: pathlib.Path) -> dict[str, str]:
        """The signature of what a user loads from ``target``."""
        if kind == "save":
            return signature(DeepSARSA.load(target, device="cpu"), PARTS[kind])
        if kind == "buffer":
            self.reader.load_replay_buffer(target)
            return signature(self.reader, PARTS[kind])
        return signature(checkpoints.load_checkpoint(target, device="cpu"), PARTS[kind])

    def classify(self, kind: str, folder: pathlib.Path) -> tuple[str, str, bool]:
        """:return: the outcome, a detail (the error of an unloadable one, the parts of a mixed one), whether loading warned"""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                found = self.load(kind, folder / TARGETS[kind])
            except Exception as error:  # what a user would get
                return "unloadable", one_line(error), bool(caught)
        warned = any("fall" in str(w.message).lower() or "previous" in str(w.message).lower() for w in caught)
        origin = {
            part: next((which for which in ("old", "new") if value == self.signatures[which][part]), "neither")
            for part, value in found.items()
        }
        for which in ("old", "new"):
            if set(origin.values()) == {which}:
                return f"consistent-{which}", "", warned
        return "mixed", ", ".join(f"{part} {which}" for part, which in origin.items()), warned


def temporaries(folder: pathlib.Path) -> list[pathlib.Path]:
    return [path for path in folder.rglob("*") if TEMPORARY_PATTERN.match(path.name)]


def save_duration(bench: Bench, kind: str, who: str) -> float:
    """The median time of one save of the new content, in seconds."""
    save, model, times = writer(kind, who), bench.new_model(kind), []
    for index in range(5):
        (folder := bench.work / "timing" / f"{kind}-{who}-{index}").mkdir(parents=True)
        start = time.perf_counter()
        save(model, folder / TARGETS[kind])
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def fork(function: Callable[[], int]) -> int:
    """Run ``function`` in a forked child that exits with its return value and dies with this process; the child's pid."""
    if (pid := os.fork()) == 0:
        code = 255
        try:
            with contextlib.suppress(OSError, AttributeError):  # PR_SET_PDEATHSIG (Linux; the save loops check the parent)
                ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
            code = function()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    CHILDREN.add(pid)
    return pid


def kill_trial(bench: Bench, kind: str, who: str, folder: pathlib.Path, window_s: float, chance: random.Random) -> Trial:
    """Kill a child saving the new content over the old after a random delay in ``[0, window_s]``; what is left."""
    bench.write_old(kind, folder)
    outcome, detail, _ = bench.classify(kind, folder)
    if outcome != "consistent-old":
        raise RuntimeError(f"{folder}: the old content did not load as itself before the kill ({outcome}: {detail})")
    target, save, parent = folder / TARGETS[kind], writer(kind, who), os.getpid()
    read_end, write_end = os.pipe()

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
    trial = Trial(kind, who, outcome, detail, delay, temporaries_left=len(left), warned=warned)
    if kind != "checkpoint" and who == "ours" and left:  # once older than STALE_AFTER_S, the next save removes them
        for path in left:
            os.utime(path, (time.time() - 2 * STALE_AFTER_S,) * 2)
        save(bench.old, folder / f"other-{target.name}")
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


def full_disk_trials(bench: Bench, kind: str, who: str, trials: int, chance: random.Random) -> list[Trial] | None:
    """Save the new content over the old on a tmpfs filled so that it cannot fit; ``None`` where no tmpfs can be mounted."""
    probe, save = bench.work / "probe" / f"{kind}-{who}", writer(kind, who)
    bench.write_old(kind, probe)
    old_size = folder_size(probe)
    (probe / "n").mkdir()
    save(bench.new_model(kind), probe / "n" / TARGETS[kind])
    new_size, mount_point, results = folder_size(probe / "n"), bench.work / "disk" / f"{kind}-{who}", []
    with tmpfs(mount_point, 2 * (old_size + new_size) + 2**20) as mounted:
        if not mounted:
            return None
        for index in range(trials):
            folder = mount_point / f"trial{index}"
            bench.write_old(kind, folder)
            model, stat, filler = bench.new_model(kind), os.statvfs(mount_point), mount_point / "filler"
            filler.write_bytes(b"\0" * max(stat.f_bavail * stat.f_frsize - int(chance.uniform(0.0, 1.0) * new_size), 0))
            try:
                save(model, folder / TARGETS[kind])
                error = "no error raised"
            except Exception as caught:
                error = one_line(caught)
            outcome, detail, warned = bench.classify(kind, folder)
            results.append(Trial(kind, who, outcome, f"{error}; {detail}" if detail else error, warned=warned))
            filler.unlink()
            shutil.rmtree(folder)
    return results


#: the full-disk trials of each (kind, writer), None where no tmpfs could be mounted
Disk = dict[tuple[str, str], list[Trial] | None]


def disk_trials(disk: Disk) -> list[Trial]:
    return [trial for found in disk.values() for trial in found or []]


@dataclasses.dataclass
class Concurrency:
    kind: str
    writer: str
    mode: str
    saves: int
    save_errors: list[str]
    reads: Counter[str]
    final: str


def concurrent_trial(bench: Bench, kind: str, who: str, mode: str, workers: int, saves: int) -> Concurrency:
    """``workers`` threads or processes save ``saves`` times each on one path (old and new by turns), loaded meanwhile."""
    folder = bench.work / "concurrent" / f"{kind}-{who}-{mode}"
    bench.write_old(kind, folder)
    save, errors, reads = writer(kind, who), list[str](), Counter[str]()

    def work(index: int) -> int:
        for turn in range(saves):
            try:
                save(bench.new if (index + turn) % 2 else bench.old, folder / TARGETS[kind])
            except Exception as error:
                errors.append(one_line(error)[:200])
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
    return Concurrency(kind, who, mode, workers * saves, errors, reads, bench.classify(kind, folder)[0])


def git_revision(path: pathlib.Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args, "--", str(path)], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    try:
        dirty = " (modified)" if git("status", "--porcelain").strip() else ""
        return (git("log", "-1", "--format=%h %s").strip()[:70] or "not committed") + dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def row(event: str, group: list[Trial]) -> str:
    """The table row of kill or full-disk trials of one (kind, writer)."""
    counts, notes, first = Counter(trial.outcome for trial in group), [], group[0]
    if event.startswith("SIGKILL"):
        if left := sum(trial.temporaries_left for trial in group):
            notes.append(f"{left} temporary files left by the kills")
            if first.kind != "checkpoint" and first.writer == "ours":
                after = sum(trial.temporaries_left_after_next_save for trial in group)
                notes.append(f"{after} after the next save (once {STALE_AFTER_S:.0f} s old)")
    else:
        raised = sum(not trial.detail.startswith("no error raised") for trial in group)
        notes.append(f"an error raised in {raised}/{len(group)}")
        if first.writer == "sb3":
            notes.append("written in place, so the old file's room is reused and the new one fits here")
    if warned := sum(trial.warned for trial in group):
        notes.append(f"a fallback warning in {warned}")
    cells = " | ".join(str(counts[outcome]) for outcome in OUTCOMES)
    return f"| {event} | {LABELS[first.kind, first.writer]} | {len(group)} | {cells} | {'; '.join(notes)} |"


def report(trials: list[Trial], disk: Disk, concurrency: list[Concurrency], saves: int, seconds: float) -> str:
    """The markdown report."""
    revisions = "; ".join(
        f"deep_sarsa/{name} at {git_revision(ROOT / 'deep_sarsa' / name)}" for name in ("checkpoint.py", "atomic.py")
    )
    lines = [
        "# Crash safety: SIGKILL and a full disk while saving",
        "",
        f"`python benchmarks/crash_safety.py {' '.join(sys.argv[1:])}` ({seconds:.0f} s; {cpu_model()}, {os.cpu_count()} "
        f"cores, Python {platform.python_version()}, torch {th.__version__}, SB3 {stable_baselines3.__version__}; "
        f"{revisions}).",
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
    groups: dict[tuple[str, str], list[Trial]] = {}
    for trial in trials:
        groups.setdefault((trial.kind, trial.writer), []).append(trial)
    lines += [row("SIGKILL while saving", group) for group in groups.values()]
    for key, found in disk.items():
        not_run = f"| full disk | {LABELS[key]} | 0 | | | | | not run: no tmpfs could be mounted (needs root) |"
        lines.append(not_run if found is None else row("full disk (tmpfs)", found))
    for result in concurrency:
        cells = " | ".join(str(result.reads[outcome]) for outcome in OUTCOMES)
        note = f"{len(result.save_errors)} of the {result.saves} saves raised; the file at the end: {result.final}"
        note += f" (first: {result.save_errors[0]})" if result.save_errors else ""
        event = f"{result.saves // saves} {result.mode} x {saves} saves on one path, loaded meanwhile"
        loads = sum(result.reads.values())
        lines.append(f"| {event} | {LABELS[result.kind, result.writer]} | {loads} loads | {cells} | {note} |")
    if examples := [trial for trial in [*trials, *disk_trials(disk)] if trial.detail]:
        what = "What loading found, and the errors the full-disk saves raised (the first 3 of each row and outcome; "
        lines += ["", what + "WORK is the benchmark's temporary folder):", ""]
        shown: Counter[tuple[str, str, str]] = Counter()
        for trial in examples:
            shown[key3 := (trial.kind, trial.writer, trial.outcome)] += 1
            if shown[key3] <= 3:
                detail = trial.detail if len(trial.detail) <= 300 else trial.detail[:297] + "..."
                lines.append(f"- {LABELS[trial.kind, trial.writer]}, {trial.outcome}: {detail}")
    return "\n".join(lines) + "\n"


def counts_of(trials: list[Trial], disk: Disk, concurrency: list[Concurrency]) -> dict[str, Any]:
    """The counts of each outcome, by event, kind and writer (``--json``)."""
    counts: dict[str, dict[str, int]] = {}
    for event, trial in [*(("kill", trial) for trial in trials), *(("disk", trial) for trial in disk_trials(disk))]:
        counts.setdefault(f"{event}/{trial.kind}/{trial.writer}", dict.fromkeys(OUTCOMES, 0))[trial.outcome] += 1
    for result in concurrency:
        reads = {outcome: result.reads[outcome] for outcome in OUTCOMES}
        counts[f"{result.mode}/{result.kind}/{result.writer}"] = reads | {"save_errors": len(result.save_errors)}
        counts[f"{result.mode}/{result.kind}/{result.writer}"]["final_" + result.final] = 1
    return {"counts": counts, "disk_run": {f"{kind}/{who}": found is not None for (kind, who), found in disk.items()}}


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
    start, work = time.time(), pathlib.Path(tempfile.mkdtemp(prefix="crash_safety_"))
    os.environ.setdefault(CONFIG_DIR_VARIABLE, str(work / "config"))  # the checkpoints' signing key: not the user's
    chance, trials, concurrency, disk = random.Random(args.seed), list[Trial](), list[Concurrency](), Disk()
    try:
        bench = Bench(work)
        for kind in kinds:
            for who in ["ours", "sb3"] if args.compare_sb3 and kind != "checkpoint" else ["ours"]:
                window = 1.5 * save_duration(bench, kind, who)
                for index in range(args.kills):
                    folder = work / "kills" / f"{kind}-{who}" / f"trial{index}"
                    trials.append(trial := kill_trial(bench, kind, who, folder, window, chance))
                    moment = f"after {trial.delay_s * 1e3:6.1f} ms"
                    print(f"{kind:10} {who:4} kill {index + 1:3}/{args.kills} {moment}: {trial.outcome}", flush=True)
                if args.full_disk:
                    disk[kind, who] = full_disk_trials(bench, kind, who, args.full_disk, chance)
                if args.saves and kind != "checkpoint":
                    for mode in ("threads", "processes"):
                        concurrency.append(concurrent_trial(bench, kind, who, mode, args.workers, args.saves))
                        print(f"{kind:10} {who:4} {mode}: {dict(concurrency[-1].reads)}", flush=True)
    finally:
        for pid in CHILDREN:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for trial in [*trials, *disk_trials(disk)]:
        trial.detail = trial.detail.replace(str(work), "WORK")  # the report names files, not this run's folder
    write_output(args.out, report(trials, disk, concurrency, args.saves, time.time() - start))
    if args.json:
        args.json.write_text(json.dumps(counts_of(trials, disk, concurrency), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
