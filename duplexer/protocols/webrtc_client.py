"""A pure-Python WebRTC caller (aiortc): speaks recorded audio, records the bot's, logs data channel messages.

It does what the web page does, without a browser: open a data channel, add a
microphone track, POST the offer, apply the answer. Tests and ``duplexer bench
webrtc`` use it; it also works against a remote server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from duplexer.kernels.audio import resample_pcm16
from duplexer.protocols.heard_audio import HeardAudio
from duplexer.protocols.webrtc_audio import OPUS_FRAME_SAMPLES, OPUS_RATE_HZ, OPUS_TIME_BASE

SILENCE_DBFS = -60.0
"""Received frames quieter than this count as silence."""


class SignallingError(RuntimeError):
    """The server refused the offer; carries the HTTP status and its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class ScriptedMicrophone(MediaStreamTrack):
    """A microphone that says queued clips in real time (48 kHz mono, 20 ms frames) and silence between them."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.pending = bytearray()
        self.onsets: list[tuple[asyncio.Future[float], int]] = []
        self._sent_bytes = 0
        self._queued_bytes = 0
        self._start_s: float | None = None
        self._pts = 0
        self.frames_sent = 0
        """20 ms frames handed to the sender so far, speech and silence alike."""

    def say(self, pcm: bytes, sample_rate_hz: int) -> asyncio.Future[float]:
        """Queue a mono PCM16 clip; the future gives the loop time its first frame was sent."""
        audio = resample_pcm16(pcm, sample_rate_hz, OPUS_RATE_HZ)
        onset: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.onsets.append((onset, self._queued_bytes))
        self.pending += audio
        self._queued_bytes += len(audio)
        return onset

    @property
    def speaking(self) -> bool:
        return bool(self.pending)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start_s is None:
            self._start_s = loop.time()
        else:
            self._pts += OPUS_FRAME_SAMPLES
        wait_s = self._start_s + self._pts / OPUS_RATE_HZ - loop.time()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        frame_bytes = 2 * OPUS_FRAME_SAMPLES
        chunk = bytes(self.pending[:frame_bytes])
        del self.pending[:frame_bytes]
        if chunk:
            now_s = loop.time()
            for onset, at_bytes in self.onsets:
                if not onset.done() and at_bytes < self._sent_bytes + len(chunk):
                    onset.set_result(now_s)
            self._sent_bytes += len(chunk)
        chunk += bytes(frame_bytes - len(chunk))
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(chunk, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = OPUS_RATE_HZ
        frame.pts = self._pts
        frame.time_base = OPUS_TIME_BASE
        self.frames_sent += 1
        return frame


@dataclass
class ReceivedAudio:
    """The bot's audio as received: per 20 ms frame its arrival (loop time) and level, and the samples."""

    times_s: list[float] = field(default_factory=list)
    levels_dbfs: list[float] = field(default_factory=list)
    pcm: bytearray = field(default_factory=bytearray)
    """Left channel, 48 kHz PCM16."""
    heard: HeardAudio = field(default_factory=lambda: HeardAudio(OPUS_RATE_HZ))
    """When the left channel was audible, to the sample: what latency at the caller is measured from."""

    def loud_frames(self, threshold_dbfs: float = SILENCE_DBFS) -> int:
        return sum(1 for level in self.levels_dbfs if level > threshold_dbfs)

    def first_loud_s(self, after_s: float = 0.0, threshold_dbfs: float = SILENCE_DBFS) -> float | None:
        for t, level in zip(self.times_s, self.levels_dbfs, strict=False):
            if t >= after_s and level > threshold_dbfs:
                return t
        return None


def level_dbfs(samples: np.ndarray) -> float:
    if samples.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) / 32768.0
    return 20.0 * float(np.log10(max(rms, 1e-6)))


class WebRtcCaller:
    """One call to a duplexer server: ``await caller.connect()``, ``caller.mic.say(...)``, ``await caller.close()``."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        configuration: RTCConfiguration | None = None,
        data_channel: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.pc = RTCPeerConnection(configuration=configuration or RTCConfiguration(iceServers=[]))
        self.mic = ScriptedMicrophone()
        self.audio = ReceivedAudio()
        self.messages: list[dict[str, Any]] = []
        self.message_times_s: list[float] = []
        self.session_id: str | None = None
        self.want_data_channel = data_channel
        self.channel: RTCDataChannel | None = None
        self._message_arrived = asyncio.Event()
        self._receiver: asyncio.Task[None] | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def connect(self, timeout_s: float = 20.0) -> str:
        """Offer, get the answer, and wait until media flows; returns the session id."""
        pc = self.pc
        pc.addTrack(self.mic)
        if self.want_data_channel:
            self.channel = pc.createDataChannel("events")
            self.channel.on("message", self._on_message)
        pc.on("track", self._on_track)
        connected = asyncio.Event()
        pc.on("connectionstatechange", lambda: connected.set() if pc.connectionState == "connected" else None)
        await pc.setLocalDescription(await pc.createOffer())
        local = pc.localDescription
        assert local is not None
        body = {"type": local.type, "sdp": local.sdp}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.base_url}/offer", json=body, headers=self._headers()) as response,
        ):
            data = await response.json(content_type=None)
            if response.status != 200:
                raise SignallingError(response.status, str(data.get("error", data)))
        self.session_id = str(data["session_id"])
        await pc.setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type=data["type"]))
        await asyncio.wait_for(connected.wait(), timeout_s)
        return self.session_id

    def _on_message(self, data: str | bytes) -> None:
        self.messages.append(json.loads(data))
        self.message_times_s.append(asyncio.get_running_loop().time())
        self._message_arrived.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._receiver is None:
            self._receiver = asyncio.create_task(self._receive(track), name="webrtc-caller-receive")

    async def _receive(self, track: MediaStreamTrack) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            samples = frame.to_ndarray().reshape(-1)
            channels = len(frame.layout.channels)
            left = samples[::channels] if channels > 1 else samples
            self.audio.times_s.append(loop.time())
            self.audio.levels_dbfs.append(level_dbfs(left))
            self.audio.pcm += left.astype("<i2").tobytes()
            self.audio.heard.add(self.audio.times_s[-1], left)

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
        """The first received message that satisfies ``predicate``, waiting up to ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        checked = 0
        while True:
            for message in self.messages[checked:]:
                if predicate(message):
                    return message
            checked = len(self.messages)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no matching message within {timeout_s} s; got {self.messages[-5:]}")
            self._message_arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._message_arrived.wait(), remaining)

    def send(self, message: dict[str, Any]) -> None:
        """Send a message to the server on the data channel (e.g. ``{"type": "hangup"}``)."""
        if self.channel is None or self.channel.readyState != "open":
            raise RuntimeError("the data channel is not open")
        self.channel.send(json.dumps(message))

    async def hangup(self) -> None:
        """Ask the server to end the call (the HTTP way), then close."""
        if self.session_id is not None:
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"{self.base_url}/calls/{self.session_id}/hangup", headers=self._headers()) as response,
            ):
                await response.read()
        await self.close()

    async def close(self) -> None:
        self.mic.stop()
        await self.pc.close()
        if self._receiver is not None:
            self._receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._receiver
