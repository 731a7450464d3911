"""Choosing an executor on the command line: ``--executor local|ray`` and the Ray options."""

from __future__ import annotations

import argparse
from typing import Any

EXECUTORS = ("local", "ray")


def add_executor_arguments(parser: Any, default_placement: str) -> None:
    """Add --executor, --ray-address, --placement and --batch-ms to a command's parser."""
    group = parser.add_argument_group("executor")
    group.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: every actor of a session in this process (default); "
        "ray: sessions' actors as Ray actors, on a local Ray instance or a cluster (docs/deploy.md)",
    )
    group.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="with --executor ray: a running cluster's address (HOST:6379); default: start a local instance",
    )
    group.add_argument(
        "--placement",
        default=default_placement,
        metavar="SPEC",
        help="with --executor ray: which Ray actor runs which subsystem, as HOST=ACTOR,ACTOR[;HOST=...] "
        f"or a named placement: session, audio-remote, split (default: {default_placement})",
    )
    group.add_argument(
        "--batch-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="with --executor ray: hold data events up to MS before sending them to another process "
        "(default: 0, one message per event-loop turn)",
    )


def ray_options(args: argparse.Namespace) -> Any:
    """The RayOptions the parsed arguments ask for. Raises ValueError (one line) on a bad value."""
    from duplexer.runtime.ray_executor import Placement, RayOptions

    if args.batch_ms < 0:
        raise ValueError(f"--batch-ms must be >= 0, got {args.batch_ms:g}")
    level = getattr(args, "log_level", "WARNING")
    return RayOptions(
        address=args.ray_address, placement=Placement.parse(args.placement), batch_ms=args.batch_ms, log_level=level
    )
