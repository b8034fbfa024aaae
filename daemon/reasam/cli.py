"""The `reasam` command line: a front door that builds requests and hands them on.

Exit codes: 0 success, 2 usage errors (bad arguments, a prompt no engine understands), 1 runtime
errors (unreadable input, unwritable output, engine failure). Errors are one line on stderr;
`--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import ReasamError

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"reasam: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_USAGE)


def _float_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _add_separate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "separate",
        help="separate one file by a text prompt and/or spans",
        description="Separate INPUT into a target stem named after the prompt and a residual "
        "stem. A '-' span must be written with '=': --span=-3:4.",
    )
    p.add_argument("input", type=Path, help="audio file (wav, flac, ogg, opus, mp3, m4a, …)")
    p.add_argument("--prompt", "-p", default="", help="what to isolate, e.g. vocals, drums, 'a dog barking'")
    p.add_argument(
        "--span",
        action="append",
        default=[],
        metavar="±S:E",
        help="+S:E where the target sounds, -S:E where it is absent (source seconds; repeatable)",
    )
    p.add_argument("--region", default=None, metavar="S:E", help="part of the file to process (seconds)")
    p.add_argument("--engine", default="auto", choices=("auto", "sam", "spleeter", "dsp"))
    p.add_argument("--quality", default="balanced", choices=("fast", "balanced", "best"))
    p.add_argument(
        "--out",
        type=Path,
        default=Path("reasam-output"),
        help="output root; stems go into one folder per job inside it (default ./reasam-output)",
    )
    p.add_argument("--job-id", default=None, help="name of the job folder (default: from input and prompt)")
    p.add_argument("--format", default="wav", choices=("wav", "flac", "mp3"))
    p.add_argument(
        "--bit-depth",
        type=int,
        default=None,
        choices=(16, 24, 32),
        help="wav 16/24/32 (32 = float, default), flac 16/24 (default 24)",
    )
    p.add_argument("--sample-rate", type=int, default=None, help="output rate (default: the source's)")
    p.add_argument("--mono", action="store_true", help="write mono stems (default: the source's channels)")
    g = p.add_argument_group("post-processing (off by default; breaks target + residual == input)")
    g.add_argument("--normalize-peak", type=_float_arg, default=None, metavar="DBFS")
    g.add_argument("--normalize-lufs", type=_float_arg, default=None, metavar="LUFS")
    g.add_argument(
        "--trim-silence",
        type=_float_arg,
        default=None,
        metavar="DB",
        help="drop leading/trailing audio below DB (dBFS)",
    )
    g.add_argument("--gate", type=_float_arg, default=None, metavar="DB", help="noise gate threshold (dBFS)")
    p.add_argument("--json", action="store_true", help="print manifest.json instead of the stem paths")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_separate)


def _cmd_separate(args: argparse.Namespace) -> int:
    from . import pipeline
    from .request import OutputOptions, PostProcess, Region, Request, Span

    request = Request(
        source=args.input.expanduser().absolute(),
        prompt=args.prompt,
        spans=tuple(Span.parse(s) for s in args.span),
        region=Region.parse(args.region) if args.region else Region(),
        quality=args.quality,
        engine=args.engine,
        output=OutputOptions(
            format=args.format,
            bit_depth=args.bit_depth,
            sample_rate=args.sample_rate,
            mono=args.mono,
            post=PostProcess(
                peak_dbfs=args.normalize_peak,
                lufs=args.normalize_lufs,
                trim_silence_db=args.trim_silence,
                gate_db=args.gate,
            ),
        ),
    )
    root = args.out.expanduser().absolute()
    from .audio import ensure_writable_dir

    ensure_writable_dir(root)
    job_dir = _new_job_dir(
        root, args.job_id or f"{pipeline.slug(args.input.stem)}-{pipeline.slug(request.target_name)}"
    )
    bar = _ProgressBar(enabled=not args.quiet and sys.stderr.isatty())
    try:
        result = pipeline.run(request, job_dir, job_dir.name, progress=bar)
    except BaseException:
        _remove_if_empty(job_dir)
        raise
    finally:
        bar.close()
    if args.json:
        print(json.dumps(result.manifest, indent=2))
    else:
        for stem in result.stems:
            print(stem.path)
    return EXIT_OK


def _new_job_dir(root: Path, name: str) -> Path:
    """A fresh job folder: never reuse one, so earlier results are never touched."""
    from .pipeline import slug

    base = slug(name)
    for n in range(1, 10_000):
        candidate = root / (base if n == 1 else f"{base}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            raise ReasamError("bad_request", f"{root}: cannot create a job folder ({exc.strerror})") from None
    raise ReasamError("internal", f"{root}: too many job folders named {base}")


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


class _ProgressBar:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._last = ""

    def __call__(self, fraction: float, stage: str) -> None:
        if not self.enabled:
            return
        width = 30
        filled = round(fraction * width)
        line = f"\r[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}% {stage:<16}"
        if line != self._last:
            sys.stderr.write(line)
            sys.stderr.flush()
            self._last = line

    def close(self) -> None:
        if self.enabled and self._last:
            sys.stderr.write("\n")


def _add_engines(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("engines", help="list engines, their devices and the prompts they understand")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_engines)


def _cmd_engines(args: argparse.Namespace) -> int:
    from . import engines

    rows = [engines.get(name).describe() for name in engines.names()]
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
    return EXIT_OK


def _add_example(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("example", help="write a short generated song to try ReaSAM on")
    p.add_argument("path", type=Path, nargs="?", default=Path("examples/demo.wav"))
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


_COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_separate,
    _add_engines,
    _add_example,
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="reasam", description="ReaSAM: prompt-driven source separation for REAPER.")
    parser.add_argument("--version", action="version", version=f"reasam {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
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
