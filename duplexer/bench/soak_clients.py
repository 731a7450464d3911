"""The soak's clients: good ones that must lose no audio, bad ones that must each get their error.

- :func:`webrtc_turn`: an aiortc caller speaks, hears the reply, hangs up; every microphone frame
  it sent must have reached its call, with none concealed.
- :func:`mqtt_turn`: a device speaks over the broker, hears the reply, stops; every frame it sent
  must have reached the bridge, in sequence, and it must hear every frame the bot played.
- :func:`send_http` / :func:`send_mqtt`: one bad request or message.
- :func:`stray_offer`: a real offer whose caller never connects (it holds a session slot until the
  server's connect timeout). :func:`vanish`: a device that starts talking, then drops off the
  network without a word (the broker sends its last will).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import aiohttp
import aiomqtt
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack

from duplexer.bench.soak_inputs import SOAK_TOKEN, BadHttp, BadMqtt
from duplexer.protocols.mqtt_bridge import MqttBridge
from duplexer.protocols.mqtt_connection import BrokerSettings, make_client
from duplexer.protocols.mqtt_device import DeviceClient
from duplexer.protocols.mqtt_topics import OFFLINE, ONLINE, AudioFormat, Channel, Topics, encode_json, pack_audio
from duplexer.protocols.webrtc_client import WebRtcCaller
from duplexer.protocols.webrtc_server import WebRtcServer
from duplexer.runtime.events import FRAME_MS, INPUT_SAMPLE_RATE_HZ

TURN_TIMEOUT_S = 20.0
"""Longest a good client waits for the bot's reply to end."""
ARRIVAL_TIMEOUT_S = 3.0
"""Longest the frames a good client sent may take to all arrive."""
HEARD_TOLERANCE_MS = 200.0
"""Audible reply heard by a WebRTC caller vs played by the server: Opus and jitter-buffer edges."""
WEBRTC_HEARD_SLACK_FRAMES = 2
"""Loud-frame counting slack per WebRTC turn in the soak's totals (40 ms at the reply's two edges)."""
TOPICS = Topics()


@dataclass
class GoodTally:
    """What the good clients of one transport sent, what arrived, and what they heard."""

    turns: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    frames_concealed_ms: float = 0.0
    frames_lost: int = 0
    replies: int = 0
    reply_frames_played: int = 0
    reply_frames_heard: int = 0
    failures: list[str] = field(default_factory=list)
    heard_slack_frames_per_turn: int = 0
    """Reply frames a turn may seem short by: 0 where frames are counted (MQTT); over WebRTC the
    caller counts loud frames of decoded Opus, whose edges come and go by a frame or two."""

    def fail(self, what: str) -> None:
        self.failures.append(what)

    def reply_heard_in_full(self) -> bool:
        """Every reply frame was heard, within the transport's counting slack."""
        slack = self.turns * self.heard_slack_frames_per_turn
        return self.reply_frames_played > 0 and self.reply_frames_heard >= self.reply_frames_played - slack


async def _until(condition: Callable[[], bool], timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


# ------------------------------------------------------------------ good clients


async def webrtc_turn(server: WebRtcServer, speech: bytes, tally: GoodTally) -> None:
    """One good call: connect, say ``speech`` (16 kHz PCM16), hear the whole reply, hang up."""
    caller = WebRtcCaller(server.url, token=SOAK_TOKEN)
    try:
        session_id = await caller.connect()
        call = server.calls[session_id]
        await caller.mic.say(speech, INPUT_SAMPLE_RATE_HZ)
        metrics = await caller.wait_for(lambda m: m["type"] == "metrics", TURN_TIMEOUT_S)
        await caller.wait_for(lambda m: m["type"] == "history" and m["role"] == "assistant", 5)
        await asyncio.sleep(0.3)  # the last frames of the reply in flight
        sent = caller.mic.frames_sent
        arrived = await _until(lambda: call.inbound.counts.frames >= sent, ARRIVAL_TIMEOUT_S)
        counts = call.inbound.counts
        tally.turns += 1
        tally.frames_sent += sent
        tally.frames_received += min(counts.frames, sent)
        tally.frames_concealed_ms += counts.concealed_ms
        if not arrived or counts.concealed_ms > 0:
            tally.fail(f"call {session_id}: {counts.frames} of {sent} frames, {counts.concealed_ms} ms concealed")
        played_frames = math.ceil(float(metrics["played_ms"]) / FRAME_MS - 1e-6)
        heard_frames = caller.audio.loud_frames()
        tally.replies += metrics["outcome"] == "done"
        tally.reply_frames_played += played_frames
        tally.reply_frames_heard += min(heard_frames, played_frames)
        if abs(heard_frames * FRAME_MS - metrics["played_ms"]) > HEARD_TOLERANCE_MS:
            tally.fail(f"call {session_id}: heard {heard_frames * FRAME_MS} ms of a {metrics['played_ms']} ms reply")
        await caller.hangup()
    except Exception as exc:
        tally.fail(f"call: {type(exc).__name__}: {exc}")
        await caller.close()


async def mqtt_turn(
    settings: BrokerSettings, bridge: MqttBridge, device_id: str, speech: bytes, tally: GoodTally
) -> None:
    """One good device turn: start, say ``speech`` (16 kHz PCM16) in real time, hear the whole reply, stop."""
    fmt = AudioFormat(INPUT_SAMPLE_RATE_HZ, FRAME_MS)
    try:
        async with DeviceClient(settings, device_id, fmt) as device:
            await device.wait_for_bridge(10.0)
            device.control("start")
            await device.wait_type("session", 10.0, state="started")
            link = bridge.links[device_id]
            before = link.counts.frames, link.counts.lost
            await device.stream(speech)
            quiet = asyncio.create_task(device.silence(1000 * TURN_TIMEOUT_S))
            try:
                done = await device.wait_type("playout_done", TURN_TIMEOUT_S)
            finally:
                quiet.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await quiet
            await _until(lambda: not device.queued, ARRIVAL_TIMEOUT_S)  # every frame queued went out
            sent = device.counters["frames_sent"]
            arrived = await _until(lambda: link.counts.frames - before[0] >= sent, ARRIVAL_TIMEOUT_S)
            received, lost = link.counts.frames - before[0], link.counts.lost - before[1]
            tally.turns += 1
            tally.frames_sent += sent
            tally.frames_received += min(received, sent)
            tally.frames_lost += lost
            if not arrived or lost:
                tally.fail(f"device {device_id}: {received} of {sent} frames arrived, {lost} lost")
            played = math.ceil(float(done["played_ms"]) / FRAME_MS - 1e-6)
            await _until(lambda: len(device.audio) >= played, ARRIVAL_TIMEOUT_S)
            tally.replies += 1
            tally.reply_frames_played += played
            tally.reply_frames_heard += min(len(device.audio), played)
            seqs = [f.seq for f in device.audio]
            if len(seqs) != played or seqs != list(range(seqs[0], seqs[0] + len(seqs))):
                tally.fail(f"device {device_id}: heard {len(device.audio)} of {played} reply frames")
            device.control("stop")
            await device.wait_type("session", 5.0, state="stopped")
    except Exception as exc:
        tally.fail(f"device {device_id}: {type(exc).__name__}: {exc}")


# ------------------------------------------------------------------ bad clients


async def send_http(base_url: str, port: int, bad: BadHttp, http: aiohttp.ClientSession) -> int | None:
    """Send one bad request; the status it got (None: none came, or the connection was dropped)."""
    if bad.raw is not None:
        return await _send_raw(port, bad.raw, bad.hold_s)
    async with http.request(bad.method, base_url + bad.path, data=bad.body, headers=dict(bad.headers)) as response:
        await response.read()
        return response.status


async def _send_raw(port: int, data: bytes, hold_s: float) -> int | None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        with contextlib.suppress(TimeoutError, ConnectionError):
            line = await asyncio.wait_for(reader.readline(), hold_s or 5.0)
            parts = line.split()
            return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        return None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def send_mqtt(client: aiomqtt.Client, bad: BadMqtt) -> None:
    topic = TOPICS.device(bad.device_id, bad.channel)
    for _ in range(bad.repeat):
        await client.publish(topic, bad.payload, qos=1)


async def offer_sdps() -> tuple[str, str]:
    """A real offer with a microphone and a data channel, and one with the data channel only."""
    sdps: list[str] = []
    for audio in (True, False):
        pc = RTCPeerConnection()
        if audio:
            pc.addTrack(AudioStreamTrack())
        pc.createDataChannel("events")
        await pc.setLocalDescription(await pc.createOffer())
        assert pc.localDescription is not None
        sdps.append(pc.localDescription.sdp)
        await pc.close()
    return sdps[0], sdps[1]


async def stray_offer(base_url: str, http: aiohttp.ClientSession) -> int:
    """Offer a real microphone call and never connect; the status of the offer."""
    pc = RTCPeerConnection()
    try:
        pc.addTrack(AudioStreamTrack())
        await pc.setLocalDescription(await pc.createOffer())
        assert pc.localDescription is not None
        body = {"type": "offer", "sdp": pc.localDescription.sdp}
    finally:
        await pc.close()
    headers = {"Authorization": f"Bearer {SOAK_TOKEN}"}
    async with http.post(f"{base_url}/offer", json=body, headers=headers) as response:
        await response.read()
        return response.status


class SeverableLink:
    """A TCP relay to the broker whose connections can be cut at once, as when a device loses its network:
    the broker sees the connection drop without a DISCONNECT, so it publishes the device's last will."""

    def __init__(self, broker: BrokerSettings) -> None:
        self.broker = broker
        self.transports: list[asyncio.WriteTransport] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> BrokerSettings:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = int(self._server.sockets[0].getsockname()[1])
        return replace(self.broker, host="127.0.0.1", port=port)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.broker.host, self.broker.port)
        self.transports += [writer.transport, up_writer.transport]  # type: ignore[list-item]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def sever(self) -> None:
        for transport in self.transports:
            transport.abort()

    async def __aexit__(self, *exc: object) -> None:
        self.sever()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def vanish(settings: BrokerSettings, device_id: str, speech: bytes) -> None:
    """A device that declares itself, starts a session, talks a little, then its network goes away."""
    fmt = AudioFormat(INPUT_SAMPLE_RATE_HZ, FRAME_MS)
    status = TOPICS.device(device_id, Channel.STATUS)
    audio = TOPICS.device(device_id, Channel.AUDIO_IN)
    relay = SeverableLink(settings)
    async with relay as relayed:
        client = make_client(relayed, f"soak-{device_id}", will=aiomqtt.Will(status, OFFLINE, 1, retain=True))
        with contextlib.suppress(aiomqtt.MqttError):
            async with client:
                await client.publish(
                    TOPICS.device(device_id, Channel.CONFIG), encode_json(fmt.to_json()), 1, retain=True
                )
                await client.publish(status, ONLINE, 1, retain=True)
                await client.publish(TOPICS.device(device_id, Channel.CONTROL), json.dumps({"type": "start"}), 1)
                frame_bytes = fmt.frame_bytes
                for seq in range(min(25, len(speech) // frame_bytes)):
                    await client.publish(audio, pack_audio(seq, speech[seq * frame_bytes : (seq + 1) * frame_bytes]), 0)
                    await asyncio.sleep(FRAME_MS / 1000)
                relay.sever()
