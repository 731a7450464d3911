"""Where benchmark figures go: printed always, appended with their command to a Markdown log where asked.

Every ``duplexer bench ...`` takes ``--log PATH`` (append there) and ``--no-log`` (print only).
Without either, figures are appended to this repository's ``docs/benchmarks.md`` when duplexer runs
from a checkout of it, and only printed otherwise: an installed copy has no docs folder to keep,
and a log relative to the current folder would scatter files wherever the command is run.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import duplexer

BENCH_LOG_IN_CHECKOUT = Path("docs") / "benchmarks.md"
"""The log's place inside a checkout of this repository."""


def checkout_bench_log(package_dir: Path | None = None) -> Path | None:
    """The repository's ``docs/benchmarks.md`` when the ``duplexer`` package sits in a git checkout
    that has one; None for an installed copy."""
    root = (package_dir or Path(duplexer.__file__).resolve().parent).parent
    log = root / BENCH_LOG_IN_CHECKOUT
    return log if (root / ".git").exists() and log.is_file() else None


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log PATH`` and ``--no-log``, the same for every benchmark."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--log",
        type=Path,
        default=None,
        metavar="PATH",
        help="append the figures to this Markdown file (default: docs/benchmarks.md inside a checkout of "
        "duplexer, else none)",
    )
    where.add_argument("--no-log", action="store_true", help="print the figures only; append them nowhere")


def log_path_from_args(args: argparse.Namespace) -> Path | None:
    """Where to append, from :func:`add_log_arguments`' options; None: print only."""
    if args.no_log:
        return None
    return args.log if args.log is not None else checkout_bench_log()


def machine_summary() -> str:
    """One line naming the machine, so figures from different hosts are not compared blindly."""
    import os

    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; numbers are printed as given by the caller."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def append_benchmark(
    title: str,
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    notes: Sequence[str] = (),
    log_path: Path | None = None,
    argv: Sequence[str] | None = None,
) -> str:
    """Append one benchmark section to ``log_path`` (None: append nowhere) and return its Markdown."""
    command = "duplexer " + shlex.join(list(argv if argv is not None else sys.argv[1:]))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = [
        f"## {title}",
        "",
        f"- command: `{command}`",
        f"- when: {stamp}",
        f"- machine: {machine_summary()}",
        *[f"- {note}" for note in notes],
        "",
        format_table(header, rows),
        "",
        "",
    ]
    text = "\n".join(section)
    if log_path is None:
        return text
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if not log_path.exists():
        log_path.write_text("# Benchmarks\n\nAppended by `duplexer bench ...`; newest last.\n\n")
    with log_path.open("a", encoding="utf-8") as log:
        log.write(text)
    return text
