"""The `reasam` command line: a front door that builds requests and hands them on.

Exit codes: 0 success, 2 usage errors (bad arguments, a prompt no engine understands), 1 runtime
errors (unreadable input, unwritable output, engine failure). Errors are one line on stderr;
`--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .cli_separate import SEED_HELP
from .cli_separate import add_parser as _add_separate
from .errors import NoAnswer, ReasamError

if TYPE_CHECKING:
    from . import config
    from .client import Client

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_NO_ANSWER = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"reasam: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_USAGE)


def _add_engines(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("engines", help="list engines, their devices and the prompts they understand")
    p.add_argument("--json", action="store_true", help="print the engines as a JSON list")
    p.add_argument(
        "--load",
        action="store_true",
        help="load each usable engine's model first, to report its load time, device, dtype and memory",
    )
    p.add_argument(
        "--quality",
        default="balanced",
        choices=("fast", "balanced", "best"),
        help="with --load: load what this preset needs (SAM rankers / span predictor)",
    )
    p.set_defaults(func=_cmd_engines)


def _cmd_engines(args: argparse.Namespace) -> int:
    from . import engines

    if args.load:
        for name in engines.names():
            engine = engines.get(name)
            if engine.unavailable_reason() is None:
                engine.warm(args.quality)
    rows = [dict(engines.get(name).describe(), state=engines.get(name).state()) for name in engines.names()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for row in rows:
        state = "ready" if row["available"] else f"not usable: {row['reason']}"
        print(f"{row['name']:<9} {state}")
        print(f"          {row['description']}")
        print(
            f"          device: {row['device']}  rate: {row['sample_rate'] or 'any'} Hz  "
            f"channels: {row['channels'] or 'any'}"
        )
        prompts = [f"{k} ({', '.join(v)})" if v else k for k, v in row["prompts"].items()]
        if row["free_text"]:
            prompts.insert(0, "any text")
        if row["spans"]:
            prompts.append("+/- time spans")
        print(f"          prompts: {'; '.join(prompts) or 'none'}")
        if row["available"]:
            print(f"          model: {row.get('model') or 'none (no weights)'}: {row['state']}")
    return EXIT_OK


_SAM_VARIANTS = "small, base, large, small-tv, base-tv, large-tv"


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list, download or delete SAM-Audio weights",
        description="SAM-Audio weights live in the huggingface_hub cache (HF_HUB_CACHE / HF_HOME). "
        "The checkpoints are gated: accept the licence on the hub and log in (`hf auth login` or "
        "HF_TOKEN) before `pull`.",
    )
    msub = p.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    p_list = msub.add_parser("list", help="variants, where their weights are and their size")
    p_list.add_argument("--json", action="store_true", help="print the variants as a JSON list")
    p_list.set_defaults(func=_cmd_models_list)
    p_pull = msub.add_parser(
        "pull", help="download a variant, its T5 text encoder and the judge model into the hub cache"
    )
    p_pull.add_argument(
        "variant", nargs="?", default=None, help=f"{_SAM_VARIANTS} (default: REASAM_SAM_VARIANT, else auto)"
    )
    p_pull.add_argument("--token", default=None, help="hub token (default: HF_TOKEN or `hf auth login`)")
    p_pull.add_argument("--revision", default=None, help="a branch, tag or commit of the model repo")
    p_pull.set_defaults(func=_cmd_models_pull)
    p_rm = msub.add_parser("rm", help="delete a variant from the hub cache")
    p_rm.add_argument("variant", help=_SAM_VARIANTS)
    p_rm.set_defaults(func=_cmd_models_rm)


def _models_manager(args: argparse.Namespace):
    import dataclasses

    from . import models

    manager = models.default_manager()
    changes = {k: getattr(args, k) for k in ("token", "revision") if getattr(args, k, None)}
    return models.ModelManager(dataclasses.replace(manager.settings, **changes)) if changes else manager


def _cmd_models_list(args: argparse.Namespace) -> int:
    from .models import format_bytes

    rows = _models_manager(args).list()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for row in rows:
        where = f"{row['source']}: {row['path']}" if row["downloaded"] else "not downloaded"
        size = f"  {format_bytes(row['size_bytes'])}" if row["size_bytes"] is not None else ""
        loaded = "  (loaded)" if row["loaded"] else ""
        print(f"{row['variant']:<16} {where}{size}{loaded}")
    # What every variant also loads (t5-base) and what balanced/best rerank with (the judge).
    for name, folder in _models_manager(args).companions().items():
        print(f"{name:<16} {folder if folder else 'not downloaded (reasam models pull)'}")
    return EXIT_OK


def _cmd_models_pull(args: argparse.Namespace) -> int:
    manager = _models_manager(args)
    variant = manager.variant(args.variant)
    sys.stderr.write(f"reasam: fetching SAM-Audio {variant}, its T5 text encoder and the judge ...\n")
    pulled = manager.pull(variant)
    print(f"model         {pulled.model}")
    print(f"text encoder  {pulled.text_encoder}")
    if isinstance(pulled.judge, Path):
        print(f"judge         {pulled.judge}")
    else:
        # Not fatal: jobs run; the presets that rerank say in their manifest that they did not.
        sys.stderr.write(f"reasam: warning: no reranking for balanced/best: {pulled.judge.message}\n")
    return EXIT_OK


def _cmd_models_rm(args: argparse.Namespace) -> int:
    from .models import format_bytes

    freed = _models_manager(args).remove(args.variant)
    print(f"removed {args.variant} ({format_bytes(freed)})")
    return EXIT_OK


def _add_example(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("example", help="write a short generated song to try ReaSAM on")
    p.add_argument(
        "path",
        type=Path,
        nargs="?",
        default=Path("examples/demo.wav"),
        help="where to write it (default examples/demo.wav; an existing file is kept, not rewritten)",
    )
    p.set_defaults(func=_cmd_example)


def _cmd_example(args: argparse.Namespace) -> int:
    from .example import write_example

    path = args.path.expanduser().absolute()
    if path.exists():
        print(path)
        return EXIT_OK
    write_example(path)
    print(path)
    return EXIT_OK


def _add_install_reaper(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "install-reaper",
        help="copy the ReaSAM actions into REAPER's Scripts folder",
        description="Copy the ReaSAM ReaScripts into <resource path>/Scripts/ReaSAM, record this reasam "
        "command for them (<resource path>/ReaSAM/reasam-command.txt) and print how to add the actions.",
    )
    p.add_argument(
        "--resource-path",
        type=Path,
        default=None,
        help="REAPER's resource folder (REAPER: Options > Show REAPER resource path); default: usual place",
    )
    p.add_argument(
        "--scripts", type=Path, default=None, help="the ReaSAM scripts folder (default: this install's)"
    )
    p.add_argument(
        "--command-only", action="store_true", help="only record the reasam command (for ReaPack installs)"
    )
    p.set_defaults(func=_cmd_install_reaper)


def _cmd_install_reaper(args: argparse.Namespace) -> int:
    from . import reaper_install

    res = reaper_install.resource_folder(args.resource_path)
    scripts = args.scripts.expanduser().absolute() if args.scripts is not None else None
    done = reaper_install.install(res, scripts, command_only=args.command_only)
    print(f"the actions will run: {done.command}")
    if done.dest is None:
        return EXIT_OK
    print(f"copied {len(done.actions)} actions and their lib/ to {done.dest}")
    print("In REAPER: Actions > Show action list > New action... > Load ReaScript..., select these files:")
    for a in done.actions:
        print(f"  {a.name}")
    print('Then select "Script: Separate selection - vocals.lua", click Add... (Shortcuts) and press a key.')
    return EXIT_OK


def _settings_flags(p: argparse.ArgumentParser, serve_flags: bool) -> None:
    from . import config

    p.add_argument(
        "--config", type=Path, default=None, help="config file (default: config.toml in the config folder)"
    )
    p.add_argument("--host", default=None, help=f"address (default {config.DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=None, help=f"UDP port (default {config.DEFAULT_PORT})")
    p.add_argument(
        "--token-file", type=Path, default=None, help="token file (default: <config folder>/token)"
    )
    if serve_flags:
        p.add_argument("--out", type=Path, default=None, help="output root (default ~/ReaSAM)")
        p.add_argument(
            "--no-token",
            action="store_true",
            help="accept requests without a token (loopback addresses only)",
        )
        p.add_argument("--state-dir", type=Path, default=None, help="journal, cache and logs")
        p.add_argument(
            "--keep-alive", type=float, default=None, metavar="MIN", help="idle minutes a model stays loaded"
        )
        p.add_argument(
            "--preload", action="store_true", default=None, help="load the default engine's model at start"
        )
        p.add_argument(
            "--engine", default=None, choices=("auto", "sam", "spleeter", "dsp"), help="default engine"
        )
        p.add_argument(
            "--quality", default=None, choices=("fast", "balanced", "best"), help="default quality"
        )
        p.add_argument("--queue-limit", type=int, default=None, help="queued jobs before 'busy'")
        p.add_argument("--cache-mb", type=int, default=None, help="result cache size in MB (0 = off)")
        p.add_argument(
            "--log-file", type=Path, default=None, help="log file (default <state dir>/logs/reasam.log)"
        )
        p.add_argument(
            "--log-level", default=None, choices=("debug", "info", "warning", "error"), help="default info"
        )
        p.add_argument(
            "--shutdown-grace",
            type=float,
            default=None,
            metavar="S",
            help="on SIGTERM, seconds the running job may take to finish before it is journaled",
        )
        _watch_flags(p)
    else:
        p.add_argument(
            "--timeout", type=float, default=0.0, help="give up after this many seconds (0: no limit)"
        )
        p.add_argument(
            "--retries",
            type=int,
            default=6,
            help="UDP sends before giving up (waits double: 0.3 s, 0.6 s, …)",
        )


def _watch_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--watch",
        action="append",
        type=Path,
        default=None,
        metavar="DIR",
        help="also serve this watch folder (repeatable; replaces the config file's [watch] folders)",
    )
    p.add_argument(
        "--watch-settle",
        type=float,
        default=None,
        metavar="S",
        help="seconds a dropped file must stay unchanged before it is taken (default 2)",
    )
    p.add_argument(
        "--watch-max-queued",
        type=int,
        default=None,
        metavar="N",
        help="files per watch folder that may be jobs at once (default 8)",
    )


_CLIENT_SETTINGS = ("host", "port", "token_file")


def _load_settings(args: argparse.Namespace, client: bool = False) -> config.Settings:
    from . import config

    names = _CLIENT_SETTINGS if client else config.setting_names()
    flags = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if getattr(args, "no_token", False):
        flags["token"] = False
    return config.load(flags, config_file=args.config)


def _client(args: argparse.Namespace) -> Client:
    from . import config
    from .client import Client

    settings = _load_settings(args, client=True)
    host = (
        "127.0.0.1"
        if settings.host in ("0.0.0.0", "")
        else ("::1" if settings.host == "::" else settings.host)
    )
    if settings.port == 0:
        raise ReasamError("bad_request", "the client needs the daemon's port (--port)")
    return Client(
        host,
        settings.port,
        config.client_token(settings),
        retries=max(1, args.retries),
        timeout=getattr(args, "timeout", 0.0) or 0.0,
    )


def _print(body: dict[str, Any]) -> None:
    print(json.dumps(body, indent=2))


def _cmd_serve(args: argparse.Namespace) -> int:
    from .osc import serve

    return _exit_at_once(serve(_load_settings(args)))


def _cmd_watch(args: argparse.Namespace) -> int:
    from .osc import serve

    args.watch = [*args.folders, *(args.watch or [])]
    return _exit_at_once(serve(_load_settings(args)))


def _exit_at_once(code: int) -> NoReturn:
    """End the process once `serve` has stopped cleanly, skipping the interpreter's teardown.

    By then every job is done or journaled, the socket is closed and the daemon file removed; what
    is left is tearing down torch and the engines' modules, which took about 0.85 s on a 2-core
    machine and is waited on by whoever stopped the daemon (a service manager, the REAPER panel's
    Stop, a restart). Logs and standard streams are flushed first, so nothing written is lost."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _cmd_send(args: argparse.Namespace) -> int:
    from .client import send_job

    source = args.input.expanduser().absolute()
    # Not pipeline.slug: importing the pipeline would cost the client a second of start-up.
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", source.stem).strip("-.")[:40] or "job"
    job_id = args.job_id or f"{stem}-{uuid.uuid4().hex[:8]}"
    pairs: list[Any] = []
    for key in ("region", "quality", "engine", "format", "seed"):
        if getattr(args, key) is not None:
            pairs += [key, getattr(args, key)]
    if args.out is not None:
        pairs += ["out", str(args.out.expanduser().absolute())]
    for span in args.span:
        pairs += ["span", span]
    prompts = args.prompt or [""]
    for extra in prompts[1:]:
        pairs += ["prompt", extra]
    from .progress import Progress, choose_mode

    progress = Progress(job_id, choose_mode(args.quiet or args.no_wait))
    with _client(args) as client:
        try:
            body, code = send_job(
                client,
                job_id,
                [str(source), prompts[0], *pairs, *client.auth()],
                wait=not args.no_wait,
                timeout=args.timeout,
                on_progress=progress,
            )
        except KeyboardInterrupt:
            with contextlib.suppress(OSError):
                client.send("/reasam/cancel", job_id, *client.auth())
            sys.stderr.write(f"\nreasam: interrupted; cancel sent for {job_id}\n")
            return 130
        finally:
            progress.close()
    _print(body)
    return code


def _cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(client.status(args.job_id))
    return EXIT_OK


def _cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        body, code = client.cancel(args.job_id, args.timeout or 60.0)
    _print(body)
    return code


def _cmd_ping(args: argparse.Namespace) -> int:
    with _client(args) as client:
        started = time.monotonic()
        body: dict[str, Any] = dict(client.ping())
        body["round_trip_ms"] = round((time.monotonic() - started) * 1000, 2)
    _print(body)
    return EXIT_OK


def _cmd_stop(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(client.shutdown())
    return EXIT_OK


def _cmd_install_service(args: argparse.Namespace) -> int:
    from . import config

    written, commands = config.install_service(
        platform=args.platform, dest=args.dest, enable=not args.no_enable, extra_args=args.serve_args
    )
    print(written)
    for cmd in commands:
        print(f"ran: {' '.join(cmd)}", file=sys.stderr)
    return EXIT_OK


_CONTROL_EXITS = (
    "Exit codes: 0 answered (cancel: cancelled or already done), 1 failed (e.g. no such job), "
    "2 refused (bad request, unauthorized), 3 no answer."
)


def _add_daemon(sub: argparse._SubParsersAction) -> None:
    """serve, send, status, cancel, ping, install-service."""
    p = sub.add_parser("serve", help="run the daemon: OSC over UDP, warm engines, a job queue")
    _settings_flags(p, serve_flags=True)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "watch",
        help="run the daemon in the foreground serving watch folders (DIR/inbox/<prompt>/ → DIR/outbox/)",
        description="`reasam serve --watch DIR` in one word: the daemon with its OSC port, queue and "
        "journal, serving these folders only (the config file's [watch] folders are not added).",
    )
    p.add_argument("folders", type=Path, nargs="+", metavar="DIR", help="watch folders to serve")
    _settings_flags(p, serve_flags=True)
    p.set_defaults(func=_cmd_watch)

    p = sub.add_parser(
        "send",
        help="send one separation to the daemon and wait for the result (prints JSON)",
        description="Exit codes: 0 done (or accepted with --no-wait), 1 failed, 2 refused (bad request, "
        "unsupported prompt, unauthorized), 3 no answer, 4 cancelled. "
        "A '-' span must be written with '=': --span=-3:4.",
    )
    p.add_argument("input", type=Path, help="audio file (its absolute path is sent: the daemon reads it)")
    p.add_argument("--prompt", "-p", action="append", default=[], help="repeat for a stem set")
    p.add_argument(
        "--span",
        action="append",
        default=[],
        metavar="±S:E",
        help="+S:E target here, -S:E absent (repeatable)",
    )
    p.add_argument("--region", default=None, metavar="S:E", help="part of the file to process (seconds)")
    p.add_argument(
        "--engine", default=None, choices=("auto", "sam", "spleeter", "dsp"), help="default: the daemon's"
    )
    p.add_argument(
        "--quality", default=None, choices=("fast", "balanced", "best"), help="default: the daemon's"
    )
    p.add_argument("--seed", type=int, default=None, help=SEED_HELP)
    p.add_argument("--format", default=None, choices=("wav", "flac", "mp3"), help="stem format (default wav)")
    p.add_argument("--out", type=Path, default=None, help="output root (default: the daemon's)")
    p.add_argument("--job-id", default=None, help="default: <input name>-<random>")
    p.add_argument("--no-wait", action="store_true", help="return once the daemon accepted the job")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    _settings_flags(p, serve_flags=False)
    p.set_defaults(func=_cmd_send)

    p = sub.add_parser("status", help="the daemon's or one job's status, as JSON", description=_CONTROL_EXITS)
    p.add_argument("job_id", nargs="?", default=None, help="a job's id (default: the daemon's status)")
    _settings_flags(p, serve_flags=False)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("cancel", help="cancel a queued or running job", description=_CONTROL_EXITS)
    p.add_argument("job_id", help="the id the job was sent with")
    _settings_flags(p, serve_flags=False)
    p.set_defaults(func=_cmd_cancel)

    p = sub.add_parser(
        "ping",
        help="check the daemon answers; prints version, engines, device, model state",
        description=_CONTROL_EXITS,
    )
    _settings_flags(p, serve_flags=False)
    p.set_defaults(func=_cmd_ping)

    p = sub.add_parser(
        "stop",
        help="stop the daemon (a running job finishes or is journaled for the next start)",
        description=_CONTROL_EXITS,
    )
    _settings_flags(p, serve_flags=False)
    p.set_defaults(func=_cmd_stop)

    p = sub.add_parser(
        "install-service", help="run the daemon at login (systemd user unit, launchd, Windows)"
    )
    p.add_argument(
        "--platform", default=None, choices=("linux", "macos", "windows"), help="default: this one"
    )
    p.add_argument("--dest", type=Path, default=None, help="folder to write the service file into")
    p.add_argument(
        "--no-enable",
        action="store_true",
        help="only write the file; do not call systemctl/launchctl or start it",
    )
    p.add_argument("serve_args", nargs="*", help="extra `reasam serve` arguments (after --)")
    p.set_defaults(func=_cmd_install_service)


def _add_batch(sub: argparse._SubParsersAction) -> None:
    from . import batch

    batch.add_parser(sub, lambda p: _settings_flags(p, serve_flags=False))
    sub.choices["batch"].set_defaults(func=lambda args: batch.run(args, _client))


_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_separate,
    _add_batch,
    _add_engines,
    _add_models,
    _add_example,
    _add_daemon,
    _add_install_reaper,
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="reasam", description="ReaSAM: prompt-driven source separation for REAPER.")
    parser.add_argument("--version", action="version", version=f"reasam {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in _COMMANDS:
        add(sub)
    _accept_debug_anywhere(parser)
    return parser


def _accept_debug_anywhere(parser: argparse.ArgumentParser) -> None:
    """Let `--debug` follow the subcommand too (`reasam separate x.wav --debug`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if not any("--debug" in a.option_strings for a in child._actions):
                    child.add_argument(
                        "--debug",
                        action="store_true",
                        default=argparse.SUPPRESS,
                        help="print tracebacks on errors",
                    )
                _accept_debug_anywhere(child)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line, letting `separate` take inputs after its options as demucs and
    spleeter do (`reasam separate a.wav -p vocals b.wav`): argparse alone would stop at the first
    option and call the rest unrecognised."""
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    command = getattr(args, "command", None)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    child = sub.choices.get(command, parser) if command else parser
    if command == "separate" and not any(e.startswith("-") for e in extra):
        args.inputs = [*args.inputs, *map(Path, extra)]
        return args
    child.error(f"unrecognized arguments: {' '.join(extra)}")
    raise AssertionError("unreachable: error() exits")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    try:
        return args.func(args)
    except NoAnswer as exc:
        sys.stderr.write(f"reasam: {exc} (is `reasam serve` running?)\n")
        return EXIT_NO_ANSWER
    except ReasamError as exc:
        if args.debug:
            traceback.print_exc()
        sys.stderr.write(f"reasam: {exc.code}: {exc.message}\n")
        return EXIT_USAGE if exc.usage else EXIT_RUNTIME
    except KeyboardInterrupt:
        sys.stderr.write("reasam: interrupted\n")
        return 130
    except Exception as exc:  # the CLI's last line of defence: one line, not a traceback
        if args.debug:
            traceback.print_exc()
        sys.stderr.write(f"reasam: internal: {type(exc).__name__}: {' '.join(str(exc).split())}\n")
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
