"""Shared by command modules: the bad-input exit code and its one-line message."""

from __future__ import annotations

import argparse

from duplexer.runtime.console import progress

EXIT_BAD_INPUT = 2


def fail(message: str) -> int:
    """Print ``duplexer: error: MESSAGE`` on stderr and return the bad-input exit code."""
    progress(f"duplexer: error: {message}")
    return EXIT_BAD_INPUT


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
