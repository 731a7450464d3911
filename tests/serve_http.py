"""Test helpers for `duplexer serve`: a server on scripted engines, JSON requests, a real aiortc offer,
and a raw HTTP/1.1 client for bytes an ordinary client would not send (non-ASCII headers, any
Content-Type, half-sent requests)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import wave
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from duplexer.protocols.engine_factory import EngineFactory, scripted_engines
from duplexer.protocols.webrtc_call import CallSettings
from duplexer.protocols.webrtc_server import ServerConfig, WebRtcServer
from tests.conftest import SHARED


async def raw_request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, bytes] | None = None,
    timeout_s: float = 20.0,
) -> tuple[int, dict[str, str], bytes]:
    """Send one request on its own connection; (status, headers, body) of the answer."""
    head = f"{method} {path} HTTP/1.1\r\n".encode()
    fields = {"Host": f"127.0.0.1:{port}".encode(), "Content-Length": str(len(body)).encode(), "Connection": b"close"}
    fields.update(headers or {})
    for name, value in fields.items():
        head += name.encode() + b": " + value + b"\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"\r\n" + body)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            answer = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    raw_headers, _, content = rest.partition(b"\r\n\r\n")
    parsed = {}
    for line in raw_headers.split(b"\r\n"):
        name, _, value = line.decode("latin-1").partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, content


def json_error(content: bytes) -> str:
    """The ``error`` of a JSON error body; fails the test when the body is not one."""
    data: Any = json.loads(content)
    assert isinstance(data, dict) and isinstance(data.get("error"), str), content[:200]
    return str(data["error"])


SPEECH = SHARED / "data" / "vap_phrases" / "audio" / "basketball_short_female_en-US-Wavenet-E.wav"
QUESTION = "so do you play basketball"
REPLY = "Sure, here is a short answer."


def speech() -> tuple[bytes, int]:
    if not SPEECH.exists():
        pytest.fail(f"test speech {SPEECH} is missing; the shared data folder should sit beside the repo")
    with wave.open(str(SPEECH), "rb") as wav:
        return wav.readframes(wav.getnframes()), wav.getframerate()


def short_replies() -> EngineFactory:
    return scripted_engines(transcripts=(QUESTION,), reply_for=lambda _: REPLY)


@contextlib.asynccontextmanager
async def serving(engines: EngineFactory | None = None, **options: Any) -> AsyncIterator[WebRtcServer]:
    """A server on a free 127.0.0.1 port, stopped afterwards."""
    call = CallSettings(
        debug=True,
        connect_timeout_s=options.pop("connect_timeout_s", 30.0),
        media_timeout_s=options.pop("media_timeout_s", 10.0),
        server_aec=options.pop("server_aec", False),
    )
    server = WebRtcServer(ServerConfig(port=0, call=call, **options), engines or short_replies())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def post(
    url: str, body: str | bytes, token: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], Any]:
    headers = {
        "Content-Type": "application/json",
        **({"Authorization": f"Bearer {token}"} if token else {}),
        **(headers or {}),
    }
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


async def get(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


async def offer_sdp(audio: bool = True) -> str:
    """A real offer from aiortc (with or without a microphone track)."""
    pc = RTCPeerConnection()
    try:
        if audio:
            from aiortc.mediastreams import AudioStreamTrack

            pc.addTrack(AudioStreamTrack())
        pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        assert pc.localDescription is not None
        return pc.localDescription.sdp
    finally:
        await pc.close()


def types(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages]
