"""Choosing an executor on the command line: ``--executor local|ray``, the Ray options, and the session factory.

Every command that runs sessions (``sim``, ``serve``, ``mqtt``) adds the same
arguments with :func:`add_executor_arguments` and makes its sessions with the
:data:`SessionMaker` that :func:`session_maker` returns for them: a local
:class:`~duplexer.runtime.session.Session`, or a
:class:`~duplexer.runtime.ray_executor.RaySession` whose actors run where
``--placement`` says.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from duplexer.runtime.placement import ActorCatalog, PlacementError
from duplexer.runtime.ray_executor import HostPool, RayOptions, RaySession, RayUnavailable, ensure_ray
from duplexer.runtime.session import Session

EXECUTORS = ("local", "ray")
ADDRESS_CHECK_TIMEOUT_S = 3.0
"""How long to wait for a TCP answer from ``--ray-address`` before calling it unreachable
(Ray itself retries an unreachable address for minutes)."""

ExecutorSession: TypeAlias = Session | RaySession
"""A session of either executor: ``clock``, ``bus``, ``ctx``, ``metrics``, ``supervisor``, ``add``,
``place``, ``ready`` and ``stop`` work the same on both."""

SessionMaker = Callable[[str, Callable[..., Any]], Any]
"""Makes an executor's session: (session id, engine factory for its other processes) -> session.

The engine factory is called as ``factory(clock, sink)`` in each Ray process that runs actors
needing engines; it is pickled there, so it must be a module-level callable (or an instance of a
module-level class, or a closure made by a package function). The local executor ignores it."""


def add_executor_arguments(parser: Any, default_placement: str, actors: ActorCatalog) -> None:
    """Add --executor, --ray-address, --placement, --idle-hosts, --sessions-per-host and --batch-ms to a parser.

    ``actors`` is the catalog of the pipeline the command runs: its named placements are listed.
    """
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
        f"or a named placement: {', '.join(name for name, _ in actors.placements)} (default: {default_placement})",
    )
    group.add_argument(
        "--idle-hosts",
        type=int,
        default=0,
        metavar="N",
        help="with --executor ray: keep N session hosts started ahead of demand, so a new session "
        "does not wait for a Ray worker process to start (each still serves one session; default: 0); "
        "with --sessions-per-host K > 1, keep room for N sessions",
    )
    group.add_argument(
        "--sessions-per-host",
        type=int,
        default=1,
        metavar="K",
        help="with --executor ray: how many sessions share one session host process. 1 (default): "
        "each session has its own, and a host failure ends only that session; K > 1: a session "
        "costs no process of its own, so one machine carries several times more sessions, but a "
        "host failure ends the K sessions on it (docs/deploy.md)",
    )
    group.add_argument(
        "--batch-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="with --executor ray: hold data events up to MS before sending them to another process "
        "(default: 0, one message per event-loop turn)",
    )


def ray_options(args: argparse.Namespace, actors: ActorCatalog) -> RayOptions:
    """The RayOptions the parsed arguments ask for, for a pipeline of ``actors``. Raises ValueError
    (one line, naming the option).

    A placement that names an actor the pipeline does not have, or puts one that must stay in the
    driver on a host, is refused now rather than when the first session starts.
    """
    if args.batch_ms < 0:
        raise ValueError(f"--batch-ms must be >= 0, got {args.batch_ms:g}")
    if getattr(args, "idle_hosts", 0) < 0:
        raise ValueError(f"--idle-hosts must be >= 0, got {args.idle_hosts}")
    if getattr(args, "sessions_per_host", 1) < 1:
        raise ValueError(f"--sessions-per-host must be >= 1, got {args.sessions_per_host}")
    try:
        placement = actors.parse(args.placement)
    except PlacementError as exc:  # "placement ...: why", which names the option once prefixed
        message = str(exc)
        raise ValueError("--" + message if message.startswith("placement") else f"--placement: {message}") from None
    level = getattr(args, "log_level", "WARNING")
    return RayOptions(
        address=args.ray_address,
        actors=actors,
        placement=placement,
        batch_ms=args.batch_ms,
        log_level=level,
        sessions_per_host=getattr(args, "sessions_per_host", 1),
    )


def check_ray_address(address: str | None, timeout_s: float = ADDRESS_CHECK_TIMEOUT_S) -> None:
    """Raise RayUnavailable (one line) if nothing answers at a ``HOST:PORT`` address.

    Ray retries an unreachable cluster for minutes before it gives up; this answers in seconds.
    ``auto``, ``local`` and ``ray://`` (Ray Client) addresses are left to Ray.
    """
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RayUnavailable(
            f"--ray-address {address!r}: expected HOST:PORT of a Ray head node (ray start --head prints it), "
            "e.g. 10.0.0.5:6379"
        )
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout_s):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        if isinstance(exc, TimeoutError):
            why = f"no answer within {timeout_s:g} s"
        raise RayUnavailable(
            f"--ray-address {address}: cannot reach a Ray cluster there ({why}); "
            "start one with `ray start --head`, or leave out --ray-address for a local instance"
        ) from None


def local_session(session_id: str, engine_factory: Callable[..., Any] | None = None) -> Session:
    """The local executor's session maker: every actor in this process, with the engines given to ``place``."""
    return Session(session_id=session_id)


@dataclass(frozen=True)
class RaySessionMaker:
    """The Ray executor's session maker: each session's placed actors run in Ray actors (its hosts)."""

    options: RayOptions
    pool: HostPool | None = None

    def __call__(self, session_id: str, engine_factory: Callable[..., Any] | None = None) -> RaySession:
        return RaySession(self.options, session_id, engine_factory, pool=self.pool)

    def close(self) -> None:
        """Kill the pooled hosts no session took, and the shared ones."""
        if self.pool is not None:
            self.pool.shutdown()


def session_maker(args: argparse.Namespace, actors: ActorCatalog) -> SessionMaker:
    """The session factory the executor arguments ask for, for sessions of a pipeline of ``actors``.

    With ``--executor ray`` this checks the options, then connects to the cluster (or starts a
    local instance) now, so a bad value stops the command before it serves anyone. Raises
    ValueError (a bad option) or RayUnavailable (no Ray, or no cluster at ``--ray-address``), each
    with a one-line message naming the option.
    """
    if args.executor != "ray":
        return local_session
    options = ray_options(args, actors)
    check_ray_address(options.address)
    ensure_ray(options)
    idle = getattr(args, "idle_hosts", 0)
    pooled = idle or options.sessions_per_host > 1
    return RaySessionMaker(options, HostPool(options, idle) if pooled else None)
