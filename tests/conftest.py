"""Shared fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder the current user cannot create files in.

    A plain user gets a read-only folder. Root may write anywhere a mode allows, so root gets a
    folder of the proc filesystem, which refuses new entries to everyone.
    """
    if os.geteuid() == 0:
        yield Path("/proc/self")
        return
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)
