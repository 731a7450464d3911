"""Shared by command modules: the bad-input exit code and its one-line message."""

from __future__ import annotations

from duplexer.runtime.console import progress

EXIT_BAD_INPUT = 2


def fail(message: str) -> int:
    """Print ``duplexer: error: MESSAGE`` on stderr and return the bad-input exit code."""
    progress(f"duplexer: error: {message}")
    return EXIT_BAD_INPUT
