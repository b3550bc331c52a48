"""
What every ``deep-sarsa`` command shares: the consoles, the error types that :func:`deep_sarsa.cli.parser.main` turns
into exit codes, the name of a run's ``run.json``, and how a value is stored in it.
"""

from typing import Any

from rich.console import Console

console = Console()
#: errors go to stderr, unwrapped, so that they can be read (and grepped) whole
errors = Console(stderr=True, soft_wrap=True)

#: the run folder's description of the run (its env, hyperparameters, files)
RUN_FILE = "run.json"


class UsageError(Exception):
    """Bad input from the user: reported without a traceback, exit code 2."""


class MissingExtra(Exception):
    """An optional package that the command needs is not installed: exit code 1."""


class RunFailed(Exception):
    """Training could not go on (e.g. a full disk); the message says what is left: exit code 1."""


def json_value(value: Any) -> Any:
    """
    A hyperparameter's value as JSON stores it: tuples become lists, dicts and lists are converted
    item by item; a value JSON has no type for (none that the command's own parsing produces) is
    stored as its ``repr``.

    :param value: the value
    :return: a value ``json.dumps`` writes
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    return repr(value)
