"""
``deep-sarsa plot``: draws the learning curves (the periodic evaluations) of one or more run folders
into one PNG, with :func:`deep_sarsa.cli.evaluations.plot_curves`, which needs matplotlib.
"""

import argparse

from deep_sarsa.cli.common import UsageError, console
from deep_sarsa.cli.evaluations import plot_curves


def plot(args: argparse.Namespace) -> int:
    """Learning curves of one or more runs in one PNG."""
    output = plot_curves(args.runs, args.output)
    if output is None:
        raise UsageError("plot needs matplotlib: pip install matplotlib")
    console.print(f"wrote {output}", soft_wrap=True)
    return 0
