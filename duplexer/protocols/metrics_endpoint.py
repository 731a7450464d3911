"""The ``/metrics`` endpoint of ``serve`` and ``mqtt``: Prometheus's text format, on a port of its own.

It listens on loopback unless told otherwise, and with a token every request needs
``Authorization: Bearer TOKEN``. Requests pass the same checks as serve's API
(:mod:`duplexer.protocols.webrtc_guard`: Host and Origin, the token, a header deadline); any refusal
is a 4xx JSON ``{"error": ...}``, counted under the ``metrics`` surface of ``duplexer_errors_total``.
docs/observability.md lists what the endpoint exports.
"""

from __future__ import annotations

import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from duplexer.protocols.http_error_counts import error_counting
from duplexer.protocols.webrtc_guard import HEADER_TIMEOUT_S, OriginPolicy, RequestRefused, require_bearer
from duplexer.runtime.error_counts import ErrorCounts
from duplexer.runtime.logging import get_logger
from duplexer.runtime.observability import Observability
from duplexer.runtime.service_metrics import ServiceMetrics
from duplexer.runtime.turn_tracing import TurnTracer

METRICS_PATH = "/metrics"
METRICS_SURFACE = "metrics"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MetricsPortTaken(RuntimeError):
    """The metrics endpoint cannot listen; the message names the address and the option to change."""


@dataclass(frozen=True)
class ObservabilitySettings:
    """Where a server exports its figures: the ``/metrics`` port (None: no endpoint) and the tracer."""

    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    metrics_token: str | None = None
    tracer: TurnTracer | None = None

    def __post_init__(self) -> None:
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"--metrics-port {self.metrics_port} is not within 0..65535")
        if self.metrics_token is not None and not self.metrics_token.strip():
            raise ValueError("the metrics token must not be empty")

    @property
    def enabled(self) -> bool:
        """Whether sessions need a turn recorder: something reads its figures."""
        return self.metrics_port is not None or self.tracer is not None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class MetricsEndpoint:
    """Serves one :class:`ServiceMetrics` registry at ``GET /metrics``."""

    def __init__(self, metrics: ServiceMetrics, host: str = "127.0.0.1", port: int = 0, token: str | None = None):
        self.metrics = metrics
        self.host, self.token = host, token
        self.requested_port = port
        self.port: int | None = None
        self.errors = ErrorCounts()
        metrics.add_error_counts(METRICS_SURFACE, self.errors)
        self.origins = OriginPolicy(host)
        self.log = get_logger(component="metrics")
        self.app = web.Application(middlewares=[self._guard])
        self.app.router.add_get(METRICS_PATH, self.scrape)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}{METRICS_PATH}"

    async def start(self) -> None:
        """Listen (port 0 picks a free one, see ``port``); raises MetricsPortTaken when it cannot."""
        runner = web.AppRunner(
            self.app, handle_signals=False, keepalive_timeout=HEADER_TIMEOUT_S, **error_counting(self.errors)
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.requested_port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise MetricsPortTaken(
                f"cannot listen on {self.host}:{self.requested_port} for /metrics ({exc.strerror or exc}); "
                "try another --metrics-port"
            ) from None
        self._runner = runner
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else self.requested_port
        self.log.info("metrics_listening", url=self.url, token=self.token is not None)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            self.origins.check(request)
            self._check_token(request)
            return await handler(request)
        except RequestRefused as exc:
            return _error(exc.status, exc.message, exc.headers or None)
        except web.HTTPException as exc:  # aiohttp's own: no such route, wrong method
            if exc.status < 400:
                raise
            return _error(exc.status, f"{exc.reason}: {request.method} {request.path[:200]}; scrape GET {METRICS_PATH}")
        except Exception as exc:  # a bug: one line with where it happened, never a traceback to the client
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{Path(frame.filename).name}:{frame.lineno}"
            self.log.error("metrics_internal_error", error=repr(exc)[:300], where=where)
            return _error(500, "internal error; the server log has the details")

    def _check_token(self, request: web.Request) -> None:
        require_bearer(request, self.token, "duplexer-metrics", "token")

    async def scrape(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


class ObservedService:
    """A server's observability as its settings ask: the recorders' sink, the endpoint, the tracer."""

    def __init__(self, settings: ObservabilitySettings, surface: str, errors: ErrorCounts) -> None:
        self.settings = settings
        self.observability: Observability | None = None
        self.endpoint: MetricsEndpoint | None = None
        if not settings.enabled:
            return
        self.observability = Observability(ServiceMetrics(), settings.tracer)
        self.observability.metrics.add_error_counts(surface, errors)
        if settings.metrics_port is not None:
            self.endpoint = MetricsEndpoint(
                self.observability.metrics, settings.metrics_host, settings.metrics_port, settings.metrics_token
            )

    async def start(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.start()

    async def stop(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.stop()
        if self.observability is not None:
            self.observability.close()
