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
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCSessionDescription
from aiortc.sdp import SessionDescription

from duplexer.protocols.engine_factory import EngineFactory
from duplexer.protocols.http_error_counts import error_counting
from duplexer.protocols.webrtc_call import Call, CallSettings, OfferRejected
from duplexer.runtime.error_counts import ErrorCounts
from duplexer.runtime.logging import get_logger

WEB_DIR = Path(__file__).resolve().parent / "web"
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
ICE_URL_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")
MAX_SDP_CHARS = 64_000
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
    max_body_bytes: int = 256 * 1024
    recent_calls_kept: int = 20

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError(f"max sessions must be at least 1, got {self.max_sessions}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not within 0..65535")
        if self.token is not None and not self.token.strip():
            raise ValueError("the token must not be empty")


def rtc_configuration(servers: tuple[IceServer, ...]) -> RTCConfiguration:
    return RTCConfiguration(
        iceServers=[RTCIceServer(urls=s.url, username=s.username, credential=s.credential) for s in servers]
    )


class BadRequest(ValueError):
    """A request a client got wrong; the message says what to send instead."""


def parse_offer(body: str) -> RTCSessionDescription:
    """The offer in a signalling request body; raises BadRequest naming what is wrong."""
    hint = 'send {"type": "offer", "sdp": "<the offer SDP>"}'
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"the request body is not JSON ({exc}); {hint}") from None
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


class WebRtcServer:
    """Serves the call page and answers offers, one session of actors per call."""

    def __init__(self, config: ServerConfig, engines: EngineFactory) -> None:
        self.config = config
        self.engines = engines
        self.settings = replace(config.call, rtc_configuration=rtc_configuration(config.ice_servers))
        self.calls: dict[str, Call] = {}
        self.errors = ErrorCounts()
        """Error responses sent, by HTTP status (``/health`` reports them)."""
        self.recent: OrderedDict[str, Call] = OrderedDict()
        self.log = get_logger(component="webrtc")
        self.app = self._build_app()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # ------------------------------------------------------------ lifecycle

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
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
        self._runner = web.AppRunner(self.app, handle_signals=False, **error_counting(self.errors))
        await self._runner.setup()
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

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.close_all("server_stopped")

    async def close_all(self, reason: str) -> None:
        calls = list(self.calls.values())
        await asyncio.gather(*(call.close(reason) for call in calls), return_exceptions=True)

    def _closed(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        self.recent[call.id] = call
        while len(self.recent) > self.config.recent_calls_kept:
            self.recent.popitem(last=False)

    # ------------------------------------------------------------ helpers

    def _authorized(self, request: web.Request) -> bool:
        token = self.config.token
        if token is None:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

    def _unauthorized(self, request: web.Request) -> web.Response:
        missing = "Authorization" not in request.headers
        why = "missing" if missing else "wrong"
        return _error(
            401,
            f"{why} bearer token: send the header 'Authorization: Bearer <token>' with the server's --token",
            **{"WWW-Authenticate": 'Bearer realm="duplexer"'},
        )

    def _too_large(self) -> web.Response:
        limit = self.config.max_body_bytes
        return _error(413, f"the request body is over {limit} bytes; an offer is a few kilobytes")

    def _find(self, call_id: str) -> Call | None:
        return self.calls.get(call_id) or self.recent.get(call_id)

    # ------------------------------------------------------------ page and config

    async def page(self, request: web.Request) -> web.StreamResponse:
        return self._file("index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        return self._file(request.match_info["name"])

    def _file(self, name: str) -> web.StreamResponse:
        path = WEB_DIR / name
        suffix = path.suffix
        if "/" in name or name.startswith(".") or suffix not in CONTENT_TYPES or not path.is_file():
            return _error(404, f"no such file: {name}")
        return web.Response(
            body=path.read_bytes(),
            content_type=CONTENT_TYPES[suffix],
            charset="utf-8",
            headers=PAGE_SECURITY_HEADERS,
        )

    async def client_config(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized(request)
        return web.json_response(
            {
                "ice_servers": [server.as_json() for server in self.config.ice_servers],
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
        if not self._authorized(request):
            return self._unauthorized(request)
        try:
            offer = parse_offer(await request.text())
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        except BadRequest as exc:
            self.log.warning("webrtc_bad_offer", error=str(exc))
            return _error(400, str(exc))
        except UnicodeDecodeError:
            return _error(400, "the request body is not UTF-8 text; send the offer as JSON")
        if len(self.calls) >= self.config.max_sessions:
            self.log.warning("webrtc_full", sessions=len(self.calls))
            return _error(
                503,
                f"the server is at its limit of {self.config.max_sessions} concurrent calls; try again later",
                **{"Retry-After": "5"},
            )
        call = Call(self.settings, self.engines, on_closed=self._closed)
        self.calls[call.id] = call
        try:
            answer = await call.answer(offer)
        except OfferRejected as exc:
            await call.close("bad_offer")
            return _error(400, str(exc))
        except Exception as exc:
            self.log.exception("webrtc_answer_failed", error=repr(exc))
            await call.close("answer_failed")
            return _error(500, f"the call could not be started: {type(exc).__name__}: {exc}")
        return web.json_response(
            {"type": answer.type, "sdp": answer.sdp, "session_id": call.id, "debug": self.settings.debug}
        )

    async def hangup(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized(request)
        call_id = request.match_info["call_id"]
        call = self._find(call_id)
        if call is None:
            return _error(404, f"no call {call_id!r}")
        await call.close("hangup")
        return web.json_response({"session_id": call.id, "closed": True, "reason": call.close_reason})

    # ------------------------------------------------------------ debug

    def _debug_off(self) -> web.Response:
        return _error(404, "the call log endpoints are off; start the server with --debug")

    async def list_calls(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized(request)
        if not self.settings.debug:
            return self._debug_off()
        return web.json_response(
            {
                "active": [call.summary() for call in self.calls.values()],
                "recent": [call.summary() for call in self.recent.values()],
            }
        )

    async def call_detail(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized(request)
        if not self.settings.debug:
            return self._debug_off()
        call = self._find(request.match_info["call_id"])
        if call is None:
            return _error(404, f"no call {request.match_info['call_id']!r}")
        detail = call.summary()
        detail.update(sent=list(call.sent_log), client_log=call.client_log, client_stats=call.client_stats)
        return web.json_response(detail)

    async def client_log(self, request: web.Request) -> web.Response:
        """The page's report of the messages it received and its RTP stats (debug only)."""
        if not self._authorized(request):
            return self._unauthorized(request)
        if not self.settings.debug:
            return self._debug_off()
        call = self._find(request.match_info["call_id"])
        if call is None:
            return _error(404, f"no call {request.match_info['call_id']!r}")
        try:
            data = json.loads(await request.text())
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        except (ValueError, UnicodeDecodeError):
            return _error(400, 'the client log must be JSON: {"events": [...], "stats": {...}}')
        events = data.get("events") if isinstance(data, dict) else None
        stats = data.get("stats", {}) if isinstance(data, dict) else None
        if not isinstance(events, list) or not isinstance(stats, dict):
            return _error(400, 'the client log must be JSON: {"events": [...], "stats": {...}}')
        room = max(0, self.settings.log_limit - len(call.client_log))
        call.client_log.extend(event for event in events[:room] if isinstance(event, dict))
        call.client_stats = stats
        return web.json_response({"received": len(call.client_log)})
