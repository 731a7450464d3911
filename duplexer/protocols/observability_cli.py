"""The observability options shared by ``serve`` and ``mqtt``: the /metrics port and OTLP tracing."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import replace

from duplexer.protocols.metrics_endpoint import ObservabilitySettings
from duplexer.protocols.webrtc_guard import is_loopback
from duplexer.runtime.turn_tracing import OTLP_ENDPOINT_ENV, otlp_tracer

METRICS_TOKEN_ENV = "DUPLEXER_METRICS_TOKEN"


def add_observability_arguments(parser: argparse.ArgumentParser, own_token: bool) -> None:
    """``--metrics-port``, ``--metrics-host``, ``--otlp-endpoint``, and with ``own_token`` ``--metrics-token``
    (serve guards /metrics with its ``--token`` instead)."""
    guard = (
        f"with --metrics-token (or {METRICS_TOKEN_ENV}), scrapers must send 'Authorization: Bearer TOKEN'"
        if own_token
        else "with --token, scrapers must send 'Authorization: Bearer TOKEN'"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help=f"serve Prometheus metrics at http://HOST:PORT/metrics, on a port of their own (default: off; "
        f"0 picks a free one); {guard}. Names in docs/observability.md",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address the metrics port listens on (default: 127.0.0.1); another needs a token",
    )
    if own_token:
        parser.add_argument(
            "--metrics-token",
            metavar="TOKEN",
            help=f"require 'Authorization: Bearer TOKEN' on /metrics (or set {METRICS_TOKEN_ENV}, which keeps "
            "it out of ps)",
        )
    parser.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="send an OpenTelemetry trace per turn, with a span per stage, to this OTLP/HTTP collector, e.g. "
        f"http://localhost:4318 (/v1/traces is appended; default: {OTLP_ENDPOINT_ENV} if set, else no tracing)",
    )


def observability_settings(
    args: argparse.Namespace, token: str | None, insecure: bool = False, env: Mapping[str, str] = os.environ
) -> ObservabilitySettings:
    """The settings the options ask for; raises ValueError with the one-line reason for a bad one.

    ``token`` guards /metrics (serve's ``--token``); where the command has ``--metrics-token``, that
    (or its variable) is the token instead."""
    if hasattr(args, "metrics_token"):
        token = args.metrics_token if args.metrics_token is not None else env.get(METRICS_TOKEN_ENV)
    if args.metrics_port is not None and not is_loopback(args.metrics_host) and token is None and not insecure:
        option = "--metrics-token" if hasattr(args, "metrics_token") else "--token"
        raise ValueError(
            f"--metrics-host {args.metrics_host} lets other machines read the metrics: set {option}"
            + ("" if hasattr(args, "metrics_token") else " or pass --insecure")
        )
    settings = ObservabilitySettings(
        metrics_port=args.metrics_port, metrics_host=args.metrics_host, metrics_token=token
    )
    return replace(settings, tracer=otlp_tracer(args.otlp_endpoint, env))
