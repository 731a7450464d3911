"""Executor options of the transport commands (``serve``, ``mqtt``): where sessions run, which engines are shared.

``--executor``, ``--ray-address``, ``--placement`` and ``--batch-ms`` are the simulator's
(:mod:`duplexer.runtime.executors`). ``--share`` and ``--llm-gpus`` put engines that every
session shares into Ray Serve deployments (:mod:`duplexer.actors.ray_serve_engines`), so a cluster
can hold one LLM on a GPU node for many sessions instead of one per session.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from duplexer.actors.engines import SHAREABLE
from duplexer.actors.pipeline import PIPELINE_ACTORS
from duplexer.runtime.executors import SessionMaker, add_executor_arguments, session_maker

TRANSPORT_PLACEMENT = "session"
"""Transports keep the audio readers (VAD, ASR) and playout beside the audio; the rest goes to a host."""


def add_transport_executor_arguments(parser: Any) -> None:
    """The executor arguments, and --share/--llm-gpus, for a command that serves live sessions."""
    add_executor_arguments(parser, TRANSPORT_PLACEMENT, PIPELINE_ACTORS)
    group = parser.add_argument_group("shared engines (with --executor ray)")
    group.add_argument(
        "--share",
        metavar="KINDS",
        default="",
        help="engines shared by every session as Ray Serve deployments instead of built in each session: "
        f"a comma-separated list of {', '.join(SHAREABLE)}, e.g. llm or llm,tts (default: none)",
    )
    group.add_argument(
        "--llm-gpus",
        type=float,
        default=0.0,
        metavar="N",
        help="with --share llm: GPUs per LLM replica, so Serve places it on a node started with "
        "`ray start --num-gpus` (default: 0, CPU)",
    )


def share_request(args: argparse.Namespace) -> tuple[tuple[str, ...], float]:
    """The shared kinds and GPUs per LLM replica asked for; raises ValueError (one line, naming the option)."""
    kinds = tuple(dict.fromkeys(kind.strip() for kind in args.share.split(",") if kind.strip()))
    unknown = [kind for kind in kinds if kind not in SHAREABLE]
    if unknown:
        raise ValueError(f"--share: unknown engine kind(s) {', '.join(unknown)}; choose from {', '.join(SHAREABLE)}")
    if args.share.strip() and not kinds:
        raise ValueError(f"--share {args.share!r}: name at least one of {', '.join(SHAREABLE)}")
    gpus = args.llm_gpus
    if not math.isfinite(gpus) or gpus < 0:
        raise ValueError(f"--llm-gpus must be a number >= 0, got {gpus:g}")
    if kinds and args.executor != "ray":
        raise ValueError("--share needs --executor ray: shared engines are Ray Serve deployments")
    if gpus and "llm" not in kinds:
        raise ValueError("--llm-gpus applies to a shared LLM; add --share llm")
    return kinds, gpus


@dataclass
class TransportExecutor:
    """What a transport command makes its sessions with."""

    make_session: SessionMaker
    engines: Callable[..., Any]
    """The engine factory for sessions: the base one, or one whose shared kinds call Serve deployments."""
    shared: tuple[str, ...] = field(default=())

    def close(self) -> None:
        """Delete the Serve deployments this command started (they would outlive it on a cluster), and
        kill the pooled session hosts no session took."""
        close = getattr(self.make_session, "close", None)
        if close is not None:
            close()
        if self.shared:
            from duplexer.actors.ray_serve_engines import shutdown_shared_engines

            shutdown_shared_engines(self.shared)
            self.shared = ()


def transport_executor(args: argparse.Namespace, engines: Callable[..., Any]) -> TransportExecutor:
    """Check the executor options, connect to Ray if asked, and deploy the shared engines.

    Raises ValueError or RayUnavailable with a one-line message naming the option; every check
    that needs no cluster runs before Ray is started or reached.
    """
    kinds, gpus = share_request(args)
    make_session = session_maker(args, PIPELINE_ACTORS)
    if not kinds:
        return TransportExecutor(make_session, engines)
    import ray

    from duplexer.actors.ray_serve_engines import ShareOptions, deploy_shared_engines

    if gpus:
        have = ray.cluster_resources().get("GPU", 0.0)
        if have < gpus:
            raise ValueError(
                f"--llm-gpus {gpus:g}: the Ray cluster has {have:g} GPU(s); start a GPU worker with "
                "`ray start --address=HEAD:6379 --num-gpus=1`"
            )
    try:
        shared = deploy_shared_engines(engines, ShareOptions(kinds=kinds, llm_gpus=gpus))
    except Exception as exc:  # Serve reports a replica that could not start as one of many errors
        raise RuntimeError(f"--share {','.join(kinds)}: the shared engines could not start: {one_line(exc)}") from None
    return TransportExecutor(make_session, shared, kinds)


def one_line(exc: BaseException) -> str:
    """An exception as one line for ``duplexer: error: ...`` (Ray's messages run over several)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
