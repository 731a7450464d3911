"""`duplexer serve`: the WebRTC server and its call page, for live conversations from a browser."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from duplexer.actors.engine_choice import add_engine_arguments
from duplexer.cli_support import add_policy_argument, chosen_policy, fail
from duplexer.protocols.executor_cli import add_transport_executor_arguments
from duplexer.protocols.observability_cli import add_observability_arguments
from duplexer.protocols.turn_credentials import TURN_TTL_S

TOKEN_ENV = "DUPLEXER_TOKEN"
TURN_SECRET_ENV = "DUPLEXER_TURN_SECRET"
BASE_WORKERS = 8
WORKERS_PER_CALL = 8


def worker_threads(max_sessions: int) -> int:
    """Threads for the loop's default executor, which aiortc's Opus encoder shares with the engines.

    A real-engine call can hold several workers at once (streams waiting on a model's
    lock, speculative replies), and a starved encoder would stutter every call's audio.
    """
    return BASE_WORKERS + WORKERS_PER_CALL * max_sessions


async def _serve(server: Any, preload: Any) -> str | None:
    """Run until SIGINT/SIGTERM; a one-line error for the user, or None."""
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(worker_threads(server.config.max_sessions), thread_name_prefix="duplexer")
    )
    if preload is not None:
        try:  # load the models now, so a missing package stops the command, not the first call
            await asyncio.to_thread(preload)
        except Exception as exc:
            return f"--engines real could not start: {type(exc).__name__}: {exc}"
    from duplexer.protocols.metrics_endpoint import MetricsPortTaken

    try:
        await server.start()
    except MetricsPortTaken as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot listen on {server.config.host}:{server.config.port} ({exc.strerror or exc}); try another --port"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await server.stop()
    return None


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from duplexer.actors.engine_choice import chosen_engines, with_engines
    from duplexer.actors.pipeline import PipelineConfig
    from duplexer.actors.tool_config import registry_from_args
    from duplexer.protocols.engine_factory import (
        EnginesUnavailable,
        preload_real_models,
        real_engines,
        real_pipeline,
        scripted_engines,
    )
    from duplexer.protocols.executor_cli import one_line, share_request, transport_executor
    from duplexer.protocols.observability_cli import observability_settings
    from duplexer.protocols.webrtc_call import CallSettings
    from duplexer.protocols.webrtc_guard import is_loopback, normalised_origin
    from duplexer.protocols.webrtc_server import IceServer, ServerConfig, WebRtcServer
    from duplexer.runtime.logging import configure_logging, get_logger

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    turn_secret = args.turn_secret if args.turn_secret is not None else os.environ.get(TURN_SECRET_ENV)
    if not is_loopback(args.host) and token is None and not args.insecure:
        return fail(
            f"--host {args.host} lets other machines call: set --token (or {TOKEN_ENV}), "
            "or pass --insecure to serve without one"
        )
    if turn_secret is not None and (args.ice_username is not None or args.ice_credential is not None):
        return fail("--turn-secret makes the TURN credentials; drop --ice-username and --ice-credential")
    try:
        origins = tuple(normalised_origin(origin) for origin in args.allow_origin)
        ice = tuple(
            IceServer(url, args.ice_username, args.ice_credential)
            if url.startswith(("turn:", "turns:"))
            else IceServer(url)
            for url in args.ice_server
        )
        if args.connect_timeout <= 0 or args.media_timeout <= 0:
            raise ValueError("--connect-timeout and --media-timeout must be positive seconds")
        share_request(args)  # checked here too, so every bad option stops the command before Ray starts
        settings = CallSettings(
            pipeline=replace(
                real_pipeline(chosen_policy(args))
                if args.engines == "real"
                else PipelineConfig(policy=chosen_policy(args)),
                tool_registry=registry_from_args(args),
            ),
            connect_timeout_s=args.connect_timeout,
            media_timeout_s=args.media_timeout,
            debug=args.debug,
            engines_name=args.engines,
            server_aec=args.aec == "server",
        )
        config = ServerConfig(
            host=args.host,
            port=args.port,
            token=token,
            max_sessions=args.max_sessions,
            ice_servers=ice,
            call=settings,
            allow_origins=origins,
            turn_secret=turn_secret,
            turn_ttl_s=args.turn_ttl,
            observability=observability_settings(args, token, args.insecure),
        )
    except ValueError as exc:
        return fail(str(exc))
    try:
        configure_logging(args.log_level)
    except ValueError as exc:
        return fail(f"--log-level: {exc}")
    preload = None
    if args.engines == "real":
        try:
            engines = real_engines()
        except EnginesUnavailable as exc:
            return fail(str(exc))
        preload = preload_real_models
    else:
        engines = scripted_engines()
    try:  # --vad/--asr/--tts/--turn-detector NAME: built-in or plug-in engines over those
        engines = with_engines(engines, chosen_engines(args))
    except ValueError as exc:  # an unknown name, a plug-in that fails to import or of the wrong type
        return fail(str(exc))
    try:  # with --executor ray: reach the cluster (or start Ray here) and deploy the shared engines
        executor = transport_executor(args, engines)
    except (ValueError, RuntimeError) as exc:  # a bad option, no Ray, no cluster, a failed deployment
        return fail(one_line(exc))
    config = replace(config, call=replace(settings, make_session=executor.make_session))
    if not is_loopback(args.host) and token is None:
        get_logger(component="webrtc").warning(
            "webrtc_no_token",
            host=args.host,
            hint=f"--insecure: anyone who can reach the port can call, and /config gives out no TURN server; "
            f"set --token or {TOKEN_ENV}",
        )
    try:
        error = asyncio.run(_serve(WebRtcServer(config, executor.engines), preload))
    finally:
        executor.close()
    return fail(error) if error else 0


def register(commands: Any) -> None:
    from duplexer.actors.tool_config import add_tools_argument

    serve = commands.add_parser(
        "serve",
        help="serve live calls from a browser over WebRTC",
        description="Serve a web page and a WebRTC signalling endpoint. Each call is its own session of "
        "actors: the browser's microphone goes in, the bot's voice comes back, and state changes, "
        "transcripts, bot text and per-turn latency arrive on a data channel. Open http://HOST:PORT/ "
        "in a browser. Details in docs/webrtc.md. With --executor ray, each call's controller, context, "
        "LLM and TTS run in a Ray actor (on a local Ray instance, or a cluster with --ray-address), "
        "and --share puts engines every call shares on Ray Serve, e.g. the LLM on GPU nodes with "
        "--share llm --llm-gpus 1 (docs/deploy.md). Stop with Ctrl-C or SIGTERM.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080; 0 picks a free one)")
    serve.add_argument(
        "--token",
        help=f"require 'Authorization: Bearer TOKEN' on the API (or set {TOKEN_ENV}, which keeps it out of ps); "
        "needed for a --host other than loopback unless --insecure is given",
    )
    serve.add_argument("--max-sessions", type=int, default=4, metavar="N", help="concurrent calls (default: 4)")
    serve.add_argument(
        "--engines",
        choices=("real", "scripted"),
        default="real",
        help="real (default): the models of duplexer.actors.models, loaded once; scripted: model-free engines "
        "(energy VAD, canned transcript, scripted LLM, a humming voice), for trials and tests",
    )
    serve.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="a STUN or TURN server for both peers, e.g. stun:stun.example.org:3478 (repeatable; default: "
        "none, which works on loopback and closed networks)",
    )
    serve.add_argument("--ice-username", help="user name for the turn: servers")
    serve.add_argument("--ice-credential", help="credential for the turn: servers")
    serve.add_argument(
        "--turn-secret",
        metavar="SECRET",
        help="a secret shared with the turn: servers (coturn's static-auth-secret): each caller gets a "
        f"user name and password valid for --turn-ttl seconds instead of fixed ones (or set {TURN_SECRET_ENV})",
    )
    serve.add_argument(
        "--turn-ttl",
        type=int,
        default=TURN_TTL_S,
        metavar="S",
        help=f"life of those credentials (default: {TURN_TTL_S})",
    )
    serve.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web page origin besides the server's own that may use the API, e.g. https://app.example.org "
        "(repeatable; default: only the page this server serves). Browsers sending any other Origin get 403",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a --host other than loopback without --token (anyone who can reach the port can call)",
    )
    serve.add_argument(
        "--connect-timeout", type=float, default=30.0, metavar="S", help="end calls not connected by then"
    )
    serve.add_argument(
        "--media-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="end calls whose microphone audio stops arriving for this long (a vanished peer)",
    )
    serve.add_argument(
        "--debug",
        action="store_true",
        help="keep each call's messages and accept the page's received log (GET /calls, /calls/ID)",
    )
    serve.add_argument(
        "--aec",
        choices=("off", "server"),
        default="off",
        help="echo cancellation: 'server' takes the bot's own voice out of each caller's microphone, "
        "for peers that do not cancel it; 'off' (default) leaves it to the browser, which does",
    )
    serve.add_argument("--log-level", default="INFO", help="structured log level (default: INFO)")
    add_tools_argument(serve)
    add_observability_arguments(serve, own_token=False)
    add_transport_executor_arguments(serve)
    add_policy_argument(serve)
    add_engine_arguments(serve)
    serve.set_defaults(handler=run)
