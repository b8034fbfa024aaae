"""Daemon settings (file < environment < flags), the token file, and the login services."""

from __future__ import annotations

import logging
import os
import plistlib
import re
import sys
from pathlib import Path

import pytest
from reasam import cli, config, models
from reasam.errors import ReasamError
from reasam.osc import ModelBridge


@pytest.fixture(autouse=True)
def _no_user_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read the developer's ~/.config/reasam/config.toml or REASAM_* variables: loads that
    fall back to the default config file find an empty config folder here instead."""
    for name in list(os.environ):
        if name.startswith("REASAM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the config folder off XDG (macOS, Windows)
    monkeypatch.setenv("APPDATA", str(tmp_path / "appdata"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    file = write(
        tmp_path / "c.toml", 'port = 1111\nout = "/srv/file"\nkeep_alive = 3\n[daemon]\nqueue_limit = 7\n'
    )
    env = {"REASAM_PORT": "2222", "REASAM_OUT": "/srv/env"}
    assert config.load({}, env={}, config_file=file).port == 1111
    both = config.load({}, env=env, config_file=file)
    assert (both.port, both.out, both.keep_alive, both.queue_limit) == (2222, Path("/srv/env"), 3.0, 7)
    flagged = config.load({"port": 3333}, env=env, config_file=file)
    assert (flagged.port, flagged.out) == (3333, Path("/srv/env"))
    assert "flags port" in "; ".join(flagged.sources)


def test_config_file_from_environment_and_defaults(tmp_path: Path) -> None:
    file = write(tmp_path / "other.toml", 'host = "::1"\ntoken = false\n')
    settings = config.load({}, env={"REASAM_CONFIG": str(file)})
    assert settings.host == "::1" and not settings.token and settings.loopback
    settings.check()
    with pytest.raises(ReasamError, match="config file not found"):
        config.load({}, env={"REASAM_CONFIG": str(tmp_path / "missing.toml")})
    assert config.default_config_file().is_relative_to(tmp_path)  # never the developer's own
    defaults = config.load({}, env={}, config_file=None)
    assert defaults.port == config.DEFAULT_PORT and defaults.host == "127.0.0.1" and defaults.token


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prot = 9000\n", "unknown key(s) prot"),
        ("port = 70000\n", "between 0 and 65535"),
        ('quality = "great"\n', "must be one of fast, balanced, best"),
        ("port = \n", "not valid TOML"),
        ("token = 3\n", "expected true or false"),
    ],
)
def test_bad_config_is_an_error_not_ignored(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ReasamError, match=re.escape(message)):
        config.load({}, env={}, config_file=write(tmp_path / "c.toml", text))


def test_no_token_only_on_loopback() -> None:
    assert not config.load({}, env={"REASAM_NO_TOKEN": "1"}, config_file=None).token
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        config.load({"host": host, "token": False}, env={}).check()
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        with pytest.raises(ReasamError, match="loopback"):
            config.load({"host": host, "token": False}, env={}).check()
    config.load({"host": "0.0.0.0"}, env={}).check()  # with a token, any interface may be bound


def test_token_file_created_private_and_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cfg" / "reasam" / "token"
    token = config.ensure_token(path)
    assert len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert config.ensure_token(path) == token
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="reasam.config"):
        assert config.ensure_token(path) == token and path.stat().st_mode & 0o777 == 0o600
    assert str(path) in caplog.text and "644" in caplog.text  # tightened, and said so
    settings = config.load({"token_file": str(path)}, env={})
    assert config.client_token(settings) == token
    assert config.client_token(config.load({"token_file": str(tmp_path / "none")}, env={})) is None


def test_install_service_linux_writes_the_unit_without_systemctl(tmp_path: Path) -> None:
    def no_calls(cmd: list[str]) -> None:
        raise AssertionError(f"must not run {cmd}")

    path, commands = config.install_service("linux", tmp_path / "user", enable=False, run=no_calls)
    assert path == tmp_path / "user" / "reasam.service" and commands == []
    text = path.read_text()
    assert f'ExecStart="{sys.executable}" -m reasam.cli serve' in text
    assert "@" not in text.replace("default.target", "")
    ran: list[list[str]] = []
    config.install_service("linux", tmp_path / "user", enable=True, run=lambda c: ran.append(c))
    assert ran == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", "reasam.service"],
    ]


def test_install_service_default_dest_is_xdg_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    code = cli.main(["install-service", "--platform", "linux", "--no-enable", "--", "--port", "9000"])
    assert code == 0
    unit = tmp_path / "xdg" / "systemd" / "user" / "reasam.service"
    assert "serve --port 9000" in unit.read_text()


def test_install_service_macos_and_windows_render(tmp_path: Path) -> None:
    plist, _ = config.install_service("macos", tmp_path, enable=False, extra_args=["--port", "9000"])
    data = plistlib.loads(plist.read_bytes())
    assert data["Label"] == "com.reasam.daemon"
    assert data["ProgramArguments"][1:] == ["-m", "reasam.cli", "serve", "--port", "9000"]
    cmd, _ = config.install_service("windows", tmp_path, enable=False)
    raw = cmd.read_bytes()
    assert b"\r\n" in raw and b"-m reasam.cli serve" in raw and b"@PYTHON@" not in raw


def test_model_bridge_gives_sam_the_daemons_keep_alive() -> None:
    old = models.set_default_manager(None)
    try:
        bridge = ModelBridge(keep_alive=0.0)
        bridge.configure()
        assert bridge.manager is models.default_manager()
        assert models.default_manager().settings.keep_alive_minutes == 0.0
        bridge.tick()  # nothing loaded: a no-op, never an error
    finally:
        models.set_default_manager(old)
