"""Files that ship with ReaSAM besides its Python code: the REAPER scripts, the service templates.

A wheel carries them inside the package (reasam/reaper_scripts, reasam/service_templates: pyproject
maps the repository's reaper_scripts/ReaSAM and install/ folders there at build time), so that
`reasam install-reaper` and `reasam install-service` work with no checkout. An editable install
(or running from a checkout) has no such folders in the package and reads the repository's own,
the one copy in git.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from .errors import ReasamError

_CHECKOUT = Path(__file__).resolve().parents[2]


def _first(what: str, marker: tuple[str, ...], candidates: tuple[Traversable, ...]) -> Traversable:
    for folder in candidates:
        if folder.joinpath(*marker).is_file():
            return folder
    raise ReasamError(
        "not_found",
        f"the {what} are neither in the installed package nor in a checkout at {_CHECKOUT}; "
        "reinstall ReaSAM from a complete wheel or a clone",
    )


def reaper_scripts() -> Traversable:
    """The ReaSAM ReaScripts folder: the actions at the top, their modules in lib/."""
    return _first(
        "ReaSAM scripts",
        ("lib", "actions.lua"),
        (files("reasam") / "reaper_scripts", _CHECKOUT / "reaper_scripts" / "ReaSAM"),
    )


def service_templates() -> Traversable:
    """The folder of the login-service templates (systemd unit, launchd plist, Windows .cmd)."""
    return _first(
        "service templates",
        ("reasam.service",),
        (files("reasam") / "service_templates", _CHECKOUT / "install"),
    )
