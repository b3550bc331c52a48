"""A small tmpfs for the full-disk tests: a real ENOSPC (mounting one needs root and ``mount``)."""

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[str | None]:
    """
    Mount a tmpfs of ``size`` (``mount``'s notation: ``64k``, ``2m``) on the existing folder ``mount_point``
    and unmount it afterwards.

    :return: None when it is mounted, else why it cannot be
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        yield "a real full disk needs root and mount to mount a small tmpfs"
        return
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        yield f"cannot mount a tmpfs here: {result.stderr.strip()}"
        return
    try:
        yield None
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@contextmanager
def small_disk(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``tmp_path / "disk"``; the test is skipped, saying why, where none can be mounted."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    with tmpfs(mount_point, size) as problem:
        if problem is not None:
            pytest.skip(problem)
        yield mount_point
