"""Optuna storages for tuning across processes (a SQLite or journal file) and machines (PostgreSQL)."""

from typing import Literal

import optuna
from optuna.storages.journal import JournalFileBackend


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """
    The Optuna storage of a ``--storage`` argument, as rl-zoo3 reads it: a path ending in ``.log`` is a journal file
    (several processes on one machine), anything else a database URL (``sqlite:///file.db``,
    ``postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB``).

    :param storage: the ``--storage`` argument
    :return: the storage
    """
    if not isinstance(storage, str) or not storage:
        raise ValueError(f"storage must be a database URL or a journal file ending in .log, got {storage!r}")
    if storage.endswith(".log"):
        return optuna.storages.JournalStorage(JournalFileBackend(storage))
    if storage.startswith("postgresql://"):
        raise ValueError(
            "storage: write postgresql+psycopg://... (psycopg 3, installed by deep-sarsa[zoo]); plain postgresql:// "
            "makes SQLAlchemy look for psycopg2"
        )
    if "://" not in storage:
        raise ValueError(f"storage must be a database URL (scheme://...) or a journal file ending in .log, got {storage!r}")
    try:
        return optuna.storages.RDBStorage(storage)
    except (ImportError, ModuleNotFoundError) as error:
        raise ValueError(f"storage {storage.split('@')[-1]!r}: the database driver is missing: {error}") from error


def create_study_in(storage: str, study_name: str, direction: Literal["maximize", "minimize"] = "maximize") -> bool:
    """
    Create the study ``study_name`` in ``storage`` unless it exists.

    :param storage: a ``--storage`` argument (:func:`open_storage`)
    :param study_name: the study's name
    :param direction: ``"maximize"`` (rl-zoo3's) or ``"minimize"``
    :return: whether it was created (False: it existed)
    """
    if not study_name:
        raise ValueError("study_name must be a non-empty string")
    opened = open_storage(storage)
    try:
        existing = opened.get_study_id_from_name(study_name)
    except KeyError:
        existing = None
    if existing is not None:
        directions = opened.get_study_directions(existing)
        if [d.name.lower() for d in directions] != [direction]:
            raise ValueError(
                f"study {study_name!r} exists with direction {[d.name.lower() for d in directions]}, not {direction}"
            )
        return False
    optuna.create_study(storage=opened, study_name=study_name, direction=direction, load_if_exists=True)
    return True
