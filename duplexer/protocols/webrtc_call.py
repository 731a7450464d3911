"""One WebRTC call: a peer connection glued to its own session of actors, and its teardown.

Theory of operation
-------------------
:meth:`Call.answer` builds the session (bus, clock, actors from
:func:`~duplexer.actors.pipeline.start_pipeline`) with the server's session maker
(the local executor, or Ray: then it waits until the session's Ray hosts are up
before answering), the outbound
:class:`~duplexer.protocols.webrtc_audio.BotAudioTrack` (the session's sink), and
the peer connection, and answers the offer. The remote audio track is pumped
into the pipeline as :class:`~duplexer.runtime.events.AudioFrame` events by a
session task; :class:`CallLinkActor` sends session events over the client's data
channel as JSON (:mod:`duplexer.protocols.webrtc_messages`) and measures each turn.

Any of these ends the call, once, through :meth:`Call.request_close`: the peer
connection failing or closing (ICE failure, DTLS close on tab close), the data
channel closing, the remote track ending, no connection within
``connect_timeout_s``, no microphone audio for ``media_timeout_s`` (a vanished
peer), a hangup request, the server stopping, or (Ray executor) a session host
dying (``session_failed``; ``bye`` then carries the cause in ``detail``). Closing
stops the session (every actor and task; on Ray, its hosts too), the track and
the peer connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from duplexer.actors.pipeline import PipelineConfig, start_pipeline
from duplexer.actors.turn_recorder import TurnRecorderActor
from duplexer.protocols.echo_session import SessionEcho
from duplexer.protocols.engine_factory import EngineFactory
from duplexer.protocols.inbound_audio import InboundAudio
from duplexer.protocols.mqtt_topics import EchoConfig, EchoMode
from duplexer.protocols.webrtc_audio import BotAudioTrack
from duplexer.protocols.webrtc_guard import MAX_DATA_CHANNEL_MESSAGE_BYTES
from duplexer.protocols.webrtc_messages import (
    FORWARDED_EVENTS,
    PROTOCOL_VERSION,
    encode,
    event_message,
)
from duplexer.runtime.actor import Actor, SessionContext
from duplexer.runtime.events import (
    INPUT_SAMPLE_RATE_HZ,
    AudioFrame,
    CommitReply,
    Event,
    LlmToken,
    PlayoutDone,
    PlayoutStarted,
    PlayoutStopped,
    StartReply,
    VadSpeechStart,
    VadSpeechStop,
)
from duplexer.runtime.executors import SessionMaker, local_session
from duplexer.runtime.logging import get_logger
from duplexer.runtime.observability import Observability
from duplexer.runtime.turn_timing import barge_in_stop, response_latency
from duplexer.runtime.untrusted import UntrustedInputError, load_json

MAX_UNSENT_MESSAGES = 2000
"""Messages held while the data channel is not open yet; the oldest go first beyond this."""


class OfferRejected(ValueError):
    """The offer cannot be answered; the message says why and what to send instead."""


@dataclass(frozen=True)
class CallSettings:
    """What every call of a server shares."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    rtc_configuration: RTCConfiguration = field(default_factory=lambda: RTCConfiguration(iceServers=[]))
    connect_timeout_s: float = 30.0
    media_timeout_s: float = 10.0
    debug: bool = False
    """Keep each call's sent messages, and accept the client's log of what it received."""
    log_limit: int = 5000
    engines_name: str = "real"
    make_session: SessionMaker = local_session
    """Makes each call's session: ``local_session`` (default), or a Ray executor's
    (:func:`duplexer.runtime.executors.session_maker`), which builds the placed actors' engines in
    Ray processes with the server's engine factory."""
    ready_timeout_s: float = 120.0
    """How long an offer waits for the session's Ray hosts to start (seconds on a busy machine)."""
    observability: Observability | None = None
    """Where each call's turn recorder reports (the server's metrics and traces); None: no recorder."""
    server_aec: bool = False
    """Cancel the bot's echo in each caller's microphone on the server (``serve --aec server``); off by
    default, since browsers cancel it themselves."""


@dataclass
class TurnFigures:
    """One reply's timing, gathered from events as they pass."""

    reply_id: str
    turn_id: int | None
    started_ms: float
    speculative: bool
    first_token_ms: float | None = None
    turn_end_ms: float | None = None
    playout_started_ms: float | None = None
    barge_in_onset_ms: float | None = None


class TurnMeter:
    """Per-turn latency figures as the caller hears them, with the engine's times beside them.

    Bot audio times come from the track: when its samples left for the network. Response latency
    starts at the reply's first audible sample (a TTS reply may open with digital silence); the
    first frame sent is kept as ``engine_first_chunk_ms``. Barge-in stop ends at the last audible
    sample sent; the end of the last frame sent is kept as ``engine_barge_in_stop_ms``. A reply
    never audible has no response latency or stop.
    """

    def __init__(self, track: BotAudioTrack) -> None:
        self.track = track
        self.replies: dict[str, TurnFigures] = {}
        self.last_speech_end_ms: float | None = None
        self.playing: str | None = None

    def see(self, event: Event) -> dict[str, Any] | None:
        """Record ``event``; returns a metrics message when a reply's playout ends."""
        if isinstance(event, StartReply):
            self.replies[event.reply_id] = TurnFigures(event.reply_id, event.turn_id, event.ts_ms, event.speculative)
            while len(self.replies) > 64:
                self.replies.pop(next(iter(self.replies)))
        elif isinstance(event, LlmToken):
            figures = self.replies.get(event.reply_id)
            if figures is not None and figures.first_token_ms is None:
                figures.first_token_ms = event.ts_ms
        elif isinstance(event, VadSpeechStop):
            self.last_speech_end_ms = event.speech_end_ms
        elif isinstance(event, CommitReply):
            figures = self.replies.get(event.reply_id)
            if figures is not None:
                figures.turn_end_ms = self.last_speech_end_ms
        elif isinstance(event, PlayoutStarted):
            self.playing = event.reply_id
            figures = self.replies.get(event.reply_id)
            if figures is not None:
                figures.playout_started_ms = event.ts_ms
        elif isinstance(event, VadSpeechStart) and self.playing is not None:
            figures = self.replies.get(self.playing)
            if figures is not None and figures.barge_in_onset_ms is None:
                figures.barge_in_onset_ms = event.speech_start_ms
        elif isinstance(event, (PlayoutDone, PlayoutStopped)):
            if self.playing == event.reply_id:
                self.playing = None
            figures = self.replies.pop(event.reply_id, None)
            if figures is not None:
                return self._metrics(event, figures, stopped=isinstance(event, PlayoutStopped))
        return None

    def _metrics(self, event: Event, figures: TurnFigures, stopped: bool) -> dict[str, Any]:
        audio = self.track.replies.get(figures.reply_id)
        first_chunk_ms = audio.first_sent_ms if audio else figures.playout_started_ms
        response = response_latency(audio.first_audible_ms if audio else None, figures.turn_end_ms)
        stop = engine_stop = None
        if stopped and audio is not None and figures.barge_in_onset_ms is not None:
            engine_stop = audio.last_sent_end_ms - figures.barge_in_onset_ms
            stop = barge_in_stop(audio.last_audible_end_ms, figures.barge_in_onset_ms)
        first_token = _since(figures.first_token_ms, figures.started_ms)
        return {
            "type": "metrics",
            "t_ms": round(event.ts_ms, 1),
            "turn_id": figures.turn_id,
            "reply_id": figures.reply_id,
            "outcome": "stopped" if stopped else "done",
            "speculative": figures.speculative,
            "response_latency_ms": _rounded(response),
            "engine_first_chunk_ms": _rounded(_since(first_chunk_ms, figures.turn_end_ms)),
            "llm_first_token_ms": _rounded(first_token),
            "barge_in_stop_ms": _rounded(stop),
            "engine_barge_in_stop_ms": _rounded(engine_stop),
            "played_ms": round(getattr(event, "played_ms", 0.0), 1),
        }


def _since(later_ms: float | None, earlier_ms: float | None) -> float | None:
    return None if later_ms is None or earlier_ms is None else later_ms - earlier_ms


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class CallLinkActor(Actor):
    """Sends a session's events to the call's data channel, with per-turn metrics."""

    name = "webrtc"
    subscribes = FORWARDED_EVENTS
    queue_size = 8192

    def __init__(self, ctx: SessionContext, call: Call) -> None:
        super().__init__(ctx)
        self.call = call
        self.meter = TurnMeter(call.track)

    async def handle(self, event: Event) -> None:
        message = event_message(event)
        if message is not None:
            self.call.send(message)
        metrics = self.meter.see(event)
        if metrics is not None:
            self.call.send(metrics)


class Call:
    """One browser (or any WebRTC peer) in conversation with its own session of actors."""

    def __init__(
        self,
        settings: CallSettings,
        engines: EngineFactory,
        on_closed: Callable[[Call], None] = lambda call: None,
        call_id: str | None = None,
    ) -> None:
        self.id = call_id or uuid.uuid4().hex[:12]
        self.settings = settings
        self.engines = engines
        self.on_closed = on_closed
        self.log = get_logger(component="webrtc", session_id=self.id)
        self.session = settings.make_session(self.id, engines)
        self.track = BotAudioTrack(self.session.clock)
        self.inbound = InboundAudio()
        self.echo = SessionEcho(EchoConfig(EchoMode.SERVER if settings.server_aec else EchoMode.DEVICE), log=self.log)
        self.echo.start(None, self.session.metrics)
        self.pc = RTCPeerConnection(configuration=settings.rtc_configuration)
        self.channel: RTCDataChannel | None = None
        self.unsent: deque[str] = deque(maxlen=MAX_UNSENT_MESSAGES)
        self.sent_log: deque[dict[str, Any]] = deque(maxlen=settings.log_limit)
        self.client_log: list[dict[str, Any]] = []
        self.client_log_bytes = 0
        self.client_log_dropped = 0
        self.client_stats: dict[str, Any] = {}
        self.messages_sent = 0
        self.connected = asyncio.Event()
        self.last_media_s: float | None = None
        self.close_reason: str | None = None
        self.close_detail: str | None = None
        self.closed = asyncio.Event()
        self._close_task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()

    # ------------------------------------------------------------ answering

    async def answer(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        """Start the session and answer ``offer``; raises OfferRejected when it cannot be answered."""
        pc = self.pc
        pc.on("connectionstatechange", self._on_connection_state)
        pc.on("iceconnectionstatechange", self._on_ice_state)
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", self._on_track)
        engines = await asyncio.to_thread(self._build_engines)
        start_pipeline(self.session, engines, self.settings.pipeline)
        self.session.add(CallLinkActor(self.session.ctx, self))
        if self.settings.observability is not None:
            self.session.add(TurnRecorderActor(self.session.ctx, self.settings.observability, self.track.replies.get))
        failed: asyncio.Event | None = getattr(self.session, "failed", None)
        if failed is not None:  # a Ray session ends when one of its hosts dies
            self.session.supervisor.spawn(lambda: self._end_on_failure(failed), "webrtc-session-failed")
        # Ray hosts take a second or more to start; the caller should not talk to a half-built session.
        await asyncio.wait_for(self.session.ready(), self.settings.ready_timeout_s)
        self.send(
            {
                "type": "hello",
                "t_ms": round(self.session.clock.now_ms(), 1),
                "turn_id": None,
                "session_id": self.id,
                "protocol": PROTOCOL_VERSION,
                "engines": self.settings.engines_name,
                "input_rate_hz": INPUT_SAMPLE_RATE_HZ,
            }
        )
        try:
            await pc.setRemoteDescription(offer)
        except Exception as exc:  # aiortc raises whatever the offer provokes
            raise OfferRejected(f"the offer SDP cannot be used: {exc or type(exc).__name__}") from None
        if not any(t.kind == "audio" for t in pc.getTransceivers()):
            raise OfferRejected("the offer has no audio section; add a microphone track before createOffer")
        pc.addTrack(self.track)
        try:  # an offer aiortc accepted can still break its answer (AttributeError on a repeated a=mid)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            raise OfferRejected(f"the offer SDP cannot be used: {type(exc).__name__}: {exc}") from None
        self._watchdog = asyncio.create_task(self._watch(), name=f"{self.id}:webrtc:watchdog")
        self.log.info("webrtc_call_answered")
        local = pc.localDescription
        assert local is not None
        return local

    def _build_engines(self) -> Any:
        """This process's engines (in a worker thread: real models take a while to build)."""
        engines = self.engines(self.session.clock, self.echo.tap(self.track))
        _ = engines.sink  # a factory of shared engines builds the rest lazily: here, not on the loop
        return engines

    async def _end_on_failure(self, failed: asyncio.Event) -> None:
        await failed.wait()
        self.close_detail = getattr(self.session, "failure", None)
        self.log.error("webrtc_session_failed", detail=self.close_detail)
        self.request_close("session_failed")

    # ------------------------------------------------------------ peer connection events

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        self.log.info("webrtc_connection_state", state=state)
        if state == "connected":
            self.connected.set()
        elif state in ("failed", "closed"):
            self.request_close(f"connection_{state}")

    def _on_ice_state(self) -> None:
        if self.pc.iceConnectionState == "failed":
            self.request_close("ice_failed")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if self.channel is not None:
            return  # the first channel carries events; others are ignored
        self.channel = channel
        channel.on("open", self._drain_unsent)
        channel.on("close", lambda: self.request_close("data_channel_closed"))
        channel.on("message", self._on_client_message)
        self._drain_unsent()

    def _on_client_message(self, data: str | bytes) -> None:
        try:
            message = load_json(data, "a data channel message", MAX_DATA_CHANNEL_MESSAGE_BYTES)
        except UntrustedInputError:
            message = None
        if isinstance(message, dict) and message.get("type") == "hangup":
            self.request_close("hangup")
        else:
            self.log.warning("webrtc_bad_client_message", data=str(data)[:200])

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio":
            return
        track.on("ended", lambda: self.request_close("remote_track_ended"))
        self.session.supervisor.spawn(lambda: self._pump(track), "webrtc-mic")

    async def _pump(self, track: MediaStreamTrack) -> None:
        """Feed the caller's microphone into the pipeline, frame by frame."""
        ctx = self.session.ctx
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                self.request_close("remote_track_ended")
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            self.last_media_s = self._loop.time()
            now_ms = self.session.clock.now_ms()
            for seq, pcm in self.inbound.push_frame(frame, now_ms):
                clean, gate = self.echo.process(seq, pcm, now_ms)
                ctx.emit(AudioFrame, pcm=clean, sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=seq, speech_gate=gate)

    async def _watch(self) -> None:
        """Close a call that never connects, or whose microphone audio stops arriving."""
        settings = self.settings
        try:
            await asyncio.wait_for(self.connected.wait(), settings.connect_timeout_s)
        except TimeoutError:
            self.request_close("connect_timeout")
            return
        if self.closing:  # Python 3.11's wait_for drops a cancel that lands as the wait completes
            return
        connected_s = self._loop.time()
        period_s = min(1.0, settings.media_timeout_s / 4)
        while True:
            await asyncio.sleep(period_s)
            last_s = self.last_media_s if self.last_media_s is not None else connected_s
            if self._loop.time() - last_s > settings.media_timeout_s:
                self.request_close("media_timeout")
                return

    # ------------------------------------------------------------ messages

    def send(self, message: dict[str, Any]) -> None:
        """Send a message on the data channel, or hold it until the channel opens."""
        if self.settings.debug:
            self.sent_log.append(message)
        self.messages_sent += 1
        self.unsent.append(encode(message))
        self._drain_unsent()

    def _drain_unsent(self) -> None:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return
        while self.unsent:
            channel.send(self.unsent.popleft())

    # ------------------------------------------------------------ teardown

    @property
    def closing(self) -> bool:
        return self._close_task is not None

    def request_close(self, reason: str) -> asyncio.Task[None]:
        """End the call (once; later requests return the same task)."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close(reason), name=f"{self.id}:webrtc:close")
        return self._close_task

    async def close(self, reason: str) -> None:
        await self.request_close(reason)

    async def _close(self, reason: str) -> None:
        self.close_reason = reason
        self.log.info("webrtc_call_closing", reason=reason)
        try:
            bye: dict[str, Any] = {"type": "bye", "t_ms": round(self.session.clock.now_ms(), 1), "turn_id": None}
            bye["reason"] = reason
            if self.close_detail:
                bye["detail"] = self.close_detail
            self.send(bye)
            if self._watchdog is not None and self._watchdog is not asyncio.current_task():
                self._watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watchdog
            await self.session.stop()
            self.track.stop()
            await self.pc.close()
        except Exception as exc:  # teardown must finish whatever broke
            self.log.error("webrtc_close_failed", error=repr(exc))
        finally:
            self.closed.set()
            self.on_closed(self)
            self.log.info("webrtc_call_closed", reason=reason)

    def summary(self) -> dict[str, Any]:
        """The call at a glance, for the debug endpoints and benchmarks."""
        counts = self.inbound.counts
        out = self.track.counts
        return {
            "session_id": self.id,
            "connection_state": self.pc.connectionState,
            "closed": self.closed.is_set(),
            "close_reason": self.close_reason,
            "close_detail": self.close_detail,
            "messages_sent": self.messages_sent,
            "inbound": {
                "frames_in": counts.frames,
                "pipeline_frames": counts.pipeline_frames,
                "concealed_ms": round(counts.concealed_ms, 1),
                "resyncs": counts.resyncs,
            },
            "outbound": {
                "audio_frames": out.audio_frames,
                "silence_frames": out.silence_frames,
                "flushed_frames": out.flushed_frames,
                "overflow_frames": out.overflow_frames,
                "max_queued_frames": out.max_queued_frames,
            },
            "session_tasks": len(self.session.supervisor.tasks),
            "echo": self.echo.stats(),
        }
