"""Shared by command modules: the bad-input exit code and its one-line message."""

from __future__ import annotations

import sys

EXIT_BAD_INPUT = 2


def fail(message: str) -> int:
    """Print ``duplexer: error: MESSAGE`` on stderr and return the bad-input exit code."""
    print(f"duplexer: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT
