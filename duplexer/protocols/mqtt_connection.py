"""Reaching a broker: its URL, credentials and TLS, the client factory, and the reconnect backoff.

Shared by the bridge and the device client so both treat ``--broker``,
``--username``/``--password`` and ``--tls`` the same way.
"""

from __future__ import annotations

import logging
import random
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

PLAIN_SCHEMES = ("mqtt", "tcp")
TLS_SCHEMES = ("mqtts", "ssl")
DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
PAHO_LOGGER = logging.getLogger("duplexer.mqtt.paho")
"""paho's own messages; connection problems are logged by the bridge as structured lines instead."""
PAHO_LOGGER.addHandler(logging.NullHandler())
AUTH_FAILURE_CODES = frozenset({4, 5, 134, 135})
"""CONNACK codes for bad credentials or no authorisation (MQTT 3.1.1: 4, 5; MQTT 5: 0x86, 0x87)."""


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker is and how to log in; the password never appears in ``repr`` or logs."""

    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    tls_insecure: bool = False
    keepalive_s: int = 20

    def __repr__(self) -> str:
        return f"BrokerSettings({self.url!r}, username={self.username!r}, tls={self.tls})"

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def redact_url(url: str) -> str:
    """``url`` with the password in it (``scheme://user:password@host``) replaced by ``***``, for
    messages and logs; anything that is not such a URL comes back unchanged."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, host = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{host}{tail}"


def broker_settings(
    url: str,
    username: str | None = None,
    password: str | None = None,
    tls: bool = False,
    ca_file: Path | None = None,
    tls_insecure: bool = False,
) -> BrokerSettings:
    """Settings from ``mqtt://host:port`` (or ``mqtts://``); raises ValueError with a one-line fix."""
    shown = repr(redact_url(url))
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError(f"broker URL {shown} is not of the form mqtt://host:1883 or mqtts://host:8883") from None
    scheme = parts.scheme.lower()
    if scheme not in PLAIN_SCHEMES + TLS_SCHEMES or not parts.hostname:
        raise ValueError(f"broker URL {shown} is not of the form mqtt://host:1883 or mqtts://host:8883")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker URL {shown} has a path or query; give only mqtt://host:port")
    use_tls = tls or scheme in TLS_SCHEMES
    try:
        port = parts.port or (DEFAULT_TLS_PORT if use_tls else DEFAULT_PORT)
    except ValueError:
        raise ValueError(f"broker URL {shown} has an invalid port; use 1..65535") from None
    if parts.username and username is None:
        username = unquote(parts.username)
        if parts.password and password is None:
            password = unquote(parts.password)
    if password is not None and username is None:
        raise ValueError("a broker password was given without a username; add --username")
    if ca_file is not None and not ca_file.is_file():
        raise ValueError(f"CA file {str(ca_file)!r} does not exist")
    if (ca_file is not None or tls_insecure) and not use_tls:
        raise ValueError("--ca-file and --tls-insecure need TLS: add --tls or use mqtts://")
    return BrokerSettings(
        host=parts.hostname,
        port=port,
        username=username,
        password=password,
        tls=use_tls,
        ca_file=ca_file,
        tls_insecure=tls_insecure,
    )


def tls_context(settings: BrokerSettings) -> ssl.SSLContext | None:
    """The TLS context for a TLS broker: system CAs or ``ca_file``; no checks with ``tls_insecure``."""
    if not settings.tls:
        return None
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if settings.tls_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def make_client(
    settings: BrokerSettings,
    identifier: str,
    will: aiomqtt.Will | None = None,
    clean_start: bool = True,
    session_expiry_s: int = 0,
    max_queued_incoming: int = 0,
    max_packet_bytes: int = 0,
) -> aiomqtt.Client:
    """An MQTT 5 client; with ``session_expiry_s`` the broker keeps its QoS 1 messages across a blip,
    and with ``max_packet_bytes`` it sends the client no larger packet (it drops such messages)."""
    properties = Properties(PacketTypes.CONNECT)
    if session_expiry_s > 0:
        properties.SessionExpiryInterval = session_expiry_s
    if max_packet_bytes > 0:
        properties.MaximumPacketSize = max_packet_bytes
    client = aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username,
        password=settings.password,
        identifier=identifier,
        logger=PAHO_LOGGER,
        protocol=aiomqtt.ProtocolVersion.V5,
        will=will,
        clean_start=clean_start,
        keepalive=settings.keepalive_s,
        tls_context=tls_context(settings),
        properties=properties,
        timeout=10.0,
        max_queued_incoming_messages=max_queued_incoming,
    )
    client.pending_calls_threshold = 1_000_000  # many frames in flight is normal here, not a warning
    return client


def is_auth_failure(exc: BaseException) -> bool:
    """The broker refused the login: retrying with the same credentials cannot help."""
    if not isinstance(exc, MqttConnectError):
        return False
    rc: Any = exc.rc
    value = getattr(rc, "value", rc)
    return isinstance(value, int) and value in AUTH_FAILURE_CODES


class Backoff:
    """Exponential reconnect delays with jitter, so a fleet does not reconnect in lockstep."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 10.0, rng: random.Random | None = None) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError(f"backoff needs 0 < initial_s <= max_s, got {initial_s}, {max_s}")
        self.initial_s, self.max_s = initial_s, max_s
        self.rng = rng or random.Random()
        self.attempt = 0

    def next_s(self) -> float:
        """The delay before the next attempt: initial * 2^attempt, capped, times 0.75..1.25."""
        base = min(self.max_s, self.initial_s * 2.0**self.attempt)
        self.attempt += 1
        return base * self.rng.uniform(0.75, 1.25)

    def reset(self) -> None:
        self.attempt = 0
