#!/usr/bin/env python3
"""Write ReaPack's index.xml from the metadata headers of the ReaSAM scripts.

reapack-index (the Ruby gem) is the reference tool; it needs Ruby and a git history, which the
project's machines do not have, so this script writes the same format for what ReaSAM uses:
one package per script carrying `@version` (here the metapackage `ReaSAM/ReaSAM.lua`), its
`@description`, `@author`, `@about` (as RTF, like reapack-index), `@changelog`, `@links` and
`@provides` lines (`[main]`, `[nomain]`, globs), each provided file becoming a `<source>` whose
URL comes from a template with `$path` and `$commit`, like reapack-index's `--url-template`.

ReaPack downloads every file from its `<source>` URL, so the index is only useful with the URL
of a published copy of this repository. That URL comes from, first to last:
  --url-template 'https://host/.../$commit/$path'
  --repo-url https://github.com/YOU/reasam   (GitHub or GitLab web URL of the repository)
  the environment variable REASAM_REPO_URL    (same form as --repo-url)
  `git remote get-url origin`                 (when it is a GitHub or GitLab remote)
With none of them nothing is written (exit 2): an index with placeholder URLs would install
nothing. The project has no public repository of its own yet, so no index.xml is committed;
whoever publishes it generates one with its URL and commits that (see README, "In REAPER").

Usage:
    python tools/reapack_index.py --repo-url https://github.com/YOU/reasam   # reaper_scripts/index.xml
    python tools/reapack_index.py --check              # headers and provided files only
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "reaper_scripts"
INDEX_NAME = "ReaSAM"
REPO_URL_ENV = "REASAM_REPO_URL"
EXIT_NO_URL = 2

_TAG = re.compile(r"^--\s*@(\w+)\s*(.*)$")
_SECTIONS = {
    "main": "main",
    "midi_editor": "midi_editor",
    "midi_inlineeditor": "midi_inlineeditor",
    "midi_eventlisteditor": "midi_eventlisteditor",
    "mediaexplorer": "mediaexplorer",
}


@dataclass
class Source:
    path: str  # repository-relative, forward slashes
    file: str  # relative to the package's category folder
    main: str | None  # section list for [main] etc.; None for [nomain]


@dataclass
class Package:
    path: Path
    category: str
    name: str
    tags: dict[str, str] = field(default_factory=dict)
    sources: list[Source] = field(default_factory=list)


def parse_header(path: Path) -> dict[str, str]:
    """The @tags of a script's leading comment block.

    `-- @tag value` starts a tag; following lines indented by two or more spaces (or empty `--`
    lines) continue it, as in reapack-index's metaheader format.
    """
    tags: dict[str, list[str]] = {}
    current: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("--"):
            break
        body = line[2:]
        m = _TAG.match(line)
        if m:
            current = m.group(1).lower()
            tags[current] = [m.group(2).rstrip()] if m.group(2).strip() else []
            continue
        if current and (body.startswith("  ") or body.startswith("\t")):
            tags[current].append(body.rstrip())
        elif current and not body.strip():
            tags[current].append("")
        else:
            current = None
    return {k: textwrap.dedent("\n".join(v)).strip("\n") for k, v in tags.items()}


def provides(pkg_dir: Path, lines: str) -> list[tuple[str | None, Path]]:
    """(section or None, file) for every @provides line, globs expanded."""
    out: list[tuple[str | None, Path]] = []
    for raw in lines.splitlines():
        line = raw.strip()
        if not line:
            continue
        section: str | None = None
        m = re.match(r"^\[([^\]]*)\]\s*(.+)$", line)
        if m:
            opts = [o.strip() for o in m.group(1).split(",") if o.strip()]
            line = m.group(2).strip()
            mains = [o for o in opts if o in _SECTIONS]
            if "main" in opts or mains:
                section = " ".join(_SECTIONS[o] for o in (mains or ["main"]))
            if "nomain" in opts:
                section = None
        if " > " in line:
            raise SystemExit(f"{pkg_dir}: file renaming ('>') is not supported: {raw!r}")
        matches = sorted(pkg_dir.glob(line)) if any(ch in line for ch in "*?[") else [pkg_dir / line]
        if not matches:
            raise SystemExit(f"{pkg_dir}: @provides {line!r} matches no file")
        for f in matches:
            if not f.is_file():
                raise SystemExit(f"{pkg_dir}: @provides {line!r}: {f} does not exist")
            out.append((section, f))
    return out


def find_packages(scripts: Path = SCRIPTS) -> list[Package]:
    packages = []
    for path in sorted(scripts.rglob("*.lua")):
        tags = parse_header(path)
        if "noindex" in tags or "version" not in tags:
            continue
        category = path.parent.relative_to(scripts).as_posix()
        if category == ".":
            raise SystemExit(f"{path}: ReaPack packages must live in a category folder")
        pkg = Package(path, category, path.name, tags)
        entries = provides(path.parent, tags.get("provides", ""))
        if "metapackage" not in tags and not any(f == path for _, f in entries):
            entries.insert(0, ("main", path))
        for section, f in entries:
            pkg.sources.append(
                Source(f.relative_to(ROOT).as_posix(), f.relative_to(path.parent).as_posix(), section)
            )
        packages.append(pkg)
    return packages


def check(packages: list[Package]) -> list[str]:
    problems = []
    if not packages:
        problems.append("no package (a script with @version) under reaper_scripts/")
    for pkg in packages:
        if not re.match(r"^\d+(\.\d+)*([-+.]?[\w.]+)?$", pkg.tags["version"]):
            problems.append(f"{pkg.path}: bad @version {pkg.tags['version']!r}")
        if not pkg.tags.get("description"):
            problems.append(f"{pkg.path}: no @description")
        if not any(s.main for s in pkg.sources):
            problems.append(f"{pkg.path}: provides no [main] action")
        for s in pkg.sources:
            if s.main and s.path.endswith(".lua"):
                head = parse_header(ROOT / s.path)
                if not head.get("description"):
                    problems.append(f"{s.path}: an action without @description")
    return problems


def rtf(markdown: str) -> str:
    """A small Markdown-to-RTF for @about, enough for headings, bullets and paragraphs."""

    def text(s: str) -> str:
        s = s.replace("\\", "\\\\").replace("{", "\\{").replace("}", "\\}")
        s = re.sub(r"`([^`]*)`", r"\1", s)
        s = re.sub(r"\*\*([^*]+)\*\*", r"{\\b \1}", s)
        return "".join(
            c if ord(c) < 128 else f"\\u{ord(c) if ord(c) < 32768 else ord(c) - 65536}?" for c in s
        )

    out = [r"{\rtf1\ansi\deff0{\fonttbl{\f0 \fswiss Helvetica;}}\f0\pard"]
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append(text(" ".join(para)) + r"\par")
            para.clear()

    for line in markdown.splitlines():
        s = line.strip()
        if not s:
            flush()
            continue
        h = re.match(r"^(#+)\s+(.*)$", s)
        b = re.match(r"^[-*]\s+(.*)$", s)
        if h:
            flush()
            size = {1: 36, 2: 30}.get(len(h.group(1)), 26)
            out.append(rf"{{\pard \b \fs{size} {text(h.group(2))}\par}}")
        elif b:
            flush()
            para.append("\u2022 " + b.group(1))
        else:
            para.append(s)
    flush()
    out.append("}")
    return "\n".join(out)


def git(*args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def template_for(repo_url: str) -> str | None:
    """The raw-file URL template of a GitHub or GitLab repository, from its web or git URL."""
    url = repo_url.strip()
    m = re.match(r"^(?:https://github\.com/|git@github\.com:)([^/\s]+)/([^/\s]+?)(?:\.git)?/?$", url)
    if m:
        return f"https://raw.githubusercontent.com/{m.group(1)}/{m.group(2)}/$commit/$path"
    m = re.match(r"^(?:https://gitlab\.com/|git@gitlab\.com:)([^\s]+?)(?:\.git)?/?$", url)
    if m and "/" in m.group(1):
        return f"https://gitlab.com/{m.group(1)}/-/raw/$commit/$path"
    return None


def url_template(args: argparse.Namespace) -> tuple[str | None, str]:
    """(template or None, where it came from or why there is none)."""
    if args.url_template:
        return args.url_template, "--url-template"
    for given, origin in ((args.repo_url, "--repo-url"), (os.environ.get(REPO_URL_ENV, ""), REPO_URL_ENV)):
        if given:
            template = template_for(given)
            if template is None:
                return None, (
                    f"{origin} {given!r} is not a GitHub or GitLab repository URL; pass the raw-file URL "
                    "template with --url-template instead"
                )
            return template, origin
    remote = git("remote", "get-url", "origin")
    if remote and (template := template_for(remote)):
        return template, "git remote origin"
    return None, (
        "no repository URL: ReaPack downloads every file from the index's URLs, so pass the URL of the "
        f"published repository (--repo-url https://github.com/YOU/reasam, or {REPO_URL_ENV}, or "
        "--url-template 'https://.../$commit/$path'); nothing written"
    )


def check_template(template: str) -> str | None:
    """Why a URL template cannot be used, or None."""
    if "$path" not in template:
        return f"the URL template {template!r} has no $path"
    if not template.startswith("https://"):
        return f"the URL template {template!r} is not an https:// URL"
    if re.search(r"/OWNER/REPO/|example\.(invalid|com|org)", template):
        return f"the URL template {template!r} is a placeholder"
    return None


def cdata(s: str) -> str:
    return "<![CDATA[" + s.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def render(packages: list[Package], template: str, commit: str, time: str) -> str:
    lines = ['<?xml version="1.0" encoding="utf-8"?>']
    commit_attr = f" commit={quoteattr(commit)}" if re.fullmatch(r"[0-9a-f]{40}", commit) else ""
    lines.append(f'<index version="1" name={quoteattr(INDEX_NAME)}{commit_attr}>')
    for category in sorted({p.category for p in packages}):
        lines.append(f"  <category name={quoteattr(category)}>")
        for pkg in sorted((p for p in packages if p.category == category), key=lambda p: p.name):
            desc = pkg.tags.get("description", "")
            desc_attr = f" desc={quoteattr(desc)}" if desc else ""
            lines.append(f'    <reapack name={quoteattr(pkg.name)} type="script"{desc_attr}>')
            meta = []
            if pkg.tags.get("about"):
                meta.append(f"        <description>{cdata(rtf(pkg.tags['about']))}</description>")
            for link in pkg.tags.get("links", "").splitlines():
                link = link.strip()
                if not link:
                    continue
                label, _, href = link.rpartition(" ")
                attrs = ' rel="website"' + (f" href={quoteattr(href)}" if label else "")
                lines_text = escape(label) if label else escape(href)
                meta.append(f"        <link{attrs}>{lines_text}</link>")
            if meta:
                lines.append("      <metadata>")
                lines += meta
                lines.append("      </metadata>")
            author = pkg.tags.get("author", "")
            author_attr = f" author={quoteattr(author)}" if author else ""
            lines.append(
                f"      <version name={quoteattr(pkg.tags['version'])}{author_attr} time={quoteattr(time)}>"
            )
            if pkg.tags.get("changelog"):
                lines.append(f"        <changelog>{cdata(pkg.tags['changelog'])}</changelog>")
            for s in pkg.sources:
                url = template.replace("$commit", commit).replace("$path", quote(s.path))
                attrs = f" file={quoteattr(s.file)}"
                if s.main:
                    attrs += f" main={quoteattr(s.main)}"
                lines.append(f"        <source{attrs}>{escape(url)}</source>")
            lines.append("      </version>")
            lines.append("    </reapack>")
        lines.append("  </category>")
    lines.append("</index>")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", "-o", type=Path, default=SCRIPTS / "index.xml")
    ap.add_argument(
        "--repo-url",
        default=None,
        help=f"the published repository's GitHub or GitLab URL (default: ${REPO_URL_ENV}, else the git "
        "remote origin)",
    )
    ap.add_argument(
        "--url-template", default=None, help="source URL with $path and $commit (overrides --repo-url)"
    )
    ap.add_argument(
        "--commit",
        default=None,
        help="commit or branch for $commit (default: git HEAD when reaper_scripts/ is committed, else main)",
    )
    ap.add_argument("--time", default=None, help="version time, ISO 8601 (default: now, UTC)")
    ap.add_argument(
        "--check", action="store_true", help="check the headers and provided files, write nothing"
    )
    args = ap.parse_args(argv)
    packages = find_packages()
    problems = check(packages)
    for p in problems:
        print(f"reapack_index: {p}", file=sys.stderr)
    if problems:
        return 1
    if args.check:
        n = sum(len(p.sources) for p in packages)
        print(f"{len(packages)} package(s), {n} file(s): OK")
        return 0
    template, origin = url_template(args)
    problem = check_template(template) if template else origin
    if problem:
        print(f"reapack_index: {problem}", file=sys.stderr)
        return EXIT_NO_URL
    commit = args.commit
    if commit is None:
        dirty = git("status", "--porcelain", "--", str(SCRIPTS.relative_to(ROOT)))
        commit = (git("rev-parse", "HEAD") if dirty == "" else None) or "main"
    time = args.time or _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    args.output.write_text(render(packages, template, commit, time), encoding="utf-8")
    print(f"{args.output} (URLs from {origin}: {template.replace('$commit', commit)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
