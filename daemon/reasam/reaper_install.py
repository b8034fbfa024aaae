"""`reasam install-reaper`: the ReaScripts into REAPER's resource folder, all of them or nothing.

Every file (the actions, their lib/ modules, the recorded reasam command) is first written under
a temporary name beside its target; only once all are written are they renamed into place. A
failure on the way (a folder in the way, a full disk, no permission) removes what this run wrote
and created, so REAPER never sees half an update.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

from .errors import ReasamError, output_error

# ReaPack's package metadata: not an action, and REAPER has no use for it outside ReaPack.
_METAPACKAGE = "ReaSAM.lua"


@dataclass
class Installed:
    command: str
    dest: Path | None  # the scripts folder; None with command_only
    actions: list[Path]


def default_resource_path() -> Path:
    """Where REAPER keeps its resources unless it runs portable."""
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming") / "REAPER"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "REAPER"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "REAPER"


def resource_folder(given: Path | None) -> Path:
    """The resource folder to install into; it must exist (REAPER creates it on first start)."""
    if given is not None:
        res = given.expanduser().absolute()
        if not res.exists():
            raise ReasamError("not_found", f"{res} does not exist")
        if not res.is_dir():
            raise ReasamError("not_found", f"{res} is not a folder")
        return res
    res = default_resource_path()
    if not res.is_dir():
        raise ReasamError(
            "not_found",
            f"{res}: no REAPER resource folder; start REAPER once, or pass --resource-path "
            "(REAPER: Options > Show REAPER resource path in explorer/finder)",
        )
    return res


def reasam_command() -> str:
    """The reasam executable the actions will start: the one running now, where it is a file."""
    exe = Path(sys.argv[0]).absolute()
    if not (exe.name.startswith("reasam") and exe.is_file()):
        exe = Path(sys.executable).with_name("reasam.exe" if sys.platform == "win32" else "reasam")
    return str(exe) if exe.is_file() else (shutil.which("reasam") or "reasam")


def _script_files(src: Traversable) -> list[tuple[str, Traversable]]:
    """(relative path, file) of the actions, then of lib/: what REAPER needs, in that order."""
    if not src.joinpath("lib").is_dir():
        raise ReasamError("not_found", f"{src}: the ReaSAM scripts are not here (no lib/ folder)")
    top = sorted((f for f in src.iterdir() if f.name.endswith(".lua") and f.is_file()), key=lambda f: f.name)
    lib = sorted(
        (f for f in src.joinpath("lib").iterdir() if f.name.endswith(".lua") and f.is_file()),
        key=lambda f: f.name,
    )
    return [(f.name, f) for f in top if f.name != _METAPACKAGE] + [(f"lib/{f.name}", f) for f in lib]


def install(resource: Path, scripts: Traversable | None, command_only: bool = False) -> Installed:
    """Install into `resource` (an existing folder); `scripts` defaults to the bundled ones."""
    from .bundled import reaper_scripts

    command = reasam_command()
    files: list[tuple[Path, bytes]] = []
    dest = None
    actions: list[Path] = []
    if not command_only:
        dest = resource / "Scripts" / "ReaSAM"
        for rel, f in _script_files(scripts if scripts is not None else reaper_scripts()):
            files.append((dest / rel, f.read_bytes()))
            if "/" not in rel:
                actions.append(dest / rel)
    files.append((resource / "ReaSAM" / "reasam-command.txt", (command + "\n").encode("utf-8")))
    write_all(files)
    return Installed(command, dest, actions)


def write_all(files: list[tuple[Path, bytes]]) -> None:
    """Write every (path, bytes) or, on the first failure, none: temporary names first, then renames."""
    created: list[Path] = []
    staged: list[tuple[Path, Path]] = []
    replaced = 0  # renamed into place: only a rename failing midway (rare) leaves any
    target = files[0][0] if files else Path()
    try:
        for target, data in files:
            _make_parents(target.parent, created)
            temp = target.with_name(f".{target.name}.partial")
            staged.append((temp, target))
            temp.write_bytes(data)
        for _, target in staged:
            if target.is_dir():  # os.replace would fail on some systems and not others: say it plainly
                raise IsADirectoryError(errno.EISDIR, "a folder is in the way", str(target))
        for temp, target in staged:
            os.replace(temp, target)
            replaced += 1
    except OSError as exc:
        for temp, _ in staged:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        done = f"{replaced} of {len(files)} files were updated" if replaced else "nothing was installed"
        raise ReasamError("bad_request", f"{output_error(exc, target)}; {done}", usage=False) from None


def _make_parents(folder: Path, created: list[Path]) -> None:
    """Create `folder` and its missing parents, noting each one created (to remove on failure)."""
    missing = []
    while not folder.exists() and not folder.is_symlink():
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        d.mkdir()
        created.append(d)
