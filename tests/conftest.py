"""Shared fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
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


_MOUNT_THEN_RUN = 'mount -t tmpfs -o size="$1" reasam-test "$2" && shift 2 && exec "$@"'


def on_small_filesystem(
    mount: Path, size: str, *argv: str, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `argv` with a real tmpfs of `size` mounted at `mount`, for a disk that really fills up
    (ENOSPC from the kernel, not a simulated error).

    The mount lives in a private mount namespace of the child only: `unshare --user
    --map-root-user --mount` needs no root where unprivileged user namespaces are allowed (most
    Linux systems); root without them gets a plain `unshare --mount`. Only the child sees the
    mount, so a test runs its whole scenario there and reports back on stdout.
    """
    mount.mkdir(parents=True, exist_ok=True)
    for prefix in (["unshare", "--user", "--map-root-user", "--mount"], ["unshare", "--mount"]):
        if shutil.which("unshare") and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            break
    else:
        pytest.skip("no private mount namespace here (unshare refused), so no small file system to fill")
    return subprocess.run(
        [*prefix, "sh", "-c", _MOUNT_THEN_RUN, "sh", size, str(mount), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
