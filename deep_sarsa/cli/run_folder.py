"""
The run folder that ``deep-sarsa train`` writes and the other commands read: its file names, its ``run.json`` (read,
and written atomically and signed with the user's key; its env settings are :mod:`deep_sarsa.cli.env_settings`'s),
the model a folder stands for, loading a model safely, and clearing a folder before a new run.
"""

import json
import os
import pathlib
import shutil
from typing import Any

from rich.markup import escape

from deep_sarsa.checkpoint import latest_checkpoint
from deep_sarsa.cli.common import RUN_FILE, UsageError, errors
from deep_sarsa.cli.env_settings import EnvSettings
from deep_sarsa.deep_sarsa import DeepSARSA
from deep_sarsa.files import atomic_path
from deep_sarsa.gate import Received, read_signed
from deep_sarsa.presets import load_presets
from deep_sarsa.safe_pickle import UnsafeFileError
from deep_sarsa.signing import SigningKeyError, sign

FINAL_MODEL = "model.zip"
BEST_MODEL = "best_model.zip"
CHECKPOINT_FOLDER = "checkpoint"
#: what ``train`` writes into a run folder (``--force`` removes exactly these)
RUN_ENTRIES = (
    RUN_FILE,
    FINAL_MODEL,
    BEST_MODEL,
    "learning_curve.png",
    "monitor",
    "eval",
    CHECKPOINT_FOLDER,
    "tensorboard",
    # written by earlier versions of the command
    "checkpoints",
    "interrupted",
)
#: the run's evaluation log, in the run folder
EVALUATIONS = pathlib.Path("eval") / "evaluations.npz"
#: the largest run.json read (one written by train is about 1 KB)
MAX_RUN_FILE_BYTES = 1 << 20


# --- run folders ------------------------------------------------------------------------------


def _find_run_file(path: pathlib.Path) -> pathlib.Path | None:
    """The run.json of the run a model, checkpoint or run folder belongs to (the path itself or up to 3 folders up)."""
    folder = path if path.is_dir() else path.parent
    for candidate in [folder, *folder.parents][:4]:
        if (candidate / RUN_FILE).is_file():
            return candidate / RUN_FILE
    return None


def _parse_run(run_file: pathlib.Path, content: bytes) -> dict[str, Any]:
    try:
        run = json.loads(content)
    except ValueError as error:
        raise UsageError(f"{run_file}: not a readable run file: {error}") from error
    if not isinstance(run, dict) or not isinstance(run.get("env_id"), str):
        raise UsageError(f"{run_file}: not a run file written by `deep-sarsa train` (no env_id)")
    return run


def _read(run_file: pathlib.Path, signature: bool = True) -> Received:
    """
    A run.json through the gate: a regular file of at most :data:`MAX_RUN_FILE_BYTES`, inside its run folder, read
    once, and (with ``signature``) whether those bytes carry the user's signature (``run.json.sig``).
    """
    try:
        return read_signed(run_file, "a run file", MAX_RUN_FILE_BYTES, run_file.parent, trusted=not signature)
    except SigningKeyError:  # the user's key, not the file: its own one-line message
        raise
    except (OSError, ValueError) as error:
        raise UsageError(f"{run_file}: not a readable run file: {error}") from error


def read_run(run_file: pathlib.Path) -> dict[str, Any]:
    """
    :param run_file: a run.json
    :return: its content (data only: :func:`read_run_settings` for the env it makes)
    """
    return _parse_run(run_file, _read(run_file, signature=False).content)


def read_run_settings(run_file: pathlib.Path) -> tuple[dict[str, Any], EnvSettings]:
    """
    A run.json, and its env settings: trusted when the bytes read carry the user's signature (``run.json.sig``, as
    ``train`` writes it), else checked by :func:`check_env_settings` wherever an env is made from them.

    :param run_file: a run.json
    :return: its content and its env settings
    """
    content, signed = _read(run_file)
    run = _parse_run(run_file, content)
    return run, run_env(run, source=run_file, trusted=signed)


def sign_run(run_file: pathlib.Path) -> bool:
    """
    Sign a run.json with the user's key (``run.json.sig``), so that the user's own run, with its own wrappers, is
    evaluated and resumed without ``--trusted``; where the key cannot be used, warn and leave it unsigned.

    :param run_file: the run.json
    :return: whether it was signed
    """
    try:
        sign(run_file)
    except (OSError, ValueError) as error:
        errors.print(
            f"[yellow]{escape(str(run_file))} could not be signed ({escape(str(error))}): evaluating or resuming the run "
            "needs --trusted if its env id or wrappers come from outside the safe modules[/]"
        )
        return False
    return True


def model_file(path: pathlib.Path) -> pathlib.Path:
    """A model file, or the model a folder stands for: a run's best model, else its final one; a checkpoint's model."""
    if not path.is_dir():
        return path
    generation = latest_checkpoint(path)  # a checkpoint folder: its newest checkpoint's model
    for candidate in [path / BEST_MODEL, path / FINAL_MODEL, *([generation / FINAL_MODEL] if generation else [])]:
        if os.path.lexists(candidate):
            base = os.path.realpath(path)
            if os.path.commonpath([os.path.realpath(candidate), base]) != base:
                raise UsageError(
                    f"{candidate} leads out of {path} (a symbolic link to {os.path.realpath(candidate)}): the model a "
                    "folder stands for is read only from inside it"
                )
            if candidate.is_file():
                return candidate
    raise UsageError(
        f"{path} is a folder without {BEST_MODEL} or {FINAL_MODEL}: pass a run folder of `deep-sarsa train`, "
        "a checkpoint folder or a model file"
    )


def run_env(run: dict[str, Any], source: pathlib.Path | None = None, trusted: bool = True) -> EnvSettings:
    """
    :param run: a run.json's content
    :param source: the run.json (None: the run being written now)
    :param trusted: whether its settings may run code (:attr:`EnvSettings.trusted`)
    :return: its env settings
    """
    return EnvSettings(run["env_id"], run.get("env_wrapper"), run.get("env_kwargs"), trusted, source)


def env_of(model_path: pathlib.Path, env_id: str | None) -> tuple[EnvSettings, str]:
    """The env to evaluate a model on: --env (with its preset's settings), else the run's run.json; and where it comes from."""
    if env_id is not None:  # typed by the user: made as gym.make makes it
        entry = load_presets().get(env_id)
        return EnvSettings(env_id, entry.env_wrapper, entry.env_kwargs) if entry else EnvSettings(env_id), "preset"
    run_file = _find_run_file(model_path)
    if run_file is None:
        raise UsageError(
            f"{model_path}: no {RUN_FILE} beside the model or in the folders above it to say its env: pass --env ENV_ID"
        )
    _, settings = read_run_settings(run_file)
    return settings, str(run_file)


def load_model(model_path: pathlib.Path, trusted: bool, **kwargs: Any) -> DeepSARSA:
    try:
        return DeepSARSA.load(model_path, device="cpu", trusted=trusted, **kwargs)
    except UnsafeFileError as error:
        raise UsageError(str(error).replace("with trusted=True", "with --trusted")) from error
    except (ValueError, FileNotFoundError, IsADirectoryError) as error:
        raise UsageError(str(error)) from error


def clear_run_folder(output: pathlib.Path, force: bool) -> None:
    """
    Refuse to train into a folder that holds anything (a run's files would mix with the new ones; a link, even a
    dangling one, would be written through), unless --force: then the entries a run writes (:data:`RUN_ENTRIES`) are
    removed, links by ``unlink`` (never followed), and a link left among the others that leads out of the folder is
    refused.
    """
    if os.path.lexists(output) and (output.is_symlink() or not output.is_dir()):
        kind = "a symbolic link" if output.is_symlink() else "a file"
        raise UsageError(f"--output {output} is {kind}: the run folder must be a folder")
    entries = sorted(os.listdir(output)) if output.is_dir() else []
    if not entries:
        return
    ours = [name for name in entries if name in RUN_ENTRIES]
    if not force:
        shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "")
        what = "already holds a run" if ours else "is not empty"
        raise UsageError(
            f"{output} {what} ({shown}): continue a run with `deep-sarsa train --resume {output}`, replace it with "
            "--force (which removes only the entries a run writes), or pass another --output"
        )
    for name in ours:
        entry = output / name
        if entry.is_symlink() or not entry.is_dir():
            entry.unlink()
        else:
            shutil.rmtree(entry)
    check_links(output)


def check_links(output: pathlib.Path) -> None:
    """Refuse a run folder with a symbolic link (at any depth) that leads out of it: a run writes only inside its folder."""
    base = os.path.realpath(output)
    for parent, folders, files in os.walk(output):
        for name in folders + files:
            path = os.path.join(parent, name)
            if os.path.islink(path) and os.path.commonpath([os.path.realpath(path), base]) != base:
                raise UsageError(
                    f"{path} is a symbolic link to {os.path.realpath(path)}, outside the run folder {output}: a run "
                    "writes only inside its folder (replace the link by the file or folder itself)"
                )


def write_json(path: pathlib.Path, content: dict[str, Any]) -> None:
    with atomic_path(path, path.parent) as temporary:
        temporary.write_text(json.dumps(content, indent=2) + "\n")
