"""
The ``deep-sarsa`` command: train, evaluate, watch and plot DeepSARSA agents.

    deep-sarsa train CartPole-v1 --timesteps 50000
    deep-sarsa evaluate runs/CartPole-v1-sampled-seed0/model.zip --episodes 20
    deep-sarsa enjoy runs/CartPole-v1-sampled-seed0/model.zip --gif cartpole.gif
    deep-sarsa enjoy runs/CartPole-v1-sampled-seed0/model.zip --record cartpole.mp4
    deep-sarsa plot runs/CartPole-v1-sampled-seed0 runs/CartPole-v1-stored-seed0

Models are loaded safely (no code from the file runs; a file that would run some is refused)
unless --trusted is given.

Exit codes: 0 on success, 2 for bad input (unknown env, bad hyperparameter, unreadable,
malformed or refused model file, bad arguments), 1 when something fails while running (or an optional package is
missing), 130 when interrupted.
"""

import argparse
import ast
import inspect
import json
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from stable_baselines3.common.callbacks import CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from deep_sarsa.callbacks import SaveOnInterrupt
from deep_sarsa.deep_sarsa import DeepSARSA
from deep_sarsa.finite import NonFiniteError
from deep_sarsa.presets import load_presets, parse_policy_kwargs
from deep_sarsa.safe_pickle import UnsafeFileError
from deep_sarsa.validation import make_env

console = Console()
#: errors go to stderr, unwrapped, so that they can be read (and grepped) whole
errors = Console(stderr=True, soft_wrap=True)

#: DeepSARSA keywords that ``--hyperparams`` may set (the CLI sets env, seed, verbose, tensorboard itself)
HYPERPARAMETERS = sorted(
    name
    for name in inspect.signature(DeepSARSA.__init__).parameters
    if name not in {"self", "policy", "env", "seed", "verbose", "tensorboard_log", "_init_setup_model"}
)
RUN_FILE = "run.json"


class UsageError(Exception):
    """Bad input from the user: reported without a traceback, exit code 2."""


class MissingExtra(Exception):
    """An optional package that the command needs is not installed: exit code 1."""


def parse_hyperparameters(pairs: Sequence[str]) -> dict[str, Any]:
    """
    Turn ``["gamma=0.98", "policy_kwargs=dict(net_arch=[64])"]`` into keyword arguments.

    Values are Python literals (numbers, strings, tuples, lists, dicts); ``dict(...)`` is accepted
    as rl-zoo writes ``policy_kwargs``. Anything else is taken as a string.

    :param pairs: ``key=value`` strings
    :return: the keyword arguments
    """
    result: dict[str, Any] = {}
    for pair in pairs:
        key, separator, text = pair.partition("=")
        if not separator:
            raise UsageError(f"--hyperparams takes key=value pairs, got {pair!r}")
        if key not in HYPERPARAMETERS:
            raise UsageError(f"unknown hyperparameter {key!r}; valid ones: {', '.join(HYPERPARAMETERS)}")
        result[key] = _literal(text, key)
    return result


def _literal(text: str, key: str) -> Any:
    if text.startswith("dict("):  # an unbalanced "dict(" is reported as such, not taken as a string
        try:
            return parse_policy_kwargs(text, key)
        except ValueError as error:
            raise UsageError(str(error)) from error
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _run_folder(path: pathlib.Path) -> pathlib.Path:
    return path if path.is_dir() else path.parent


def _env_id_of(model_path: pathlib.Path, env_id: str | None) -> str:
    if env_id is not None:
        return env_id
    run_file = _run_folder(model_path) / RUN_FILE
    if run_file.exists():
        return str(json.loads(run_file.read_text())["env_id"])
    raise UsageError(f"{model_path}: no {RUN_FILE} beside the model to say its env: pass --env ENV_ID")


def _load(model_path: pathlib.Path, trusted: bool) -> DeepSARSA:
    try:
        return DeepSARSA.load(model_path, device="cpu", trusted=trusted)
    except UnsafeFileError as error:
        raise UsageError(str(error).replace("with trusted=True", "with --trusted")) from error
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from error


def train(args: argparse.Namespace) -> int:
    """Train, evaluate periodically, checkpoint; write the model, run.json, monitor logs and a curve."""
    make_env(args.env_id).close()  # fails early, with the env's name
    hyperparameters: dict[str, Any] = {}
    presets = load_presets()
    if args.preset:
        if args.env_id in presets:
            hyperparameters = presets[args.env_id].hyperparameters
        else:
            errors.print(f"[yellow]no preset for {args.env_id}: DQN's defaults[/]")
    if args.timesteps is None:
        args.timesteps = presets[args.env_id].n_timesteps if args.preset and args.env_id in presets else 50_000
    hyperparameters.update(parse_hyperparameters(args.hyperparams))
    if args.next_action is not None:
        hyperparameters["next_action"] = args.next_action
    next_action = hyperparameters.get("next_action", "sampled")
    output = args.output or pathlib.Path("runs") / f"{args.env_id.replace(':', '_')}-{next_action}-seed{args.seed}"
    output.mkdir(parents=True, exist_ok=True)

    env = make_vec_env(args.env_id, n_envs=args.n_envs, seed=args.seed, monitor_dir=str(output / "monitor"))
    try:
        model = DeepSARSA(
            "MlpPolicy",
            env,
            seed=args.seed,
            tensorboard_log=str(output / "tensorboard") if args.tensorboard else None,
            **hyperparameters,
        )
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error
    run = {
        "env_id": args.env_id,
        "timesteps": args.timesteps,
        "seed": args.seed,
        "n_envs": args.n_envs,
        "hyperparameters": {key: repr(value) for key, value in hyperparameters.items()},
    }
    (output / RUN_FILE).write_text(json.dumps(run, indent=2))
    eval_env = Monitor(gym.make(args.env_id))
    every = max(args.timesteps // (10 * args.n_envs), 1)
    callbacks = [
        EvalCallback(eval_env, eval_freq=every, n_eval_episodes=args.eval_episodes, log_path=str(output / "eval")),
        CheckpointCallback(save_freq=max(args.timesteps // (5 * args.n_envs), 1), save_path=str(output / "checkpoints")),
        SaveOnInterrupt(output / "interrupted"),
    ]
    start = time.perf_counter()
    model.learn(args.timesteps, callback=callbacks, progress_bar=not args.no_progress_bar)
    seconds = time.perf_counter() - start
    model.save(output / "model.zip")
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes)
    curve = _plot([output], output / "learning_curve.png")

    table = Table(title=f"DeepSARSA on {args.env_id}")
    table.add_column("")
    table.add_column("")
    for key, value in [
        ("next_action", next_action),
        ("timesteps", str(model.num_timesteps)),
        ("wall-clock", f"{seconds:.0f} s ({model.num_timesteps / seconds:.0f} steps/s)"),
        ("final evaluation", f"{mean:.2f} ± {std:.2f} over {args.eval_episodes} episodes"),
        ("model", str(output / "model.zip")),
        ("run settings", str(output / RUN_FILE)),
        ("learning curve", str(curve) if curve else "matplotlib not installed: no PNG"),
    ]:
        table.add_row(key, value)
    console.print(table)
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """Evaluate a saved model: mean ± std of the return, episode lengths."""
    model = _load(args.model, args.trusted)
    env_id = _env_id_of(args.model, args.env)
    env = Monitor(make_env(env_id))
    returns, lengths = evaluate_policy(
        model, env, n_eval_episodes=args.episodes, deterministic=not args.stochastic, return_episode_rewards=True
    )
    summary = {
        "env_id": env_id,
        "episodes": args.episodes,
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "mean_length": float(np.mean(lengths)),
        "returns": [float(r) for r in returns],  # type: ignore[union-attr]
        "lengths": [int(n) for n in lengths],  # type: ignore[union-attr]
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    table = Table(title=f"{args.model} on {env_id}")
    for column in ("episodes", "mean return", "std", "mean length", "min / max return"):
        table.add_column(column, justify="right")
    table.add_row(
        str(args.episodes),
        f"{summary['mean_return']:.2f}",
        f"{summary['std_return']:.2f}",
        f"{summary['mean_length']:.1f}",
        f"{min(summary['returns']):.2f} / {max(summary['returns']):.2f}",
    )
    console.print(table)
    return 0


class _VideoWriter:
    """
    Writes RGB frames to an MP4 file (H.264, yuv420p) with imageio's ffmpeg plugin, one at a time.

    Frames of odd width or height are padded by one black row or column: H.264 in yuv420p needs
    even sizes.

    :param path: the MP4 file
    :param fps: frames per second
    """

    def __init__(self, path: pathlib.Path, fps: int) -> None:
        import imageio.v2 as imageio

        # Written next to the target and renamed when complete: an interrupted recording leaves no broken file
        self.path, self.partial = path, path.with_name(f".{path.stem}.partial.mp4")
        self.writer = imageio.get_writer(
            self.partial, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1
        )
        self.frames = 0

    def append(self, frame: np.ndarray) -> None:
        """
        :param frame: an ``(H, W, 3)`` uint8 image
        """
        height, width = frame.shape[:2]
        frame = np.pad(np.asarray(frame, dtype=np.uint8), ((0, height % 2), (0, width % 2), (0, 0)))
        self.writer.append_data(frame)
        self.frames += 1

    def close(self, complete: bool) -> None:
        """
        Finish the file.

        :param complete: keep the video (renamed to its final name), else delete it
        """
        self.writer.close()
        if complete:
            self.partial.replace(self.path)
        else:
            self.partial.unlink(missing_ok=True)


def _require_video_extra() -> None:
    try:
        import imageio  # noqa: F401
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as error:
        raise MissingExtra(f"--record needs imageio and imageio-ffmpeg ({error}): pip install 'deep-sarsa[video]'") from error


def enjoy(args: argparse.Namespace) -> int:
    """Watch a saved model (needs a display), or record it to a GIF or an MP4 video."""
    output = args.gif or args.record
    if output is not None and not output.parent.is_dir():
        raise UsageError(f"cannot write {output}: the folder {output.parent} does not exist")
    if args.record is not None:
        if args.record.suffix.lower() != ".mp4":
            raise UsageError(f"--record writes an MP4 video: the file name must end in .mp4, got {args.record}")
        _require_video_extra()
    model = _load(args.model, args.trusted)
    env_id = _env_id_of(args.model, args.env)
    render_mode = "rgb_array" if output is not None else "human"
    try:
        env = gym.make(env_id, render_mode=render_mode)
    except (gym.error.Error, ModuleNotFoundError) as error:
        raise UsageError(f"env={env_id!r} cannot be made: {error}") from error
    frames: list[np.ndarray] = []
    video = _VideoWriter(args.record, int(env.metadata.get("render_fps") or 30)) if args.record else None
    complete = False
    try:
        for episode in range(args.episodes):
            obs, _ = env.reset(seed=args.seed + episode)
            done, total = False, 0.0
            while not done:
                if video is not None:
                    video.append(np.asarray(env.render()))
                elif args.gif:
                    frames.append(np.asarray(env.render()))
                action, _ = model.predict(obs, deterministic=True)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
            console.print(f"episode {episode + 1}: return {total:.2f}")
        complete = True
    finally:
        env.close()
        if video is not None:
            video.close(complete)
    if video is not None:
        console.print(f"recorded {video.frames} frames to {args.record}")
    if args.gif:
        from PIL import Image

        images = [Image.fromarray(frame) for frame in frames]
        images[0].save(args.gif, save_all=True, append_images=images[1:], duration=33, loop=0)
        console.print(f"recorded {len(images)} frames to {args.gif}")
    return 0


def _plot(run_folders: Sequence[pathlib.Path], output: pathlib.Path) -> pathlib.Path | None:
    """Learning curves (periodic evaluations) of the runs in one PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(6, 4))
    for folder in run_folders:
        evaluations = folder / "eval" / "evaluations.npz"
        if not evaluations.exists():
            raise UsageError(f"{folder}: no eval/evaluations.npz (is it a folder written by `deep-sarsa train`?)")
        data = np.load(evaluations)
        means, stds = data["results"].mean(axis=1), data["results"].std(axis=1)
        axis.plot(data["timesteps"], means, label=folder.name)
        axis.fill_between(data["timesteps"], means - stds, means + stds, alpha=0.2)
    axis.set_xlabel("env steps")
    axis.set_ylabel("evaluation return (mean ± std)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output


def plot(args: argparse.Namespace) -> int:
    """Learning curves of one or more runs in one PNG."""
    output = _plot(args.runs, args.output)
    if output is None:
        raise UsageError("plot needs matplotlib: pip install matplotlib")
    console.print(f"wrote {output}")
    return 0


def _add_trusted(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trusted",
        action="store_true",
        help="load the model as SB3 does, running any code its file names (only for files you trust; see docs/trust.md)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deep-sarsa", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="train a model")
    p.add_argument("env_id", help="a Gymnasium env id, or module:EnvId")
    p.add_argument("--timesteps", type=int, default=None, help="env steps (default: the preset's budget, else 50000)")
    p.add_argument(
        "--preset",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start from DeepSARSA's preset for the env (deep_sarsa/hyperparams/deep_sarsa.yml)",
    )
    p.add_argument("--hyperparams", nargs="*", default=[], metavar="KEY=VALUE", help="any DeepSARSA keyword")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-envs", type=int, default=1)
    p.add_argument("--next-action", choices=["sampled", "expected", "stored"], default=None)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--output", type=pathlib.Path, default=None, help="run folder (default runs/ENV-VARIANT-seedS)")
    p.add_argument("--tensorboard", action="store_true")
    p.add_argument("--no-progress-bar", action="store_true")
    p.set_defaults(func=train)

    p = commands.add_parser("evaluate", help="evaluate a saved model")
    p.add_argument("model", type=pathlib.Path)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--env", default=None, help="env id (default: the one in run.json beside the model)")
    p.add_argument("--stochastic", action="store_true", help="ε-greedy instead of greedy")
    p.add_argument("--json", action="store_true")
    _add_trusted(p)
    p.set_defaults(func=evaluate)

    p = commands.add_parser("enjoy", help="watch a saved model, or record it")
    p.add_argument("model", type=pathlib.Path)
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--env", default=None)
    p.add_argument("--seed", type=int, default=0)
    recording = p.add_mutually_exclusive_group()
    recording.add_argument("--gif", type=pathlib.Path, default=None, help="record to this GIF instead of showing a window")
    recording.add_argument(
        "--record", type=pathlib.Path, default=None, metavar="VIDEO.mp4", help="record to this MP4 video (extra: video)"
    )
    _add_trusted(p)
    p.set_defaults(func=enjoy)

    p = commands.add_parser("plot", help="learning curves of runs in one PNG")
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
    except MissingExtra as error:
        errors.print(f"[red]error:[/] {escape(str(error))}")
        return 1
    except (UsageError, ValueError) as error:
        errors.print(f"[red]error:[/] {escape(str(error))}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
