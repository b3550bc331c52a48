"""
Soak run: 1M steps of DeepSARSA on CartPole-v1 with a 100k replay buffer, sampling the process's
resident memory (RSS) every 50k steps. Memory must plateau once the buffer is full.

    python benchmarks/soak.py                       # 1M steps, about 15 minutes on one core
    python benchmarks/soak.py --steps 200000        # shorter
"""

import argparse
import os
import platform
import time
from pathlib import Path

import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from throughput import write_output

from deep_sarsa import DeepSARSA


def rss_mib() -> float:
    """Current resident set size of this process, in MiB (from /proc, Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class SampleMemory(BaseCallback):
    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every
        self.samples: list[tuple[int, float, float]] = []
        self.start = time.time()

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every == 0:
            self.samples.append((self.num_timesteps, rss_mib(), time.time() - self.start))
            print(f"{self.num_timesteps:>9} steps  RSS {self.samples[-1][1]:8.1f} MiB", flush=True)
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--buffer-size", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=50_000)
    parser.add_argument("--next-action", default="stored", choices=["sampled", "expected", "stored"])
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "soak.md")
    args = parser.parse_args()
    th.set_num_threads(1)

    model = DeepSARSA("MlpPolicy", "CartPole-v1", buffer_size=args.buffer_size, next_action=args.next_action, seed=0)
    callback = SampleMemory(args.every)
    callback.samples.append((0, rss_mib(), 0.0))
    model.learn(args.steps, callback=callback)

    full_at = args.buffer_size
    after_full = [rss for step, rss, _ in callback.samples if step >= full_at + args.every]
    lines = [
        "# Soak: memory over a long run",
        "",
        f"DeepSARSA (`next_action={args.next_action!r}`, DQN's defaults otherwise) on CartPole-v1, "
        f"{args.steps} steps, replay buffer of {args.buffer_size}; RSS sampled every {args.every} steps.",
        "",
        "| steps | RSS (MiB) | elapsed (s) |",
        "|---:|---:|---:|",
        *[f"| {step} | {rss:.1f} | {elapsed:.0f} |" for step, rss, elapsed in callback.samples],
        "",
    ]
    if after_full:
        lines.append(
            f"Once the buffer is full (from step {full_at + args.every} on), RSS stays within "
            f"{min(after_full):.1f}–{max(after_full):.1f} MiB: a spread of {max(after_full) - min(after_full):.1f} MiB."
        )
    lines += [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {th.__version__}, one torch thread.",
        "",
        f"Reproduce: `python benchmarks/soak.py --steps {args.steps} --buffer-size {args.buffer_size} "
        f"--next-action {args.next_action}`",
    ]
    write_output(args.output, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
