"""A command's own output, as opposed to its logs (structlog, :mod:`duplexer.runtime.logging`).

Tables of figures, the paths a command wrote and the JSON a tool reads go to stdout through
:func:`say`; progress lines for the person waiting go to stderr through :func:`progress`. Library
code returns values and logs; only commands and benchmarks call these.
"""

from __future__ import annotations

import sys


def say(text: object = "") -> None:
    """One line (or block) of the command's result on stdout, flushed."""
    sys.stdout.write(f"{text}\n")
    sys.stdout.flush()


def progress(text: object) -> None:
    """A progress line on stderr, flushed, so it shows while a long run is under way."""
    sys.stderr.write(f"{text}\n")
    sys.stderr.flush()
