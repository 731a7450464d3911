"""The WebRTC server: an aiohttp app serving the call page and the offer/answer signalling endpoint.

Routes (docs/webrtc.md has the details):

- ``GET /`` and ``GET /static/{name}``: the call page.
- ``GET /config``: ICE servers for the page's peer connection.
- ``POST /offer``: ``{"type": "offer", "sdp": ...}`` in, the answer out; starts a call.
- ``POST /calls/{id}/hangup``: end a call.
- ``GET /health``: session counts.
- With ``debug``: ``GET /calls``, ``GET /calls/{id}`` (messages sent, the client's
  received log and stats) and ``POST /calls/{id}/client-log`` (the page reports what it received).

With a token, every route but the page and /health needs ``Authorization: Bearer TOKEN``.
Every request first passes the validation layer (:mod:`duplexer.protocols.webrtc_guard`, run by
one middleware): Host and Origin, the token, and for bodies the Content-Type, size, read deadline
and JSON limits. Every refusal is a 4xx with a JSON ``{"error": ...}``; nothing a client sends
gives a traceback.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCSessionDescription
from aiortc.sdp import SessionDescription

from duplexer.protocols.echo_session import warm_up
from duplexer.protocols.engine_factory import EngineFactory
from duplexer.protocols.http_error_counts import error_counting
from duplexer.protocols.metrics_endpoint import ObservabilitySettings, ObservedService
from duplexer.protocols.turn_credentials import TURN_TTL_S, turn_rest_credentials
from duplexer.protocols.webrtc_call import Call, CallSettings, OfferRejected
from duplexer.protocols.webrtc_guard import (
    BODY_TIMEOUT_S,
    CLIENT_LOG_GRACE_S,
    HEADER_TIMEOUT_S,
    MAX_BODY_BYTES,
    MAX_CLIENT_LOG_BYTES,
    OriginPolicy,
    RequestAborted,
    RequestRefused,
    is_loopback,
    read_json,
    require_bearer,
)
from duplexer.protocols.webrtc_messages import encode
from duplexer.runtime.error_counts import ErrorCounts
from duplexer.runtime.logging import get_logger

WEB_DIR = Path(__file__).resolve().parent / "web"
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
ICE_URL_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")
MAX_SDP_CHARS = 64_000
MAX_STATIC_NAME_CHARS = 64
OPEN_ROUTES = frozenset({"/", "/static/{name}", "/health"})
"""Routes that need no token: the page (it asks for the token) and the health check."""
CORS_ALLOWED_HEADERS = "Authorization, Content-Type"
PAGE_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; media-src 'self' blob: mediastream:",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server for both peers; none by default, so calls work on closed networks."""

    url: str
    username: str | None = None
    credential: str | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith(ICE_URL_SCHEMES):
            raise ValueError(f"ICE server {self.url!r} must start with one of {', '.join(ICE_URL_SCHEMES)}")

    @property
    def is_turn(self) -> bool:
        return self.url.startswith(("turn:", "turns:"))

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"urls": [self.url]}
        if self.username is not None:
            body["username"] = self.username
        if self.credential is not None:
            body["credential"] = self.credential
        return body


@dataclass(frozen=True)
class ServerConfig:
    """Every server setting, with defaults in one place."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    max_sessions: int = 4
    ice_servers: tuple[IceServer, ...] = ()
    call: CallSettings = field(default_factory=CallSettings)
    max_body_bytes: int = MAX_BODY_BYTES
    recent_calls_kept: int = 20
    allow_origins: tuple[str, ...] = ()
    """Browser origins besides the server's own that may use the API (normalised scheme://host[:port])."""
    turn_secret: str | None = None
    """A secret shared with the TURN servers: each caller then gets credentials valid for ``turn_ttl_s``."""
    turn_ttl_s: int = TURN_TTL_S
    header_timeout_s: float = HEADER_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    client_log_max_bytes: int = MAX_CLIENT_LOG_BYTES
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    """The /metrics port (behind ``token`` unless it has its own) and the tracer; off by default."""

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError(f"max sessions must be at least 1, got {self.max_sessions}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not within 0..65535")
        if self.token is not None and not self.token.strip():
            raise ValueError("the token must not be empty")
        if self.turn_secret is not None and not self.turn_secret.strip():
            raise ValueError("the TURN secret must not be empty")
        if self.turn_secret is not None and not any(server.is_turn for server in self.ice_servers):
            raise ValueError("a TURN secret needs a turn: or turns: --ice-server to hand credentials for")
        if self.turn_ttl_s < 60:
            raise ValueError(f"TURN credentials must live at least 60 s, got {self.turn_ttl_s}")
        if self.header_timeout_s <= 0 or self.body_timeout_s <= 0:
            raise ValueError("the header and body read timeouts must be positive seconds")


def rtc_configuration(servers: tuple[IceServer, ...]) -> RTCConfiguration:
    return RTCConfiguration(
        iceServers=[RTCIceServer(urls=s.url, username=s.username, credential=s.credential) for s in servers]
    )


class BadRequest(ValueError):
    """A request a client got wrong; the message says what to send instead."""


def parse_offer(data: Any) -> RTCSessionDescription:
    """The offer in a decoded signalling request body; raises BadRequest naming what is wrong."""
    hint = 'send {"type": "offer", "sdp": "<the offer SDP>"}'
    if not isinstance(data, dict):
        raise BadRequest(f"the request body must be a JSON object; {hint}")
    sdp, kind = data.get("sdp"), data.get("type")
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadRequest(f'"sdp" is missing or not a string; {hint}')
    if kind != "offer":
        raise BadRequest(f'"type" must be "offer", got {kind!r}; {hint}')
    if len(sdp) > MAX_SDP_CHARS:
        raise BadRequest(f"the SDP is {len(sdp)} characters long; at most {MAX_SDP_CHARS} are accepted")
    if not sdp.lstrip().startswith("v=0"):
        raise BadRequest('malformed SDP: it must start with "v=0"')
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever the bad line provokes
        raise BadRequest(f"malformed SDP: {type(exc).__name__}: {exc}") from None
    mids = [media.rtp.muxId for media in parsed.media if media.rtp.muxId]
    if len(mids) != len(set(mids)):
        raise BadRequest("malformed SDP: two media sections share one a=mid; each section needs its own")
    kinds = [media.kind for media in parsed.media if media.port != 0]
    if "audio" not in kinds:
        raise BadRequest("the offer has no audio section; add a microphone track before createOffer")
    if "video" in kinds:
        raise BadRequest("only audio calls are supported; remove the video track from the offer")
    for media in parsed.media:
        if media.port == 0:
            continue
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise BadRequest(f"malformed SDP: the {media.kind} section has no a=ice-ufrag/a=ice-pwd")
        if media.dtls is None or not media.dtls.fingerprints:
            raise BadRequest(f"malformed SDP: the {media.kind} section has no DTLS a=fingerprint")
    return RTCSessionDescription(sdp=sdp, type="offer")


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebRtcServer:
    """Serves the call page and answers offers, one session of actors per call."""

    def __init__(self, config: ServerConfig, engines: EngineFactory) -> None:
        self.config = config
        self.engines = engines
        self.origins = OriginPolicy(config.host, config.allow_origins)
        self.calls: dict[str, Call] = {}
        self.errors = ErrorCounts()
        """Error responses sent, by HTTP status (``/health`` reports them)."""
        watch = config.observability
        self.observed = ObservedService(
            replace(watch, metrics_token=watch.metrics_token or config.token), "webrtc", self.errors
        )
        self.settings = replace(
            config.call,
            rtc_configuration=rtc_configuration(config.ice_servers),
            observability=self.observed.observability,
        )
        self.recent: OrderedDict[str, Call] = OrderedDict()
        self.ended_at_s: dict[str, float] = {}
        self.log = get_logger(component="webrtc")
        self.app = self._build_app()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # ------------------------------------------------------------ lifecycle

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[self._guard])
        app.router.add_get("/", self.page)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/config", self.client_config)
        app.router.add_get("/health", self.health)
        app.router.add_post("/offer", self.offer)
        app.router.add_post("/calls/{call_id}/hangup", self.hangup)
        app.router.add_get("/calls", self.list_calls)
        app.router.add_get("/calls/{call_id}", self.call_detail)
        app.router.add_post("/calls/{call_id}/client-log", self.client_log)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def start(self) -> None:
        """Listen on the configured host and port (port 0 picks a free one, see ``port``)."""
        if self.config.call.server_aec:
            await asyncio.to_thread(warm_up)  # the canceller's compiled kernels: not in a call's first frame
        # aiohttp's keep-alive timer runs from the connection's start and from each answer until a whole
        # request head has arrived, so it is the header read deadline too (a slowloris is closed by it).
        self._runner = web.AppRunner(
            self.app,
            handle_signals=False,
            keepalive_timeout=self.config.header_timeout_s,
            **error_counting(self.errors),
        )
        await self._runner.setup()
        await self.observed.start()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else self.config.port
        self.log.info("webrtc_listening", url=self.url, max_sessions=self.config.max_sessions)

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        """End every call and stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()  # runs _on_shutdown
            self._runner = None
        else:
            await self.close_all("server_stopped")
        await self.observed.stop()

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.close_all("server_stopped")

    async def close_all(self, reason: str) -> None:
        calls = list(self.calls.values())
        await asyncio.gather(*(call.close(reason) for call in calls), return_exceptions=True)

    def _closed(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        self.recent[call.id] = call
        self.ended_at_s[call.id] = time.monotonic()
        while len(self.recent) > self.config.recent_calls_kept:
            gone, _ = self.recent.popitem(last=False)
            self.ended_at_s.pop(gone, None)

    # ------------------------------------------------------------ the validation layer

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every request passes here: Host/Origin, CORS preflight, token; refusals become 4xx JSON."""
        try:
            self.origins.check(request)
            foreign = self.origins.foreign_origin(request)
            if request.method == "OPTIONS" and foreign is not None:
                return web.Response(status=204, headers=self._cors_headers(foreign, preflight=True))
            route = request.match_info.route.resource
            if route is not None and route.canonical not in OPEN_ROUTES:
                self._check_token(request)
            response = await handler(request)
        except RequestRefused as exc:
            response = _error(exc.status, exc.message, **exc.headers)
        except BadRequest as exc:
            response = _error(400, str(exc))
        except RequestAborted as exc:
            self.log.info("webrtc_request_aborted", path=request.path[:200], error=str(exc))
            return _error(400, "the request was aborted")
        except web.HTTPException as exc:  # aiohttp's own: no such route, wrong method
            if exc.status < 400:
                raise
            response = _error(exc.status, f"{exc.reason}: {request.method} {request.path[:200]}")
        except Exception as exc:  # a bug: one line with where it happened, never a traceback to the client
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            self.log.error(
                "webrtc_internal_error",
                path=request.path[:200],
                error=repr(exc)[:300],
                where=f"{Path(frame.filename).name}:{frame.lineno}",
            )
            response = _error(500, "internal error; the server log has the details")
        foreign = self.origins.foreign_origin(request)
        if foreign is not None:
            response.headers.update(self._cors_headers(foreign, preflight=False))
        return response

    @staticmethod
    def _cors_headers(origin: str, preflight: bool) -> dict[str, str]:
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if preflight:
            headers["Access-Control-Allow-Methods"] = "GET, POST"
            headers["Access-Control-Allow-Headers"] = CORS_ALLOWED_HEADERS
            headers["Access-Control-Max-Age"] = "600"
        return headers

    def _check_token(self, request: web.Request) -> None:
        require_bearer(request, self.config.token, "duplexer", "--token")

    async def _json_body(self, request: web.Request, what: str) -> Any:
        return await read_json(request, what, self.config.max_body_bytes, self.config.body_timeout_s)

    def _find(self, call_id: str) -> Call:
        call = self.calls.get(call_id) or self.recent.get(call_id)
        if call is None:
            raise RequestRefused(404, f"no call {call_id[:100]!r}")
        return call

    def _ice_servers(self) -> tuple[IceServer, ...]:
        """The ICE servers for a new call, with fresh short-lived TURN credentials under a shared secret."""
        secret = self.config.turn_secret
        if secret is None:
            return self.config.ice_servers
        username, password = turn_rest_credentials(secret, time.time(), self.config.turn_ttl_s)
        return tuple(
            replace(server, username=username, credential=password) if server.is_turn else server
            for server in self.config.ice_servers
        )

    # ------------------------------------------------------------ page and config

    async def page(self, request: web.Request) -> web.StreamResponse:
        return self._file("index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        return self._file(request.match_info["name"])

    def _file(self, name: str) -> web.StreamResponse:
        shown = name[:MAX_STATIC_NAME_CHARS]
        if len(name) > MAX_STATIC_NAME_CHARS or "/" in name or "\\" in name or "\x00" in name or name.startswith("."):
            return _error(404, f"no such file: {shown}")
        path = WEB_DIR / name
        suffix = path.suffix
        if suffix not in CONTENT_TYPES or not path.is_file():
            return _error(404, f"no such file: {shown}")
        return web.Response(
            body=path.read_bytes(),
            content_type=CONTENT_TYPES[suffix],
            charset="utf-8",
            headers=PAGE_SECURITY_HEADERS,
        )

    async def client_config(self, request: web.Request) -> web.Response:
        servers = self._ice_servers()
        if self.config.token is None and not is_loopback(self.config.host):
            servers = tuple(server for server in servers if not server.is_turn)  # TURN only to token holders
        return web.json_response(
            {
                "ice_servers": [server.as_json() for server in servers],
                "debug": self.settings.debug,
                "engines": self.settings.engines_name,
            }
        )

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "sessions": len(self.calls),
                "max_sessions": self.config.max_sessions,
                "errors": self.errors.as_dict(),
            }
        )

    # ------------------------------------------------------------ signalling

    async def offer(self, request: web.Request) -> web.Response:
        try:
            offer = parse_offer(await self._json_body(request, "the offer body"))
        except (BadRequest, RequestRefused) as exc:
            self.log.warning("webrtc_bad_offer", error=str(exc)[:300])
            raise
        if len(self.calls) >= self.config.max_sessions:
            self.log.warning("webrtc_full", sessions=len(self.calls))
            return _error(
                503,
                f"the server is at its limit of {self.config.max_sessions} concurrent calls; try again later",
                **{"Retry-After": "5"},
            )
        settings = replace(self.settings, rtc_configuration=rtc_configuration(self._ice_servers()))
        call = Call(settings, self.engines, on_closed=self._closed)
        self.calls[call.id] = call
        try:
            answer = await call.answer(offer)
        except OfferRejected as exc:
            await call.close("bad_offer")
            return _error(400, str(exc))
        except Exception as exc:
            self.log.error("webrtc_answer_failed", error=repr(exc)[:300])
            await call.close("answer_failed")
            return _error(500, f"the call could not be started: {type(exc).__name__}: {exc}")
        return web.json_response(
            {"type": answer.type, "sdp": answer.sdp, "session_id": call.id, "debug": self.settings.debug}
        )

    async def hangup(self, request: web.Request) -> web.Response:
        call = self._find(request.match_info["call_id"])
        await call.close("hangup")
        return web.json_response({"session_id": call.id, "closed": True, "reason": call.close_reason})

    # ------------------------------------------------------------ debug

    def _require_debug(self) -> None:
        if not self.settings.debug:
            raise RequestRefused(404, "the call log endpoints are off; start the server with --debug")

    async def list_calls(self, request: web.Request) -> web.Response:
        self._require_debug()
        return web.json_response(
            {
                "active": [call.summary() for call in self.calls.values()],
                "recent": [call.summary() for call in self.recent.values()],
            }
        )

    async def call_detail(self, request: web.Request) -> web.Response:
        self._require_debug()
        call = self._find(request.match_info["call_id"])
        detail = call.summary()
        detail.update(sent=list(call.sent_log), client_log=call.client_log, client_stats=call.client_stats)
        return web.json_response(detail)

    async def client_log(self, request: web.Request) -> web.Response:
        """The page's report of the messages it received and its RTP stats (debug only).

        A call keeps at most ``client_log_max_bytes`` of it; posts come until shortly after the call ends
        (the page posts its last events on ``bye``), later ones are refused."""
        self._require_debug()
        call = self._find(request.match_info["call_id"])
        ended_at_s = self.ended_at_s.get(call.id)
        if ended_at_s is not None and time.monotonic() - ended_at_s > CLIENT_LOG_GRACE_S:
            raise RequestRefused(409, f"call {call.id} has ended; its log is closed")
        shape = 'the client log must be JSON: {"events": [...], "stats": {...}}'
        data = await self._json_body(request, "the client log")
        events = data.get("events") if isinstance(data, dict) else None
        stats = data.get("stats", {}) if isinstance(data, dict) else None
        if not isinstance(events, list) or not isinstance(stats, dict):
            raise RequestRefused(400, shape)
        dropped = 0
        for event in events:
            size = len(encode(event).encode("utf-8")) if isinstance(event, dict) else 0
            if size == 0 or call.client_log_bytes + size > self.config.client_log_max_bytes:
                dropped += 1
                continue
            call.client_log.append(event)
            call.client_log_bytes += size
        call.client_log_dropped += dropped
        call.client_stats = stats
        return web.json_response({"received": len(call.client_log), "dropped": call.client_log_dropped})
