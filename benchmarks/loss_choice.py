"""
Why ``loss="mse"`` is DeepSARSA's default: MSE vs Huber on :func:`deep_sarsa.tabular.risky_bridge`, each run a Q-table
with a fixed ε compared with the exact Q^π of the ε-greedy policy at (start, edge) (docs/algorithm.md).

    python benchmarks/loss_choice.py                 # 5 seeds, both cores, about 3 minutes
    python benchmarks/loss_choice.py --seeds 1 --steps 3000   # quick look
"""

import argparse
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import product
from pathlib import Path

import numpy as np
import torch as th
from throughput import write_output

from deep_sarsa.tabular import epsilon_greedy_fixed_points, q_star, q_table, risky_bridge, tabular_deep_sarsa

MDP = risky_bridge()
VARIANTS, LOSSES = ["sampled", "expected", "stored"], ["mse", "huber"]


def run(job: tuple[str, str, int, float, int]) -> dict[str, float | str | int]:
    """Train one (next_action, loss, seed, ε, steps) run; its Q(start, edge), error against Q^π and route."""
    next_action, loss, seed, epsilon, steps = job
    th.set_num_threads(1)  # one process per core
    model = tabular_deep_sarsa(MDP, epsilon, buffer_size=steps, next_action=next_action, loss=loss, seed=seed)
    model.learn(steps)
    q = q_table(model)
    (q_pi,) = epsilon_greedy_fixed_points(MDP, epsilon)
    return {
        "next_action": next_action,
        "loss": loss,
        "seed": seed,
        "q_start_edge": float(q[0, 0]),
        "max_error": float(np.abs(q - q_pi).max()),
        "safe_route": int(q[0].argmax() == q_pi[0].argmax()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--epsilon", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "loss_choice.md")
    args = parser.parse_args()

    (q_pi,) = epsilon_greedy_fixed_points(MDP, args.epsilon)
    jobs = list(product(VARIANTS, LOSSES, range(args.seeds), [args.epsilon], [args.steps]))
    start = time.time()
    os.environ["OMP_NUM_THREADS"] = "1"
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(run, jobs))
    elapsed = time.time() - start

    lines = [
        "# MSE vs Huber: what each learns on the risky bridge",
        "",
        f"ε = {args.epsilon} fixed, {args.steps} steps per run, {args.seeds} seeds; "
        f"exact Q^π(start, edge) = {q_pi[0, 0]:.3f}, Q*(start, edge) = {q_star(MDP)[0, 0]:.3f}.",
        "",
        "| next_action | loss | Q(start, edge): median [min, max] | max abs error vs Q^π: median | "
        "runs choosing the safe route (as Q^π does) |",
        "|---|---|---|---|---|",
    ]
    for next_action, loss in product(VARIANTS, LOSSES):
        rows = [r for r in results if r["next_action"] == next_action and r["loss"] == loss]
        values = np.array([r["q_start_edge"] for r in rows], dtype=float)
        errors = np.array([r["max_error"] for r in rows], dtype=float)
        safe = sum(int(r["safe_route"]) for r in rows)
        lines.append(
            f"| {next_action} | {loss} | {np.median(values):.2f} [{values.min():.2f}, {values.max():.2f}] "
            f"| {np.median(errors):.2f} | {safe}/{len(rows)} |"
        )
    lines += [
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {th.__version__}; {elapsed:.0f} s with {args.workers} workers.",
        "",
        f"Reproduce: `python benchmarks/loss_choice.py --seeds {args.seeds} --steps {args.steps} --epsilon {args.epsilon}`",
    ]
    write_output(args.output, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
