"""`duplexer policy show`: the controller's transition table, as text or a diagram."""

from __future__ import annotations

import argparse
from typing import Any

from duplexer.runtime.console import say


def show(args: argparse.Namespace) -> int:
    from duplexer.policies.render import render

    say(render(args.format))
    return 0


def register(commands: Any) -> None:
    policy = commands.add_parser("policy", help="inspect the turn-taking policy")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")
    show_parser = policy_commands.add_parser(
        "show",
        help="print the controller's transition table and parameters",
        description="Print the controller's transition table (every state x event pair, declared "
        "as a transition or as ignored) and its parameters, or draw it as a diagram.",
    )
    show_parser.add_argument(
        "--format",
        choices=["table", "mermaid", "dot"],
        default="table",
        help="table (default), mermaid (stateDiagram-v2) or dot (Graphviz)",
    )
    show_parser.set_defaults(handler=show)
