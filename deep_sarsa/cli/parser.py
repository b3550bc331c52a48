"""
The ``deep-sarsa`` command line: the argparse parser of its subcommands (:func:`build_parser`, whose
``--help`` text is :data:`DESCRIPTION`, plain text) and :func:`main`, which runs the chosen command
and turns its errors into exit codes. It imports the command modules; nothing imports it but the
console script and ``python -m deep_sarsa.cli``.
"""

import argparse
import pathlib
from collections.abc import Callable, Sequence
from typing import NoReturn

from rich.markup import escape

from deep_sarsa.cli.common import MissingExtra, RunFailed, UsageError, errors
from deep_sarsa.cli.enjoy import enjoy
from deep_sarsa.cli.evaluate import evaluate
from deep_sarsa.cli.plot import plot
from deep_sarsa.cli.train import train
from deep_sarsa.finite import NonFiniteError
from deep_sarsa.presets import NEXT_ACTIONS

DESCRIPTION = """\
Train, evaluate, watch and plot DeepSARSA agents.

  deep-sarsa train CartPole-v1 --timesteps 50000
  deep-sarsa train --resume runs/CartPole-v1-sampled-seed0
  deep-sarsa evaluate runs/CartPole-v1-sampled-seed0 --episodes 20
  deep-sarsa enjoy runs/CartPole-v1-sampled-seed0 --gif cartpole.gif
  deep-sarsa enjoy runs/CartPole-v1-sampled-seed0 --record cartpole.mp4
  deep-sarsa plot runs/CartPole-v1-sampled-seed0 runs/CartPole-v1-stored-seed0

A run folder given to evaluate or enjoy means its best model (best_model.zip, kept by the
periodic evaluations), else its final model.zip. Models are loaded safely (no code from the
file runs; a file that would run some is refused) unless --trusted is given. A run's run.json
is signed with your key: your own runs make their env as they name it; a run.json from elsewhere
(or edited) may not import modules (a module:EnvId id, a wrapper outside gymnasium, SB3,
sb3-contrib, deep_sarsa) nor write outside its folder unless --trusted is given.

Exit codes: 0 on success; 2 for bad input (unknown env, bad hyperparameter, unreadable,
malformed or refused model file, bad arguments, a run folder that is already used); 1 when
something fails while running (or an optional package is missing); 130 after Ctrl-C and 143
after SIGTERM (train writes a checkpoint first and says where).
"""


def _add_trusted(parser: argparse.ArgumentParser, what: str = "the model") -> None:
    parser.add_argument(
        "--trusted",
        action="store_true",
        help=f"load {what} as SB3 does, running any code its files name (only for files you trust; see docs/trust.md)",
    )


#: the largest --seed (SB3 seeds NumPy's legacy generator, which takes < 2**32, with the seed plus offsets)
MAX_SEED = 2**31 - 1
#: the most envs --n-envs makes (each is a copy of the env in this process)
MAX_N_ENVS = 4096


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``deep-sarsa evaluate: error: argument --episodes: ...``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _integer(low: int, high: int | None, expected: str) -> Callable[[str], int]:
    """An argparse ``type`` that takes an integer from ``low`` to ``high``, else says what the flag expects."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    return parse


_positive = _integer(1, None, "a positive integer")
_seed = _integer(0, MAX_SEED, f"an integer from 0 to {MAX_SEED}")
_n_envs = _integer(1, MAX_N_ENVS, f"an integer from 1 to {MAX_N_ENVS}")


def build_parser() -> argparse.ArgumentParser:
    """The ``deep-sarsa`` argument parser (plain-text help)."""
    parser = _Parser(prog="deep-sarsa", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "train",
        help="train a model (or continue one with --resume)",
        description="Train DeepSARSA into a run folder: periodic evaluations, the best and the final model, "
        "exact checkpoints (also on Ctrl-C and SIGTERM), monitor logs, a learning curve.",
    )
    p.add_argument("env_id", nargs="?", default=None, help="a Gymnasium env id, or module:EnvId")
    p.add_argument(
        "--resume", type=pathlib.Path, default=None, metavar="RUN_DIR", help="continue this run to its planned steps"
    )
    p.add_argument("--timesteps", type=_positive, default=None, help="env steps (default: the preset's budget, else 50000)")
    p.add_argument(
        "--preset",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start from DeepSARSA's preset for the env (deep_sarsa/hyperparams/deep_sarsa.yml), its wrappers included",
    )
    p.add_argument("--hyperparams", nargs="*", default=[], metavar="KEY=VALUE", help="any DeepSARSA keyword")
    p.add_argument("--seed", type=_seed, default=None, help="default 0")
    p.add_argument("--n-envs", type=_n_envs, default=None, help="default 1")
    p.add_argument(
        "--next-action",
        choices=NEXT_ACTIONS,
        default=None,
        help="the TD target's next action (default: the preset's); with --preset, its own preset where one was tuned "
        "(deep_sarsa_VARIANT.yml), else the task preset's hyperparameters",
    )
    p.add_argument("--eval-episodes", type=_positive, default=None, help="default 10")
    p.add_argument("--output", type=pathlib.Path, default=None, help="run folder (default runs/ENV-VARIANT-seedS)")
    p.add_argument("--force", action="store_true", help="replace the run already in the run folder")
    p.add_argument("--tensorboard", action="store_true")
    p.add_argument("--no-progress-bar", action="store_true")
    _add_trusted(p, "the checkpoint and the run.json of --resume")
    p.set_defaults(func=train)

    p = commands.add_parser(
        "evaluate", help="evaluate a saved model", description="Evaluate a saved model or a run's best model."
    )
    p.add_argument("model", type=pathlib.Path, help="a model file, a run folder (its best model) or a checkpoint folder")
    p.add_argument("--episodes", type=_positive, default=20)
    p.add_argument("--env", default=None, help="env id (default: the one in the run's run.json)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--stochastic", action="store_true", help="ε-greedy instead of greedy")
    p.add_argument("--json", action="store_true")
    _add_trusted(p, "the model and its run.json")
    p.set_defaults(func=evaluate)

    p = commands.add_parser(
        "enjoy", help="watch a saved model, or record it", description="Watch a saved model, or record it."
    )
    p.add_argument("model", type=pathlib.Path, help="a model file, a run folder (its best model) or a checkpoint folder")
    p.add_argument("--episodes", type=_positive, default=1)
    p.add_argument("--env", default=None, help="env id (default: the one in the run's run.json)")
    p.add_argument("--seed", type=_seed, default=0)
    recording = p.add_mutually_exclusive_group()
    recording.add_argument("--gif", type=pathlib.Path, default=None, help="record to this GIF instead of showing a window")
    recording.add_argument(
        "--record", type=pathlib.Path, default=None, metavar="VIDEO.mp4", help="record to this MP4 video (extra: video)"
    )
    _add_trusted(p, "the model and its run.json")
    p.set_defaults(func=enjoy)

    p = commands.add_parser(
        "plot", help="learning curves of runs in one PNG", description="Learning curves of runs in one PNG."
    )
    p.add_argument("runs", type=pathlib.Path, nargs="+")
    p.add_argument("--output", type=pathlib.Path, default=pathlib.Path("learning_curves.png"))
    p.set_defaults(func=plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deep-sarsa`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except NonFiniteError as error:
        errors.print(f"[red]training stopped:[/] {escape(str(error))}")
        return 1
    except (MissingExtra, RunFailed) as error:
        errors.print(f"[red]error:[/] {escape(str(error))}")
        return 1
    except (UsageError, ValueError) as error:
        errors.print(f"[red]error:[/] {escape(str(error))}")
        return 2
    except KeyboardInterrupt:
        return 130
