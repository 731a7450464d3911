"""The bad inputs of the soak: what hostile or broken clients send to ``serve`` and the MQTT bridge.

Each input names the error it must get: an HTTP status for the server (counted by
:func:`~duplexer.protocols.http_error_counts.error_counting`), an MQTT error code for the bridge
(counted in :attr:`~duplexer.protocols.mqtt_bridge.MqttBridge.error_counts`). The inputs that
once got a 500 or ``internal`` are among them, with the answer they get now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from duplexer.protocols.mqtt_topics import MAX_AUDIO_PAYLOAD_BYTES, MAX_JSON_PAYLOAD_BYTES, Channel, pack_audio

SOAK_TOKEN = "soak-token"
"""The server's bearer token in the soak: good clients and most bad requests carry it."""
DEEP_LEVELS = 5_000
"""Nesting of the deeply nested JSON inputs: far past any parser's recursion limit."""


@dataclass(frozen=True)
class BadHttp:
    """One bad HTTP request: through aiohttp's client (method, path, body, headers) or as raw bytes."""

    name: str
    status: int | None
    """The status it must get, counted under ``str(status)``; None: no answer is due (nothing counted)."""
    method: str = "POST"
    path: str = "/offer"
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = (
        ("Authorization", f"Bearer {SOAK_TOKEN}"),
        ("Content-Type", "application/json"),
    )
    raw: bytes | None = None
    """Sent as is on a fresh TCP connection instead (a malformed request line or header)."""
    hold_s: float = 0.0
    """For ``raw``: keep the connection open this long (a half-sent request) before closing it."""


def _offer(sdp: str) -> bytes:
    return json.dumps({"type": "offer", "sdp": sdp}).encode()


def _without(sdp: str, prefix: str) -> str:
    return "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith(prefix))


def _audio_twice(sdp: str) -> str:
    """The offer with its audio section repeated under the same ``a=mid``."""
    head, *sections = sdp.split("\r\nm=")
    audio = next((s for s in sections if s.startswith("audio")), None)
    if audio is None:
        return sdp
    bundle = [line for line in head.split("\r\n") if not line.startswith("a=group:BUNDLE")]
    return "\r\nm=".join(["\r\n".join(bundle), *sections, audio])


def http_bad_inputs(offer_sdp: str, no_audio_sdp: str) -> list[BadHttp]:
    """Every bad request of the soak, given a real offer with a microphone and one without."""
    bad_token = "Bearer t\u00e9k".encode().decode("latin-1")
    half_body = (
        b"POST /offer HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {SOAK_TOKEN}\r\nContent-Length: 4000\r\n\r\n".encode()
        + b'{"type": "offer", "sdp": "v=0'
    )
    return [
        BadHttp("not JSON", 400, body=b"this is not json"),
        BadHttp("not an object", 400, body=b"[1, 2]"),
        BadHttp("no sdp", 400, body=b'{"type": "offer"}'),
        BadHttp("not an offer", 400, body=b'{"type": "answer", "sdp": "v=0"}'),
        BadHttp("garbage SDP", 400, body=b'{"type": "offer", "sdp": "hello"}'),
        BadHttp(
            "broken rtpmap", 400, body=_offer("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:zz opus/48000/2\r\n")
        ),
        BadHttp("no audio section", 400, body=_offer(no_audio_sdp)),
        BadHttp("no ICE credentials", 400, body=_offer(_without(offer_sdp, "a=ice-"))),
        BadHttp("no DTLS fingerprint", 400, body=_offer(_without(offer_sdp, "a=fingerprint"))),
        BadHttp("not UTF-8", 400, body=b'{"type": "offer", "sdp": "\xff\xfe"}'),
        BadHttp("missing token", 401, body=_offer(offer_sdp), headers=(("Content-Type", "application/json"),)),
        BadHttp(
            "wrong token",
            401,
            body=_offer(offer_sdp),
            headers=(("Authorization", "Bearer guess"), ("Content-Type", "application/json")),
        ),
        BadHttp(
            "non-ASCII token",
            401,
            body=_offer(offer_sdp),
            headers=(("Authorization", bad_token), ("Content-Type", "application/json")),
        ),
        BadHttp("token on config", 401, method="GET", path="/config", headers=(("Authorization", "Basic x"),)),
        BadHttp("oversized body", 413, body=b'{"type": "offer", "sdp": "' + b"a" * 300_000 + b'"}'),
        BadHttp("hang up a call that never was", 404, path="/calls/nope/hangup"),
        BadHttp("client log of no call", 404, path="/calls/nope/client-log", body=b"{}"),
        BadHttp("static traversal", 404, method="GET", path="/static/..%2Fwebrtc_server.py"),
        BadHttp("static source file", 404, method="GET", path="/static/webrtc_server.py"),
        BadHttp("unknown route", 404, method="GET", path="/admin"),
        BadHttp("wrong method", 405, method="GET", path="/offer"),
        BadHttp("malformed request line", 400, raw=b"GARBAGE\r\n\r\n"),
        BadHttp("bad header name", 400, raw=b"GET /health HTTP/1.1\r\nHo st: x\r\n\r\n"),
        BadHttp("TLS hello on plain HTTP", 400, raw=bytes.fromhex("16030100a5010000a10303") + bytes(64)),
        BadHttp("half-sent headers", None, raw=b"GET /health HTTP/1.1\r\nHost: localhost\r\n", hold_s=2.0),
        # Each of these once gave a 500:
        BadHttp("deeply nested JSON", 400, body=b"[" * DEEP_LEVELS + b"]" * DEEP_LEVELS),
        BadHttp("audio section twice", 400, body=_offer(_audio_twice(offer_sdp))),
        BadHttp("5000-character file name", 404, method="GET", path="/static/" + "a" * 5000 + ".js"),
        BadHttp("half-sent body", 408, raw=half_body, hold_s=20.0),
    ]


@dataclass(frozen=True)
class BadMqtt:
    """One bad message (or a burst of the same) to a device topic of the bridge."""

    name: str
    code: str
    """The error code the bridge must answer (and count) once per message."""
    device_id: str
    channel: Channel
    payload: bytes
    repeat: int = 1


DECLARED = "soak-declared"
"""A bad device that declared a proper 16 kHz format (once, at the start), then sends bad frames."""
UNDECLARED = "soak-undeclared"
"""A bad device that never declares its format."""
DECLARED_CONFIG = b'{"sample_rate_hz": 16000}'
FLOOD_FRAMES = 200


def mqtt_bad_inputs() -> list[BadMqtt]:
    """Every bad message of the soak; :data:`DECLARED` must have sent :data:`DECLARED_CONFIG` first."""
    oversized_json = b'{"type": "start", "x": "' + b"y" * MAX_JSON_PAYLOAD_BYTES + b'"}'
    deep = b'{"type": "start", "policy": ' + b"[" * DEEP_LEVELS + b"]" * DEEP_LEVELS + b"}"
    huge_number = b'{"type": "policy", "policy": {"pause_ms": 1' + b"0" * 400 + b"}}"
    return [
        BadMqtt("audio before a format", "unknown_device", UNDECLARED, Channel.AUDIO_IN, pack_audio(0, bytes(640))),
        BadMqtt(
            "unknown encoding",
            "unknown_format",
            UNDECLARED,
            Channel.CONFIG,
            b'{"sample_rate_hz": 16000, "encoding": "opus"}',
        ),
        BadMqtt("control not JSON", "malformed_json", DECLARED, Channel.CONTROL, b"{not json"),
        BadMqtt("unknown control", "bad_control", DECLARED, Channel.CONTROL, b'{"type": "dance"}'),
        BadMqtt(
            "negative policy value",
            "bad_policy",
            DECLARED,
            Channel.CONTROL,
            b'{"type": "policy", "policy": {"pause_ms": -5}}',
        ),
        BadMqtt(
            "unknown policy knob",
            "bad_policy",
            DECLARED,
            Channel.CONTROL,
            b'{"type": "policy", "policy": {"no_such_knob": 1}}',
        ),
        BadMqtt(
            "a wav file as a frame",
            "unknown_format",
            DECLARED,
            Channel.AUDIO_IN,
            b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(640),
        ),
        BadMqtt(
            "oversized frame", "oversized", DECLARED, Channel.AUDIO_IN, pack_audio(1, bytes(MAX_AUDIO_PAYLOAD_BYTES))
        ),
        BadMqtt("oversized control", "oversized", DECLARED, Channel.CONTROL, oversized_json),
        BadMqtt("bad status", "bad_status", DECLARED, Channel.STATUS, b"maybe"),
        BadMqtt(
            "flood of short frames",
            "wrong_frame_size",
            DECLARED,
            Channel.AUDIO_IN,
            pack_audio(2, bytes(100)),
            repeat=FLOOD_FRAMES,
        ),
        BadMqtt("device id with spaces", "bad_device_id", "no spaces allowed", Channel.CONTROL, b'{"type": "start"}'),
        # Still `internal` where the issue found it; the documented code once fixed:
        BadMqtt("deeply nested control", "malformed_json", DECLARED, Channel.CONTROL, deep),
        BadMqtt("400-digit policy number", "bad_policy", DECLARED, Channel.CONTROL, huge_number),
    ]
