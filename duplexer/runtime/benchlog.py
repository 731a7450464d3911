"""Append benchmark figures, with the command that produced them, to docs/benchmarks.md."""

from __future__ import annotations

import platform
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_BENCH_LOG = Path("docs/benchmarks.md")


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
    log_path: Path = DEFAULT_BENCH_LOG,
    argv: Sequence[str] | None = None,
) -> str:
    """Append one benchmark section to the log and return the Markdown that was written."""
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
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if not log_path.exists():
        log_path.write_text("# Benchmarks\n\nAppended by `duplexer bench ...`; newest last.\n\n")
    with log_path.open("a", encoding="utf-8") as log:
        log.write(text)
    return text
