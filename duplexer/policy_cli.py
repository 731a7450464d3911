"""`duplexer policy show`: the controller's transition table and the policy presets, as text or a diagram."""

from __future__ import annotations

import argparse
from typing import Any

from duplexer.cli_support import chosen_policy, fail
from duplexer.runtime.console import say


def show(args: argparse.Namespace) -> int:
    from duplexer.policies.render import render

    try:
        policy = chosen_policy(args) if args.policy is not None else None
    except ValueError as exc:
        return fail(str(exc))
    say(render(args.format, args.policy, policy))
    return 0


def register(commands: Any) -> None:
    from duplexer.policies.controller import DEFAULT_PRESET, POLICY_PRESETS

    policy = commands.add_parser("policy", help="inspect the turn-taking policy")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")
    show_parser = policy_commands.add_parser(
        "show",
        help="print the controller's transition table and parameters",
        description="Print the controller's transition table (every state x event pair, declared "
        "as a transition or as ignored), its timers and its parameters, or draw it as a diagram. "
        f"Without --policy the parameters of every preset ({', '.join(POLICY_PRESETS)}) are printed side "
        f"by side, a column each; {DEFAULT_PRESET} is the default of every command.",
    )
    show_parser.add_argument(
        "--format",
        choices=["table", "mermaid", "dot"],
        default="table",
        help="table (default), mermaid (stateDiagram-v2) or dot (Graphviz)",
    )
    show_parser.add_argument(
        "--policy",
        default=None,
        metavar="NAME",
        help=f"print the parameters of this preset ({', '.join(POLICY_PRESETS)}), or a policy plug-in's "
        "table and parameters",
    )
    show_parser.set_defaults(handler=show)
