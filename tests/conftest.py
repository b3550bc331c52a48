"""Settings shared by the tests: the signing key of checkpoints lives in a temporary folder."""

import os
from collections.abc import Iterator

import pytest

from deep_sarsa.signing import CONFIG_DIR_VARIABLE


@pytest.fixture(autouse=True, scope="session")
def temporary_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Never write a key into the user's config folder (subprocesses inherit the variable)."""
    previous = os.environ.get(CONFIG_DIR_VARIABLE)
    os.environ[CONFIG_DIR_VARIABLE] = str(tmp_path_factory.mktemp("config"))
    yield
    if previous is None:
        del os.environ[CONFIG_DIR_VARIABLE]
    else:
        os.environ[CONFIG_DIR_VARIABLE] = previous
