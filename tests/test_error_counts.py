"""The server and the bridge count every error they answer, by kind, including aiohttp's own 400s."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from duplexer.protocols.engine_factory import scripted_engines
from duplexer.protocols.mqtt_bridge import MqttBridge
from duplexer.protocols.mqtt_connection import broker_settings
from duplexer.protocols.mqtt_topics import Channel, Topics, pack_audio
from duplexer.protocols.webrtc_server import ServerConfig, WebRtcServer
from duplexer.runtime.error_counts import ErrorCounts


def test_error_counts_add_up_by_kind_and_list_only_what_was_counted() -> None:
    counts = ErrorCounts()
    counts.count("404")
    counts.count("400", 3)
    counts.count("401", 0)
    assert counts.as_dict() == {"400": 3, "404": 1}
    assert counts.get("400") == 3 and counts.get("500") == 0
    assert counts.total == 4


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 5.0)
    writer.close()
    return line


def test_the_server_counts_each_error_response_by_status_and_reports_them_on_health() -> None:
    async def scenario() -> tuple[dict[str, int], dict[str, object], bytes]:
        server = WebRtcServer(ServerConfig(port=0, token="t"), scripted_engines())
        await server.start()
        assert server.port is not None
        try:
            auth = {"Authorization": "Bearer t", "Content-Type": "application/json"}
            async with aiohttp.ClientSession() as http:
                for body in ("not json", "[1]"):
                    async with http.post(f"{server.url}/offer", data=body, headers=auth) as response:
                        assert response.status == 400
                async with http.post(f"{server.url}/offer", data="{}") as response:
                    assert response.status == 401
                async with http.get(f"{server.url}/no-such-page") as response:
                    assert response.status == 404
                async with http.get(f"{server.url}/health") as response:
                    assert response.status == 200
            garbage = await _raw(server.port, b"GARBAGE\r\n\r\n")  # refused by aiohttp's parser, before any route
            async with aiohttp.ClientSession() as http, http.get(f"{server.url}/health") as response:
                health = json.loads(await response.text())
            return server.errors.as_dict(), health, garbage
        finally:
            await server.stop()

    counted, health, garbage = asyncio.run(scenario())
    assert garbage.startswith(b"HTTP/1.") and b" 400 " in garbage
    assert counted == {"400": 3, "401": 1, "404": 1}
    assert health["errors"] == counted


def test_the_bridge_counts_each_refused_message_by_code_across_devices() -> None:
    topics = Topics()

    async def scenario() -> dict[str, int]:
        bridge = MqttBridge(broker_settings("mqtt://127.0.0.1:1"), scripted_engines())  # never connects
        bridge.dispatch(topics.device("a", Channel.CONTROL), b"{not json")
        bridge.dispatch(topics.device("b", Channel.CONTROL), b"{not json")
        bridge.dispatch(topics.device("b", Channel.CONTROL), b'{"type": "dance"}')
        bridge.dispatch(topics.device("c", Channel.AUDIO_IN), pack_audio(0, bytes(640)))
        bridge.dispatch(topics.device("no spaces", Channel.CONTROL), b'{"type": "start"}')
        bridge.dispatch(topics.device("c", Channel.STATUS), b"online")  # a good one: nothing counted
        return bridge.error_counts.as_dict()

    assert asyncio.run(scenario()) == {
        "bad_control": 1,
        "bad_device_id": 1,
        "malformed_json": 2,
        "unknown_device": 1,
    }
