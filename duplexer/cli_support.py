"""Shared by command modules: the bad-input exit code and its one-line message."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from duplexer.runtime.console import progress

if TYPE_CHECKING:
    from duplexer.policies.controller import PolicyParams

EXIT_BAD_INPUT = 2


def fail(message: str) -> int:
    """Print ``duplexer: error: MESSAGE`` on stderr and return the bad-input exit code."""
    progress(f"duplexer: error: {message}")
    return EXIT_BAD_INPUT


def unwritable(path: Path, folder: bool = False) -> str | None:
    """Why ``path`` cannot be written as a file (or, with ``folder``, made a folder); None if it can.

    Checked before a long run, so bad output paths fail at once with one line, not after the work."""
    if folder and path.exists() and not path.is_dir():
        return f"{path}: is a file, not a folder"
    if not folder and path.is_dir():
        return f"{path}: is a folder, not a file"
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else f"{path}: {parent} is a file, not a folder"
    return None


def add_policy_argument(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--policy NAME``: the policy a command runs, a preset (``duplexer policy show`` lists them) or
    an installed policy plug-in (docs/plugins.md); every command runs the one default preset unless
    it has a reason to name another."""
    from duplexer.policies.controller import DEFAULT_PRESET, POLICY_PRESETS

    chosen = default or DEFAULT_PRESET
    parser.add_argument(
        "--policy",
        default=chosen,
        metavar="NAME",
        help=f"turn-taking policy: a preset ({', '.join(POLICY_PRESETS)}) or an installed policy plug-in's "
        f"name (default: {chosen})",
    )


def chosen_policy(args: argparse.Namespace) -> PolicyParams:
    """The preset or plug-in ``--policy`` names; a ValueError in one line listing the names when there
    is none, or saying why a plug-in is refused (it fails to import, is of the wrong type, or its
    table leaves a pair undeclared)."""
    from duplexer.actors.plugins import policy_named

    try:
        return policy_named(args.policy)
    except ValueError as exc:
        raise ValueError(f"--policy: {exc}") from None


def non_negative_ms(text: str) -> float:
    """argparse type: a finite number of milliseconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
