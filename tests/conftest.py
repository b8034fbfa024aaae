"""Shared fixtures.

Keep the suite fast (README's test command must fit in 10 minutes on 2 cores, on a busy machine
too):

- `shared_daemon`: one real `reasam serve` (dsp and spleeter engines, loopback, its own token,
  state and output folders) for the whole test module; a test that only sends jobs and reads
  their own results should take it instead of starting its own (a start and stop cost seconds).
  Give every job an id or output folder of the test's own and assert on those jobs, never on
  daemon-wide counts (other tests of the module share its queue and record). A test that kills,
  restarts or configures the daemon (flags, environment) starts its own:
  `Daemon(tmp_path / "d", *flags).start()` from tests/test_daemon.py.
- No clocks in assertions: wait on conditions (`wait_for` in tests/test_daemon.py), bound only
  "does not hang" generously; speed belongs in bench/.
- The suite also runs under pytest-xdist (`-n 2`, install/test.sh): ports come from the system
  (port 0), folders from tmp_path; anything shared between tests of a module lives in a module
  fixture, which xdist keeps on one worker (`--dist loadfile`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.test_daemon import Daemon


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One `reasam serve` for the module (see the module docstring for when to use it). At the
    end it must stop cleanly, with no traceback in its log."""
    from tests.test_daemon import Daemon

    d = Daemon(tmp_path_factory.mktemp("shared-daemon"), shared=True)
    try:
        yield d.start()
    finally:
        code = d.stop()  # kills it if SIGTERM does not end it in time
    assert code == 0, d.log.read_text()
    assert "Traceback" not in d.log.read_text(), d.log.read_text()


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
