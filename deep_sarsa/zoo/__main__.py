"""
``python -m deep_sarsa.zoo <command> [arguments]``: rl-zoo3's ``<command>`` (the arguments exactly as
``python -m rl_zoo3.<command>`` / ``rl_zoo3 <command>`` takes them) with DeepSARSA registered as ``--algo deep_sarsa``
(:func:`deep_sarsa.zoo.register`), plus ``create-study`` to create an Optuna study up front (docs/tuning.md)::

    python -m deep_sarsa.zoo train --algo deep_sarsa --env CartPole-v1
    python -m deep_sarsa.zoo enjoy --algo deep_sarsa --env CartPole-v1 -f logs/
    python -m deep_sarsa.zoo create-study --storage postgresql+psycopg://USER:PASSWORD@HOST/DB --study-name S
    python -m deep_sarsa.zoo train --algo deep_sarsa --env CartPole-v1 --optimize --storage URL --study-name S

Every command reads a trained folder (``enjoy -f``, ``record_video``, ``record_training``, ``benchmark``,
``train -i``, ``train``'s look-up of ``vecnormalize.pkl``) without running its code
(:mod:`deep_sarsa.zoo.folders`); ``--trusted``, taken by every command, reads it as rl-zoo3 does. A refused file
exits with code 2 and one line naming it.
"""

import argparse
import os
import runpy
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

#: command -> the rl-zoo3 module it runs
COMMANDS: dict[str, str] = {
    "train": "rl_zoo3.train",
    "enjoy": "rl_zoo3.enjoy",
    "record_video": "rl_zoo3.record_video",
    "record_training": "rl_zoo3.record_training",
    "plot_train": "rl_zoo3.plots.plot_train",
    "all_plots": "rl_zoo3.plots.all_plots",
    "plot_from_file": "rl_zoo3.plots.plot_from_file",
    "benchmark": "rl_zoo3.benchmark",
    "push_to_hub": "rl_zoo3.push_to_hub",
    "load_from_hub": "rl_zoo3.load_from_hub",
}
#: commands that load a trained model only to play it
PLAYING = ("enjoy", "record_video")
#: the flag of ours that every command takes (removed before rl-zoo3 parses the arguments)
TRUSTED = "--trusted"
TRUSTED_HELP = (
    f"{TRUSTED} (python -m deep_sarsa.zoo): read the trained folder as rl-zoo3 does, running any code its files name "
    "(yml tags, an evaluated normalize, wrappers from any module, pickled VecNormalize statistics, models of other "
    "algorithms); only for folders you trust (docs/trust.md)"
)
USAGE = (
    "usage: python -m deep_sarsa.zoo COMMAND [ARGUMENTS] [--trusted]\n"
    f"COMMAND: one of {', '.join([*COMMANDS, 'create-study'])}; ARGUMENTS: as rl-zoo3's COMMAND takes them "
    f"(python -m deep_sarsa.zoo COMMAND --help)\n{TRUSTED_HELP}"
)


def _missing_zoo(error: ImportError) -> int:
    print(
        f"python -m deep_sarsa.zoo needs rl-zoo3 and Optuna ({error}); install them with: pip install 'deep-sarsa[zoo]'",
        file=sys.stderr,
    )
    return 2


@contextmanager
def ffmpeg_on_path() -> Iterator[None]:
    """
    ``record_training`` joins its videos by running ``ffmpeg`` from PATH: when there is none, put the binary that
    the imageio-ffmpeg wheel ships (the ``video`` extra) on PATH for the duration.
    """
    if shutil.which("ffmpeg") is not None:
        yield
        return
    try:
        import imageio_ffmpeg

        binary = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        print("record_training: no ffmpeg on PATH (pip install 'deep-sarsa[video]' ships one)", file=sys.stderr)
        yield
        return
    folder = tempfile.mkdtemp(prefix="deep-sarsa-ffmpeg-")
    os.symlink(binary, os.path.join(folder, "ffmpeg"))
    previous = os.environ.get("PATH", "")
    os.environ["PATH"] = folder + os.pathsep + previous
    try:
        yield
    finally:
        os.environ["PATH"] = previous
        shutil.rmtree(folder, ignore_errors=True)


def create_study(arguments: Sequence[str]) -> int:
    """
    ``create-study``: create (or find) an Optuna study in a storage, before the workers start, so that workers
    started together on a fresh database do not race in Optuna's table creation.

    :param arguments: the command-line arguments after ``create-study``
    :return: the exit code
    """
    from deep_sarsa.zoo.storage import create_study_in

    parser = argparse.ArgumentParser(prog="python -m deep_sarsa.zoo create-study", description=create_study.__doc__)
    parser.add_argument("--storage", required=True, help="Optuna storage: a database URL or a journal file ending in .log")
    parser.add_argument("--study-name", required=True, help="the study's name (the workers' --study-name)")
    parser.add_argument("--direction", default="maximize", choices=["maximize", "minimize"], help="rl-zoo3 maximizes")
    args = parser.parse_args(arguments)
    try:
        created = create_study_in(args.storage, args.study_name, args.direction)
    except ValueError as error:
        print(f"create-study: {error}", file=sys.stderr)
        return 2
    print(f"study {args.study_name!r} {'created' if created else 'already exists'} in {args.storage.split('@')[-1]}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run one command.

    :param argv: the arguments (default: ``sys.argv[1:]``)
    :return: the exit code
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not arguments else sys.stdout)
        return 2 if not arguments else 0
    command, rest = arguments[0], arguments[1:]
    if command == "create-study":
        try:
            return create_study(rest)
        except ImportError as error:
            return _missing_zoo(error)
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        import deep_sarsa.zoo as zoo

        zoo.register()
        zoo.redirect_subprocesses()  # record_training / benchmark start fresh interpreters
    except ImportError as error:
        return _missing_zoo(error)
    from deep_sarsa.cli.common import UsageError
    from deep_sarsa.safe_pickle import UnsafeFileError
    from deep_sarsa.zoo.folders import reading_folders

    trusted = TRUSTED in rest
    zoo._child_exit_codes.clear()
    rest = [argument for argument in rest if argument != TRUSTED]
    if command in PLAYING:
        zoo.use_player()
    previous = sys.argv
    sys.argv = [f"deep_sarsa.zoo {command}", *rest]
    try:
        with reading_folders(trusted, playing=command in (*PLAYING, "push_to_hub")):
            if command == "record_training":
                with ffmpeg_on_path():
                    runpy.run_module(COMMANDS[command], run_name="__main__", alter_sys=False)
            else:
                runpy.run_module(COMMANDS[command], run_name="__main__", alter_sys=False)
    except SystemExit as stop:
        if stop.code in (0, None) and ("-h" in rest or "--help" in rest):
            print(f"\n{TRUSTED_HELP}")
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except (UnsafeFileError, UsageError) as error:  # a refused folder, or model: nothing of it ran
        message = " ".join(str(error).split()).replace("with trusted=True", f"with {TRUSTED}")
        print(f"error: {message}", file=sys.stderr)
        return 2
    except AssertionError:
        if zoo.refused_child():  # record_training asserts that each recording succeeded; the child said why
            return 2
        raise
    finally:
        sys.argv = previous
        if command in PLAYING:
            zoo.use_player(False)
    return 2 if zoo.refused_child() else 0


if __name__ == "__main__":
    sys.exit(main())
