"""
``deep-sarsa evaluate``: evaluates a saved model (a model file, a run folder's best model or a
checkpoint's) on its run's env, or on ``--env``, and prints the mean and spread of its returns and
episode lengths, as a table or as JSON.
"""

import argparse
import json

import numpy as np
from rich.table import Table

from deep_sarsa.cli.common import console
from deep_sarsa.cli.env_settings import vec_env
from deep_sarsa.cli.evaluations import evaluate_episodes
from deep_sarsa.cli.run_folder import env_of, load_model, model_file


def evaluate(args: argparse.Namespace) -> int:
    """Evaluate a saved model: mean ± std of the return, episode lengths."""
    model_path = model_file(args.model)
    # buffer_size=1: evaluating needs no replay buffer (the saved one may be large)
    model = load_model(model_path, args.trusted, buffer_size=1)
    settings, where = env_of(model_path, args.env)
    env_id = settings.env_id
    eval_env = vec_env(settings, 1, args.seed, where=where, trusted=args.trusted)
    returns, lengths = evaluate_episodes(model, eval_env, args.episodes, deterministic=not args.stochastic)
    summary = {
        "model": str(model_path),
        "env_id": env_id,
        "episodes": args.episodes,
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "mean_length": float(np.mean(lengths)),
        "returns": returns,
        "lengths": lengths,
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    table = Table(title=f"{model_path} on {env_id}")
    for column in ("episodes", "mean return", "std", "mean length", "min / max return"):
        table.add_column(column, justify="right")
    table.add_row(
        str(args.episodes),
        f"{summary['mean_return']:.2f}",
        f"{summary['std_return']:.2f}",
        f"{summary['mean_length']:.1f}",
        f"{min(returns):.2f} / {max(returns):.2f}",
    )
    console.print(table)
    return 0
