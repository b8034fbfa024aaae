"""Daemon settings: a TOML file, environment variables and command-line flags, in that order.

Flags win over environment variables, which win over the file, which wins over the defaults
(protocol, "Starting it"). The same loader serves `reasam serve` and the client commands
(`send`, `status`, `cancel`, `ping`), so a client finds the daemon's port and token file from the
same config the daemon read without being told twice.

Unknown keys in the file and unparsable values anywhere are errors, never silently ignored: a
misspelt `prot = 9000` that quietly left the daemon on its default port would be the worst
kind of surprise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import stat
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ReasamError, detail
from .request import ENGINES, QUALITIES

log = logging.getLogger("reasam.config")

DEFAULT_PORT = 9797
DEFAULT_HOST = "127.0.0.1"
APP = "reasam"


def config_dir() -> Path:
    """The user's config folder for ReaSAM: XDG on Linux, the platform's own place elsewhere."""
    if sys.platform == "win32":
        base = os.environ.get("APPDATA") or str(Path.home() / "AppData" / "Roaming")
        return Path(base) / "ReaSAM"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "ReaSAM"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / APP


def data_dir() -> Path:
    """Where the daemon keeps its journal, cache and logs (not the user's stems)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "ReaSAM"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "ReaSAM"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / APP


def default_out() -> Path:
    """Default output root: a visible folder, since users go looking for their stems there."""
    return Path.home() / "ReaSAM"


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ReasamError("bad_request", f"{name}: expected true or false, got {value!r}")


def _as_int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise ReasamError("bad_request", f"{name}: expected a whole number, got {value!r}")
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ReasamError("bad_request", f"{name}: expected a whole number, got {value!r}") from None
    if not lo <= number <= hi:
        raise ReasamError("bad_request", f"{name}: must be between {lo} and {hi}, got {number}")
    return number


def _as_float(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise ReasamError("bad_request", f"{name}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ReasamError("bad_request", f"{name}: expected a number, got {value!r}") from None


def _as_path(value: Any, name: str) -> Path:
    text = str(value).strip()
    if not text:
        raise ReasamError("bad_request", f"{name}: empty path")
    return Path(os.path.expandvars(text)).expanduser().absolute()


def _as_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise ReasamError("bad_request", f"{name}: must be one of {', '.join(choices)}, got {value!r}")
    return text


@dataclass(frozen=True)
class Settings:
    """Everything `reasam serve` and its clients need; see README, "The daemon"."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    out: Path = field(default_factory=default_out)
    token_file: Path = field(default_factory=lambda: config_dir() / "token")
    # False turns tokens off; only allowed when `host` is a loopback address.
    token: bool = True
    state_dir: Path = field(default_factory=data_dir)
    # Minutes a model stays loaded while idle (0: unload after each job; negative: never).
    keep_alive: float = 10.0
    # Load the default engine's model at start (True) or on the first job that needs it.
    preload: bool = False
    engine: str = "auto"
    quality: str = "balanced"
    queue_limit: int = 256
    cache_mb: int = 2048  # 0 turns the result cache off
    log_file: Path | None = None  # None: <state_dir>/logs/reasam.log
    log_level: str = "info"
    # Seconds a stopping daemon lets the running job finish before journaling it for next start.
    shutdown_grace: float = 5.0
    # Watch folders (watch.py): the folders, the seconds a dropped file must stay unchanged
    # before it is taken, and how many files per folder may be jobs at once.
    watch: tuple[Path, ...] = ()
    watch_settle: float = 2.0
    watch_max_queued: int = 8
    # Where the settings came from, for the log line at start (not a setting).
    sources: tuple[str, ...] = ()

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.sqlite3"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def resolved_log_file(self) -> Path:
        return self.log_file or self.state_dir / "logs" / "reasam.log"

    def check(self) -> Settings:
        """Refuse combinations that would be unsafe; return self for chaining."""
        if not self.token and not self.loopback:
            raise ReasamError(
                "bad_request",
                f"--no-token is only allowed on a loopback address, not on {self.host}: "
                "anyone on the network could run jobs as you",
            )
        return self


# name -> (parser, environment variable). The parser turns a file/env/flag value into the field.
_PARSERS: dict[str, Any] = {
    "host": lambda v, n: _host(v, n),
    "port": lambda v, n: _as_int(v, n, 0, 65535),
    "out": _as_path,
    "token_file": _as_path,
    "token": _as_bool,
    "state_dir": _as_path,
    "keep_alive": _as_float,
    "preload": _as_bool,
    "engine": lambda v, n: _as_choice(v, n, ENGINES),
    "quality": lambda v, n: _as_choice(v, n, QUALITIES),
    "queue_limit": lambda v, n: _as_int(v, n, 1, 1_000_000),
    "cache_mb": lambda v, n: _as_int(v, n, 0, 10_000_000),
    "log_file": _as_path,
    "log_level": lambda v, n: _as_choice(v, n, ("debug", "info", "warning", "error")),
    "shutdown_grace": _as_float,
    "watch": lambda v, n: _as_paths(v, n),
    "watch_settle": lambda v, n: _as_seconds(v, n),
    "watch_max_queued": lambda v, n: _as_int(v, n, 1, 100_000),
}
# Keys of the config file's [watch] table → settings.
_WATCH_TABLE = {"folders": "watch", "settle": "watch_settle", "max_queued": "watch_max_queued"}
ENV = {name: f"REASAM_{name.upper()}" for name in _PARSERS}
# `REASAM_TOKEN` would read as "the token itself"; the policy switch is spelt NO_TOKEN instead.
del ENV["token"]
ENV_NO_TOKEN = "REASAM_NO_TOKEN"
ENV_CONFIG = "REASAM_CONFIG"


def _as_paths(value: Any, name: str) -> tuple[Path, ...]:
    """Folders from a list (file, repeated flag) or os.pathsep-separated text (environment)."""
    items = value if isinstance(value, list | tuple) else str(value).split(os.pathsep)
    paths = tuple(_as_path(v, name) for v in items if str(v).strip())
    return tuple(dict.fromkeys(paths))


def _as_seconds(value: Any, name: str) -> float:
    seconds = _as_float(value, name)
    if not 0 <= seconds <= 3600:
        raise ReasamError("bad_request", f"{name}: must be between 0 and 3600 seconds, got {value!r}")
    return seconds


def _host(value: Any, name: str) -> str:
    text = str(value).strip()
    if not text or len(text) > 255 or any(c.isspace() for c in text):
        raise ReasamError("bad_request", f"{name}: not a host address: {value!r}")
    return text


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_config_file() -> Path:
    return config_dir() / "config.toml"


def read_file(path: Path, required: bool) -> dict[str, Any]:
    """The settings in a TOML file; a missing default file is simply empty."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if required:
            raise ReasamError("not_found", f"{path}: config file not found") from None
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ReasamError("bad_request", f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ReasamError("bad_request", f"{path}: cannot read config file ({exc.strerror})") from None
    # A [daemon] table is accepted as well as top-level keys, so one file can later hold other
    # sections (watch folder, batch) without the daemon's keys moving.
    if isinstance(data.get("daemon"), dict):
        data = {**{k: v for k, v in data.items() if k != "daemon"}, **data["daemon"]}
    if isinstance(data.get("watch"), dict):
        table = data.pop("watch")
        unknown = sorted(set(table) - set(_WATCH_TABLE))
        if unknown:
            raise ReasamError(
                "bad_request",
                f"{path}: unknown key(s) {', '.join(unknown)} in [watch]; known: {', '.join(_WATCH_TABLE)}",
            )
        data.update({_WATCH_TABLE[k]: v for k, v in table.items()})
    unknown = sorted(set(data) - set(_PARSERS))
    if unknown:
        raise ReasamError(
            "bad_request", f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_PARSERS)}"
        )
    return {k: _PARSERS[k](v, f"{path}: {k}") for k, v in data.items()}


def read_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, var in ENV.items():
        if env.get(var, "") != "":
            out[name] = _PARSERS[name](env[var], var)
    if env.get(ENV_NO_TOKEN, "") != "":
        out["token"] = not _as_bool(env[ENV_NO_TOKEN], ENV_NO_TOKEN)
    return out


def load(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Settings from defaults < file < environment < flags. `flags` holds only what was given.

    The file is `config_file`, else $REASAM_CONFIG, else `config.toml` in the config folder (an
    explicitly named file must exist; the default one may be absent).
    """
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    if config_file is None and env.get(ENV_CONFIG):
        config_file = Path(env[ENV_CONFIG]).expanduser()
    required = config_file is not None
    path = config_file if config_file is not None else default_config_file()
    from_file = read_file(path, required)
    from_env = read_env(env)
    from_flags = {k: _PARSERS[k](v, f"--{k.replace('_', '-')}") for k, v in flags.items()}
    sources = []
    if from_file:
        sources.append(f"file {path}")
    if from_env:
        sources.append("environment " + ", ".join(sorted(from_env)))
    if from_flags:
        sources.append("flags " + ", ".join(sorted(from_flags)))
    merged = {**from_file, **from_env, **from_flags}
    return replace(Settings(), **merged, sources=tuple(sources))


def setting_names() -> list[str]:
    return [f.name for f in fields(Settings) if f.name != "sources"]


def _private_dir(folder: Path) -> None:
    """Create `folder` (and parents) with owner-only access where we create it."""
    if folder.is_dir():
        return
    folder.mkdir(parents=True, exist_ok=True)
    if os.name == "posix":
        with contextlib.suppress(OSError):
            folder.chmod(0o700)


def ensure_token(path: Path) -> str:
    """The token in `path`, creating the file with a fresh random token (mode 0600) if missing.

    Created with O_EXCL and mode 0600 in one step, so there is no moment at which another user
    could read it. An existing file readable by others is tightened and a warning logged (the
    token itself is kept: clients already hold it).
    """
    _private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_token(path, tighten=True)
    token = secrets.token_urlsafe(24)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token


def read_token(path: Path, tighten: bool = False) -> str:
    """Read the token; with `tighten`, make a group/other-readable file owner-only first."""
    try:
        if tighten and os.name == "posix":
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                path.chmod(0o600)
                log.warning(
                    "token file %s was open to group or others (mode %o); made owner-only (0600)",
                    path,
                    stat.S_IMODE(mode),
                )
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ReasamError("not_found", f"{path}: token file not found") from None
    except OSError as exc:
        raise ReasamError("unauthorized", f"{path}: cannot read token file ({exc.strerror})") from None
    if not token or len(token) > 256 or any(c.isspace() for c in token):
        raise ReasamError("unauthorized", f"{path}: token file holds no valid token")
    return token


def client_token(settings: Settings) -> str | None:
    """The token a client sends: None when the file is absent (a daemon started with --no-token)."""
    try:
        return read_token(settings.token_file)
    except ReasamError as exc:
        if exc.code == "not_found":
            return None
        raise


# ---------------------------------------------------------------------------------------------
# Running the daemon at login

SERVICE_FILES = {
    "linux": "reasam.service",
    "macos": "com.reasam.daemon.plist",
    "windows": "reasam-startup.cmd",
}


def current_platform() -> str:
    if sys.platform == "win32":
        return "windows"
    if sys.platform == "darwin":
        return "macos"
    return "linux"


def default_service_dir(platform: str) -> Path:
    if platform == "linux":
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "systemd" / "user"
    if platform == "macos":
        return Path.home() / "Library" / "LaunchAgents"
    base = os.environ.get("APPDATA") or str(Path.home() / "AppData" / "Roaming")
    return Path(base) / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup"


def _service_python(platform: str) -> str:
    python = Path(sys.executable)
    if platform == "windows":
        # pythonw has no console window; it sits next to python.exe in every Windows install.
        windowed = python.with_name("pythonw.exe")
        if windowed.exists():
            return str(windowed)
    return str(python)


def render_service(platform: str, extra_args: list[str] | None = None, python: str | None = None) -> str:
    """The service file for `platform` with the Python and extra `reasam serve` arguments."""
    from xml.sax.saxutils import escape

    from .bundled import service_templates

    args = list(extra_args or [])
    text = (service_templates() / SERVICE_FILES[platform]).read_text(encoding="utf-8")
    python = python or _service_python(platform)
    if platform == "macos":
        xml_args = "".join(f"    <string>{escape(a)}</string>\n" for a in args)
        return (
            text.replace("@PYTHON@", escape(python))
            .replace("@ARGS_XML@", xml_args)
            .replace("@HOME@", escape(str(Path.home())))
        )
    quoted = " ".join(f'"{a}"' if any(c.isspace() for c in a) else a for a in args)
    return text.replace("@PYTHON@", python).replace("@ARGS@", quoted).replace(" \r\n", "\r\n").rstrip(" ")


def install_service(
    platform: str | None = None,
    dest: Path | None = None,
    enable: bool = True,
    extra_args: list[str] | None = None,
    run: Any = None,
) -> tuple[Path, list[list[str]]]:
    """Write the platform's service file; with `enable`, register and start it.

    Returns the file written and the commands run. `enable=False` only writes the file (for a
    look before use, and for tests): no systemctl, launchctl or start.
    """
    import subprocess

    platform = platform or current_platform()
    text = render_service(platform, extra_args)  # before any write: a missing template writes nothing
    folder = (dest or default_service_dir(platform)).expanduser().absolute()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SERVICE_FILES[platform]
    temp = path.with_name(f".{path.name}.partial")
    newline = "\r\n" if platform == "windows" else "\n"
    with open(temp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text.replace("\r\n", "\n").replace("\n", newline))
    os.replace(temp, path)
    commands: list[list[str]] = []
    if enable:
        if platform == "linux":
            commands = [
                ["systemctl", "--user", "daemon-reload"],
                ["systemctl", "--user", "enable", "--now", SERVICE_FILES["linux"]],
            ]
        elif platform == "macos":
            commands = [["launchctl", "unload", str(path)], ["launchctl", "load", "-w", str(path)]]
        runner = run or (lambda cmd: subprocess.run(cmd, check=False, capture_output=True, text=True))
        for cmd in commands:
            result = runner(cmd)
            code = getattr(result, "returncode", 0)
            if code != 0 and cmd[1] != "unload":
                said = detail(getattr(result, "stderr", "") or "") or "no message"
                raise ReasamError("internal", f"{' '.join(cmd)} failed ({code}): {said}")
    return path, commands
