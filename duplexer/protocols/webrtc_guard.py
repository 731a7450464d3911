"""The validation layer of `duplexer serve`: every limit a request meets, and the one body reader.

The server's middleware passes each request through here before a route sees it: the Host and
Origin checks (a foreign web page or a DNS-rebinding page cannot drive the API from a visitor's
browser), the bearer token, and for a body the Content-Type, a byte cap, a read deadline and
:func:`duplexer.runtime.untrusted.load_json` (depth, digits, finite numbers). Anything refused
raises :class:`RequestRefused`, which the middleware turns into a 4xx JSON ``{"error": ...}``.
docs/webrtc.md ("Limits and security") lists every figure defined here.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from duplexer.runtime.untrusted import UntrustedInputError, load_json

HEADER_TIMEOUT_S = 10.0
"""A connection must deliver a whole request head within this (from connecting, or from the last answer)."""
BODY_TIMEOUT_S = 10.0
"""A request body must arrive in full within this once its head has."""
MAX_BODY_BYTES = 256 * 1024
"""Largest request body; an offer is a few kilobytes, a client-log post of 500 ms far less."""
MAX_CLIENT_LOG_BYTES = 1024 * 1024
"""Bytes of the page's received log one call keeps (debug only); later events are dropped and counted."""
CLIENT_LOG_GRACE_S = 10.0
"""How long after a call ends its page may still post the log's last events."""
MAX_DATA_CHANNEL_MESSAGE_BYTES = 4096
"""Largest message the server reads from a call's data channel (``{"type": "hangup"}`` is 18 bytes)."""
JSON_CONTENT_TYPE = "application/json"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class RequestRefused(Exception):
    """A request the server will not serve; ``status`` is a 4xx and the message says what to send instead."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class RequestAborted(Exception):
    """The client went away while its request was being read; there is no one to answer."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _origin_parts(origin: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an origin or of a URL; raises ValueError when it is not one."""
    parts = urlsplit(origin)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{origin!r} is not an http:// or https:// origin")
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    return parts.scheme, parts.hostname, port


def normalised_origin(origin: str) -> str:
    """``scheme://host[:port]`` of an ``--allow-origin`` value; raises ValueError naming the value."""
    parts = urlsplit(origin.strip())
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"--allow-origin {origin!r} must be scheme://host[:port], with no path")
    scheme, host, port = _origin_parts(origin.strip())
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" if port == _DEFAULT_PORTS[scheme] else f"{scheme}://{shown}:{port}"


def _host_parts(host_header: str) -> tuple[str, int | None]:
    """The name and port of a Host header; raises ValueError when it is not ``host[:port]``."""
    parts = urlsplit(f"//{host_header}")
    if not parts.hostname or parts.path or parts.query or parts.fragment or parts.username:
        raise ValueError(host_header)
    return parts.hostname, parts.port


@dataclass(frozen=True)
class OriginPolicy:
    """Which Host names and browser Origins may use the API.

    The server's own origin always passes: a request whose Origin is the scheme, host and port it
    was sent to (the served page). ``allow_origins`` adds others (a page served elsewhere, a
    reverse proxy's name). On a named or loopback bind the Host header must also be one of the
    server's names or an allowed origin's host, which defeats DNS rebinding; on a wildcard bind
    the server cannot know its names, so there the token is the guard (the CLI asks for one).
    """

    bind_host: str = "127.0.0.1"
    allow_origins: tuple[str, ...] = ()

    def host_names(self) -> frozenset[str] | None:
        """Host names the server answers to; None when any will do (a wildcard bind)."""
        if self.bind_host in WILDCARD_HOSTS:
            return None
        names = {self.bind_host.strip("[]").lower()}
        if is_loopback(self.bind_host):
            names.update(LOOPBACK_HOSTS)
        names.update(_origin_parts(origin)[1] for origin in self.allow_origins)
        return frozenset(names)

    def foreign_origin(self, request: web.BaseRequest) -> str | None:
        """The request's Origin when it is allowed but not the server's own (it then gets CORS headers)."""
        origin = request.headers.get("Origin")
        if origin is None or origin not in self.allow_origins:
            return None
        return origin

    def check(self, request: web.BaseRequest) -> None:
        """Raise RequestRefused (400 or 403) unless the Host and Origin headers are allowed."""
        host_header = request.headers.get("Host")
        names = self.host_names()
        if host_header is not None:
            try:
                host, port = _host_parts(host_header)
            except ValueError:
                raise RequestRefused(400, "the Host header is not host[:port]") from None
            if names is not None and host not in names:
                raise RequestRefused(
                    403,
                    f"this server does not answer to the host name {host[:100]!r}; "
                    "add its origin with --allow-origin if it is the server's own name",
                )
        origin = request.headers.get("Origin")
        if origin is None or origin in self.allow_origins:
            return  # not a browser (curl, aiortc), or an allowed page elsewhere
        if host_header is not None and self._same_origin(origin, host, port):
            return
        raise RequestRefused(
            403,
            f"requests from the web page origin {origin[:100]!r} are not allowed; "
            "start the server with --allow-origin ORIGIN to allow it",
        )

    @staticmethod
    def _same_origin(origin: str, host: str, port: int | None) -> bool:
        try:
            scheme, origin_host, origin_port = _origin_parts(origin)
        except ValueError:
            return False
        return origin_host == host and origin_port == (port or _DEFAULT_PORTS[scheme])


def bearer_matches(header: str, token: str) -> bool:
    """Whether an Authorization header carries ``token``, in constant time; any bytes compare safely
    (aiohttp hands a non-ASCII header over as surrogate escapes, which ``str.encode`` would refuse)."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"), token.encode("utf-8"))


def require_bearer(request: web.Request, token: str | None, realm: str, token_name: str) -> None:
    """Passes when no ``token`` is set or the request carries it; otherwise refuses with 401, naming
    ``token_name`` (how the server was given the token) and challenging for ``realm``."""
    if token is None or bearer_matches(request.headers.get("Authorization", ""), token):
        return
    why = "missing" if "Authorization" not in request.headers else "wrong"
    raise RequestRefused(
        401,
        f"{why} bearer token: send the header 'Authorization: Bearer <token>' with the server's {token_name}",
        {"WWW-Authenticate": f'Bearer realm="{realm}"'},
    )


async def read_body(request: web.Request, max_bytes: int, timeout_s: float) -> bytes:
    """The request body, refused (413, 408, 400) when over ``max_bytes``, slower than ``timeout_s``
    or malformed; raises RequestAborted when the client goes away mid-upload."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise RequestRefused(
            413, f"the request body of {request.content_length} bytes is over the limit of {max_bytes}"
        )
    chunks: list[bytes] = []
    total = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.content.iter_chunked(64 * 1024):
                total += len(chunk)
                if total > max_bytes:
                    raise RequestRefused(413, f"the request body is over {max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestRefused(408, f"the request body did not arrive within {timeout_s:g} s") from None
    except RequestRefused:
        raise
    except ConnectionError as exc:
        raise RequestAborted(str(exc) or type(exc).__name__) from None
    except Exception as exc:  # aiohttp's payload errors: a broken chunked encoding or compression
        raise RequestRefused(400, f"the request body could not be read ({type(exc).__name__})") from None
    return b"".join(chunks)


def require_json(request: web.Request) -> None:
    """Raise 415 unless the request declares ``Content-Type: application/json``."""
    if request.content_type.lower() != JSON_CONTENT_TYPE:
        shown = request.headers.get("Content-Type", "none")[:100]
        raise RequestRefused(415, f"send the body as Content-Type: {JSON_CONTENT_TYPE} (got {shown!r})")


async def read_json(request: web.Request, what: str, max_bytes: int, timeout_s: float) -> Any:
    """The JSON body of a request, after every check: Content-Type, size, deadline, depth and numbers."""
    require_json(request)
    body = await read_body(request, max_bytes, timeout_s)
    try:
        return load_json(body, what, max_bytes)
    except UntrustedInputError as exc:
        raise RequestRefused(400, str(exc)) from None
