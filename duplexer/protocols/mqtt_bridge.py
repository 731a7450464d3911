"""The MQTT bridge: robots and IoT devices talk to duplexer through a broker, one session per device.

Theory of operation
-------------------
One asyncio task reads the broker and dispatches each message to its device's
:class:`DeviceLink`. A link owns the device's declared audio format, its
session (started on the first ``start`` or audio frame, by the configured
session maker: a local :class:`~duplexer.runtime.session.Session`, or a Ray
session whose controller, context, LLM and TTS run in a Ray actor), and the
inbound audio state (sequence, resampling). Live policy changes reach the
controller as a :class:`~duplexer.runtime.events.PolicyUpdate` on the session's
bus, so they work wherever the controller runs. Everything the
bridge sends goes through one :class:`Outbox`, drained by a publisher task while
the broker is reachable.

Bad input is refused per message: it becomes an ``error`` event on the device's
``events`` topic (rate-limited) and a structured log line, and never touches
other devices. When the broker goes away the sessions keep running and keep
their state; the bridge reconnects with backoff. While it is away, bot audio
cannot reach anyone, so the reply playing is stopped (history keeps what was
heard) and queued audio is dropped and counted; events are queued and sent after
reconnecting, followed by an ``outage`` report. Audio the device held during the
outage comes back flagged and in sequence, and is fed to the pipeline in order.

The wire contract is in :mod:`duplexer.protocols.mqtt_topics` and docs/mqtt.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

import aiomqtt

from duplexer.actors.energy_vad import EnergyVad
from duplexer.actors.engines import AudioSink, Engines
from duplexer.actors.pipeline import PipelineConfig, start_pipeline
from duplexer.actors.scripted import CannedAsr, ScriptedLlm, ScriptedTts, echo_reply
from duplexer.policies.controller import PolicyParams
from duplexer.protocols.inbound_audio import (
    DEFAULT_REORDER_WINDOW_FRAMES,
    MAX_CONCEAL_MS,
    InboundAudio,
    InboundCounts,
)
from duplexer.protocols.mqtt_connection import Backoff, BrokerSettings, is_auth_failure, make_client
from duplexer.protocols.mqtt_topics import (
    ENCODING_PCM16LE,
    FLAG_REPLY_START,
    MAX_AUDIO_PAYLOAD_BYTES,
    OFFLINE,
    ONLINE,
    QOS_AUDIO,
    QOS_EVENTS,
    QOS_STATUS,
    AudioFormat,
    Channel,
    Control,
    ControlType,
    ErrorCode,
    PolicyOverrides,
    Topics,
    WireError,
    encode_json,
    pack_audio,
    parse_config,
    parse_control,
    parse_status,
    unpack_audio,
    valid_device_id,
)
from duplexer.runtime.actor import Actor, SessionContext
from duplexer.runtime.clock import Clock
from duplexer.runtime.events import (
    FRAME_MS,
    INPUT_SAMPLE_RATE_HZ,
    AsrFinal,
    AsrPartial,
    AudioFrame,
    CancelReply,
    ErrorEvent,
    Event,
    HistoryUpdated,
    LlmDone,
    MetricEvent,
    PlayoutDone,
    PlayoutStarted,
    PlayoutStopped,
    PolicyUpdate,
    StartPlayout,
    StateChanged,
    StopPlayout,
    VadSpeechStart,
    VadSpeechStop,
)
from duplexer.runtime.executors import ExecutorSession, SessionMaker, local_session
from duplexer.runtime.logging import get_logger

T = TypeVar("T")

EngineFactory = Callable[[Clock, AudioSink], Engines]
"""Builds one session's engines on the session's clock, playing into the given sink."""

SCRIPTED_TTS_RATE_HZ = 22_050
"""The scripted TTS speaks at Piper's rate, so devices see a non-16 kHz output as with real engines."""

EVENT_TYPES: dict[type[Event], str] = {
    StateChanged: "state",
    VadSpeechStart: "speech_start",
    VadSpeechStop: "speech_stop",
    AsrPartial: "transcript_partial",
    AsrFinal: "transcript",
    LlmDone: "bot_text",
    PlayoutStarted: "playout_started",
    PlayoutDone: "playout_done",
    PlayoutStopped: "playout_stopped",
    HistoryUpdated: "history",
    ErrorEvent: "error",
    MetricEvent: "metric",
}
"""Session events forwarded to ``{device}/events``, by the ``type`` they carry there."""


@dataclass(frozen=True)
class BridgeConfig:
    """Every bridge setting, with defaults in one place."""

    topics: Topics = field(default_factory=Topics)
    device_id: str | None = None
    """Serve this device only; None serves every device under the prefix."""
    bridge_id: str = "main"
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 10.0
    session_expiry_s: int = 60
    """How long the broker keeps QoS 1 control messages for the bridge while it is disconnected."""
    stats_interval_s: float = 10.0
    housekeeping_ms: float = 40.0
    reorder_window_frames: int = DEFAULT_REORDER_WINDOW_FRAMES
    max_conceal_ms: float = MAX_CONCEAL_MS
    max_queued: int = 5000
    """Outbox capacity; past it audio is dropped first, then the oldest events (both counted)."""
    max_inflight: int = 64
    device_offline_grace_s: float = 120.0
    """A session whose device went offline (its last will) is stopped after this long."""
    presence_timeout_s: float = 10.0
    """After an outage, a device's events wait this long for a sign of it before going out anyway."""
    max_held_events: int = 1000
    """Events held for one absent device; past it the oldest are dropped (and counted)."""
    error_repeat_s: float = 1.0
    """At most one error event per device and error code in this period; the rest are counted."""
    max_devices: int = 1000
    make_session: SessionMaker = local_session
    """Makes each device's session: ``local_session`` (default), or a Ray executor's
    (:func:`duplexer.runtime.executors.session_maker`), which builds the placed actors' engines in
    Ray processes with the bridge's engine factory."""
    ready_timeout_s: float = 120.0
    """How long a Ray session's hosts may take to start before the session is given up."""


def scripted_engines(
    transcripts: Sequence[str] = (),
    reply_for: Callable[[str], str] = echo_reply,
    tts_rate_hz: int = SCRIPTED_TTS_RATE_HZ,
    seed: int = 0,
) -> EngineFactory:
    """Model-free engines for tests and benchmarks: EnergyVad on the real audio, canned ASR, scripted LLM/TTS."""

    def build(clock: Clock, sink: AudioSink) -> Engines:
        rng = random.Random(seed)
        return Engines(
            vad=EnergyVad(),
            asr=CannedAsr(clock, transcripts),
            llm=ScriptedLlm(clock, rng, reply_for=reply_for),
            tts=ScriptedTts(clock, rng, sample_rate_hz=tts_rate_hz),
            sink=sink,
        )

    return build


def policy_with(base: PolicyParams, overrides: PolicyOverrides) -> PolicyParams:
    """``base`` with overrides applied; raises WireError(BAD_POLICY) naming the bad parameter."""
    names = set(PolicyParams.field_names())
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise WireError(
            ErrorCode.BAD_POLICY,
            f"unknown policy parameter(s) {unknown}; see `duplexer policy show` for the names",
        )
    for name, value in overrides.items():
        default = getattr(base, name)
        if isinstance(default, bool) != isinstance(value, bool):
            kind = "true or false" if isinstance(default, bool) else "a number"
            raise WireError(ErrorCode.BAD_POLICY, f"policy parameter {name} must be {kind}, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool) and value != round(value):
            raise WireError(ErrorCode.BAD_POLICY, f"policy parameter {name} must be an integer")
    changes: dict[str, Any] = dict(overrides)
    try:
        return replace(base, **changes)
    except (TypeError, ValueError) as exc:
        raise WireError(ErrorCode.BAD_POLICY, str(exc)) from None


class BrokerLoginRefused(RuntimeError):
    """The broker refused the bridge's credentials on the first connection."""


# ------------------------------------------------------------------ outbox


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message waiting to be published."""

    order: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    device_id: str | None
    is_audio: bool


class Outbox:
    """Everything the bridge publishes, in order; audio is dropped rather than sent stale."""

    def __init__(self, max_items: int, on_drop: Callable[[Outgoing, str], None]) -> None:
        self.max_items = max_items
        self.on_drop = on_drop
        self.connected = False
        self._items: deque[Outgoing] = deque()
        self._retry: list[Outgoing] = []
        self._wake = asyncio.Event()
        self._order = 0

    def __len__(self) -> int:
        return len(self._items) + len(self._retry)

    def put(
        self, topic: str, payload: bytes, qos: int, device_id: str | None, is_audio: bool, retain: bool = False
    ) -> bool:
        self._order += 1
        item = Outgoing(self._order, topic, payload, qos, retain, device_id, is_audio)
        if is_audio and (not self.connected or len(self) >= self.max_items):
            self.on_drop(item, "outage" if not self.connected else "backlog")
            return False
        if len(self) >= self.max_items:
            oldest = next((queued for queued in self._items if not queued.is_audio), None)
            if oldest is None:
                self.on_drop(item, "backlog")
                return False
            self._items.remove(oldest)
            self.on_drop(oldest, "backlog")
        if not self.connected:
            self.on_drop(item, "delayed")
        self._items.append(item)
        self._wake.set()
        return True

    def retry(self, item: Outgoing) -> None:
        """Put back a message whose publish failed; it goes out before newer ones."""
        self._retry.append(item)
        self._wake.set()

    def drop_audio(self, device_id: str | None, reason: str) -> int:
        """Drop queued audio (of one device, or of all): it would play stale or after a stop."""
        kept: deque[Outgoing] = deque()
        dropped = 0
        for item in self._items:
            if item.is_audio and (device_id is None or item.device_id == device_id):
                self.on_drop(item, reason)
                dropped += 1
            else:
                kept.append(item)
        self._items = kept
        return dropped

    async def get(self) -> Outgoing:
        while True:
            if self._retry:
                self._retry.sort(key=lambda item: item.order)
                return self._retry.pop(0)
            if self._items:
                return self._items.popleft()
            self._wake.clear()
            await self._wake.wait()


class _ErrorGate:
    """Rate limit for repeated errors: the first passes, then one per period with a count of the rest."""

    def __init__(self, period_s: float, max_keys: int = 10_000) -> None:
        self.period_s, self.max_keys = period_s, max_keys
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: Counter[tuple[str, str]] = Counter()

    def allow(self, key: tuple[str, str], now_s: float) -> tuple[bool, int]:
        last = self._last.get(key)
        if last is not None and now_s - last < self.period_s:
            self._suppressed[key] += 1
            return False, 0
        if len(self._last) >= self.max_keys:
            self._last.clear()
        self._last[key] = now_s
        return True, self._suppressed.pop(key, 0)


# ------------------------------------------------------------------ per device


def event_fields(event: Event) -> dict[str, Any]:
    """An event's fields as JSON values; audio bytes are left out (they travel on audio/out)."""
    out: dict[str, Any] = {}
    for f in fields(event):
        value = getattr(event, f.name)
        if isinstance(value, bytes):
            continue
        if f.name == "labels":
            value = dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


class MqttAudioSink:
    """Where a session's played bot audio goes: the device's audio/out topic, one frame per message."""

    def __init__(self, link: DeviceLink) -> None:
        self.link = link
        self._last_reply: str | None = None

    def write(self, pcm: bytes, sample_rate_hz: int, reply_id: str, ts_ms: float) -> None:
        flags = FLAG_REPLY_START if reply_id != self._last_reply else 0
        self._last_reply = reply_id
        self.link.send_audio(pcm, sample_rate_hz, flags)

    def flush(self) -> None:
        self.link.bridge.outbox.drop_audio(self.link.device_id, "flushed")


class MqttLinkActor(Actor):
    """Forwards a session's events to its device and tracks which reply is playing (for interrupts)."""

    name = "mqtt"
    subscribes = (*EVENT_TYPES, StartPlayout)
    queue_size = 4096

    def __init__(self, ctx: SessionContext, link: DeviceLink) -> None:
        super().__init__(ctx)
        self.link = link

    async def handle(self, event: Event) -> None:
        link = self.link
        if isinstance(event, StartPlayout):
            link.playing = (event.reply_id, event.turn_id)
            if not link.bridge.outbox.connected:
                link.interrupt("broker_outage")
            return
        if (
            isinstance(event, (PlayoutDone, PlayoutStopped))
            and link.playing is not None
            and link.playing[0] == event.reply_id
        ):
            link.playing = None
        link.publish_event(EVENT_TYPES[type(event)], **event_fields(event))


class DeviceLink:
    """One device: its audio format, its session, its inbound audio state and its counters."""

    def __init__(self, bridge: MqttBridge, device_id: str) -> None:
        self.bridge = bridge
        self.device_id = device_id
        self.config = bridge.config
        self.log = get_logger(component="mqtt", device_id=device_id)
        self.events_topic = self.config.topics.device(device_id, Channel.EVENTS)
        self.audio_topic = self.config.topics.device(device_id, Channel.AUDIO_OUT)
        self.fmt: AudioFormat | None = None
        self.policy: PolicyParams = self.config.pipeline.policy
        self.session: ExecutorSession | None = None
        self.inbound: InboundAudio | None = None
        self.counts = InboundCounts()
        self.counters: Counter[str] = Counter()
        self.bad: Counter[str] = Counter()
        self.session_no = 0
        self.stopped_by_device = False
        self.playing: tuple[str, int | None] | None = None
        self.out_seq = 0
        self.out_rate_hz: int | None = None
        self.offline_since_s: float | None = None
        """When the device's status (its last will) said offline; its events are held meanwhile."""
        self.unconfirmed_since_s: float | None = None
        """Since the bridge reconnected after an outage, until the device shows it is back."""
        self.held: deque[bytes] = deque()
        self.last_stats_s = 0.0
        self.outage_counters: Counter[str] = Counter()

    # -- publishing

    @property
    def present(self) -> bool:
        """Whether the device is known to be connected, so what is published now reaches it."""
        return self.offline_since_s is None and self.unconfirmed_since_s is None

    def publish_event(self, kind: str, **values: Any) -> None:
        """Send an event to the device, or hold it while the device is away (in order, bounded)."""
        payload = encode_json({"type": kind, **values})
        if self.present:
            self.bridge.outbox.put(self.events_topic, payload, QOS_EVENTS, self.device_id, False)
            return
        if len(self.held) >= self.config.max_held_events:
            self.held.popleft()
            self.counters["events_dropped"] += 1
        self.held.append(payload)
        self.counters["events_delayed"] += 1

    def seen(self) -> None:
        """The device published something live: it is connected, so release what was held for it."""
        self.offline_since_s = self.unconfirmed_since_s = None
        while self.held:
            self.bridge.outbox.put(self.events_topic, self.held.popleft(), QOS_EVENTS, self.device_id, False)

    def send_audio(self, pcm: bytes, sample_rate_hz: int, flags: int) -> None:
        if sample_rate_hz != self.out_rate_hz:
            self.out_rate_hz = sample_rate_hz
            self.publish_event("audio_out_format", **self._out_format())
        payload = pack_audio(self.out_seq, pcm, flags)
        self.out_seq += 1
        if not self.present:
            self.counters["audio_out_outage"] += 1  # stale by the time the device is back
            return
        if self.bridge.outbox.put(self.audio_topic, payload, QOS_AUDIO, self.device_id, True):
            self.counters["audio_out_frames"] += 1

    def error(self, code: ErrorCode, message: str) -> None:
        """Refuse one message: count it, tell the device (rate-limited) and log a structured line."""
        self.bad[code.value] += 1
        allowed, suppressed = self.bridge.errors.allow((self.device_id, code.value), self.bridge.now_s())
        if not allowed:
            return
        self.log.warning("mqtt_bad_input", code=code.value, message=message, suppressed=suppressed)
        self.publish_event(
            "error",
            source="mqtt",
            code=code.value,
            message=message,
            fatal=False,
            suppressed=suppressed,
            session_id=self.session.session_id if self.session else None,
        )

    def _out_format(self) -> dict[str, Any]:
        return {
            "encoding": ENCODING_PCM16LE,
            "sample_rate_hz": self.out_rate_hz,
            "channels": 1,
            "frame_ms": FRAME_MS,
        }

    # -- messages from the device

    def on_config(self, payload: bytes) -> None:
        if not payload:  # the retained config was cleared: the device is gone
            self.fmt = None
            if self.session is not None:
                self.end_session("config_cleared")
            return
        try:
            fmt = parse_config(payload)
        except WireError as exc:
            self.error(exc.code, exc.message)
            return
        if fmt != self.fmt and self.inbound is not None:
            self.inbound = self._new_inbound(fmt, self.inbound.next_frame)
        self.fmt = fmt
        self.publish_event("config", audio_in=fmt.to_json())

    def on_audio(self, payload: bytes) -> None:
        if len(payload) > MAX_AUDIO_PAYLOAD_BYTES:
            self.error(
                ErrorCode.OVERSIZED,
                f"audio message of {len(payload)} bytes exceeds the {MAX_AUDIO_PAYLOAD_BYTES}-byte limit; "
                "send one frame (10-100 ms) per message",
            )
            return
        try:
            header, pcm = unpack_audio(payload)
        except WireError as exc:
            self.error(exc.code, exc.message)
            return
        if self.fmt is None:
            self.error(
                ErrorCode.UNKNOWN_DEVICE,
                f"audio from device {self.device_id!r}, which has not declared its format: publish a "
                f"retained JSON config to {self.config.topics.device(self.device_id, Channel.CONFIG)} first",
            )
            return
        try:
            self.fmt.check_frame(pcm)
        except WireError as exc:
            self.error(exc.code, exc.message)
            return
        if self.stopped_by_device:
            self.error(ErrorCode.SESSION_STOPPED, "audio after a stop control is ignored; send start first")
            return
        session = self.session or self.start_session()
        if session is None:
            return
        now_ms = session.clock.now_ms()
        if self.inbound is None:
            self.inbound = self._new_inbound(self.fmt, None)  # its first audio ends at now
        try:
            frames = self.inbound.push(header, pcm, now_ms)
        except WireError as exc:
            self.error(exc.code, exc.message)
            return
        self._feed(session, frames)

    def on_control(self, payload: bytes) -> None:
        try:
            control = parse_control(payload)
            self._control(control)
        except WireError as exc:
            self.error(exc.code, exc.message)

    def on_status(self, payload: bytes) -> None:
        if not payload:
            return
        try:
            state = parse_status(payload)
        except WireError as exc:
            self.error(exc.code, exc.message)
            return
        if state == OFFLINE:
            if self.offline_since_s is None:
                self.offline_since_s = self.bridge.now_s()
                self.interrupt("device_offline")
                self.log.info("mqtt_device_offline", grace_s=self.config.device_offline_grace_s)
        else:
            self.seen()

    def _control(self, control: Control) -> None:
        if control.type is ControlType.START:
            self.stopped_by_device = False
            if control.policy is not None:
                self.policy = policy_with(self.policy, control.policy)
                self._apply_policy(control.policy)
            if self.session is None:
                self.start_session()
            else:
                self._announce_session("running")
        elif control.type is ControlType.STOP:
            self.stopped_by_device = True
            if self.session is not None:
                self.end_session("control")
        elif control.type is ControlType.INTERRUPT:
            reply_id = self.interrupt("control")
            self.publish_event(
                "interrupt",
                reply_id=reply_id,
                stopped=reply_id is not None,
                session_id=self.session.session_id if self.session else None,
            )
        elif control.type is ControlType.POLICY:
            assert control.policy is not None
            self.policy = policy_with(self.policy, control.policy)
            self._apply_policy(control.policy)
            self.publish_event("policy", policy=asdict(self.policy))
        elif control.type is ControlType.STATS:
            self.publish_stats()

    def _apply_policy(self, overrides: PolicyOverrides) -> None:
        """Send the running session's controller the changed parameters (already checked), on its bus.

        The controller confirms with a ``policy_applied`` metric event, which reaches the device.
        """
        if self.session is not None and overrides:
            changed = tuple((name, getattr(self.policy, name)) for name in sorted(overrides))
            self.session.ctx.emit(PolicyUpdate, overrides=changed)

    # -- the session

    def start_session(self) -> ExecutorSession | None:
        self.session_no += 1
        session = self.config.make_session(f"{self.device_id}-{self.session_no}", self.bridge.engines)
        sink = MqttAudioSink(self)
        try:
            engines = self.bridge.engines(session.clock, sink)
            pipeline = replace(self.config.pipeline, policy=self.policy)
            start_pipeline(session, engines, pipeline)
        except Exception as exc:  # a failing engine (or a Ray host that cannot start) must not take the bridge down
            self.log.error("mqtt_engine_failed", error=repr(exc))
            self.error(ErrorCode.ENGINE_FAILED, f"could not start the engines: {type(exc).__name__}: {exc}")
            self.bridge.spawn(session.stop())
            return None
        session.add(MqttLinkActor(session.ctx, self))
        self.session = session
        self.counts = InboundCounts()
        self.inbound = None
        self.playing = None
        self.out_rate_hz = engines.tts.sample_rate_hz
        self.last_stats_s = self.bridge.now_s()
        self.log.info("mqtt_session_started", session_id=session.session_id)
        failed: asyncio.Event | None = getattr(session, "failed", None)
        if failed is None:
            self._announce_session("started")
        else:  # a Ray session: announce it once its hosts are up, and end it if one dies
            session.supervisor.spawn(lambda: self._watch_remote(session, failed), "mqtt-session-watch")
        return session

    async def _watch_remote(self, session: ExecutorSession, failed: asyncio.Event) -> None:
        """Announce a Ray session when its hosts are up (audio sent meanwhile is kept); end it if one dies."""
        try:
            await asyncio.wait_for(session.ready(), self.config.ready_timeout_s)
        except TimeoutError:
            if self.session is session:
                self.error(
                    ErrorCode.ENGINE_FAILED,
                    f"the session's Ray hosts did not start within {self.config.ready_timeout_s:g} s",
                )
                self.end_session("session_failed")
            return
        except Exception as exc:  # a host could not start; the session has published a fatal error event
            self.log.error("mqtt_session_failed", session_id=session.session_id, error=repr(exc))
        else:
            if self.session is session:
                self._announce_session("started")
        await failed.wait()
        if self.session is session:
            failure = getattr(session, "failure", None)
            self.log.error("mqtt_session_failed", session_id=session.session_id, reason=failure)
            self.end_session("session_failed")

    def _announce_session(self, state: str) -> None:
        assert self.session is not None
        self.publish_event(
            "session",
            state=state,
            session_id=self.session.session_id,
            audio_in=self.fmt.to_json() if self.fmt else None,
            audio_out=self._out_format(),
            policy=asdict(self.policy),
        )

    def end_session(self, reason: str) -> asyncio.Task[None] | None:
        """Detach the session at once (so nothing reaches it any more) and stop its actors in a task."""
        session = self.session
        if session is None:
            return None
        self.publish_stats()
        self.session, self.inbound, self.playing = None, None, None
        return self.bridge.spawn(self._stopped(session, reason))

    async def _stopped(self, session: ExecutorSession, reason: str) -> None:
        await session.stop()
        self.log.info("mqtt_session_stopped", session_id=session.session_id, reason=reason)
        self.publish_event("session", state="stopped", session_id=session.session_id, reason=reason)

    def _new_inbound(self, fmt: AudioFormat, start_frame: int | None) -> InboundAudio:
        return InboundAudio(
            fmt,
            start_frame=start_frame,
            reorder_window_frames=self.config.reorder_window_frames,
            max_conceal_ms=self.config.max_conceal_ms,
            counts=self.counts,
        )

    def _feed(self, session: ExecutorSession, frames: list[tuple[int, bytes]]) -> None:
        ctx = session.ctx
        for seq, pcm in frames:
            ctx.emit(AudioFrame, pcm=pcm, sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=seq)

    def interrupt(self, reason: str) -> str | None:
        """Stop the reply playing now, as a barge-in would; history keeps what was played."""
        session, playing = self.session, self.playing
        if session is None or playing is None:
            return None
        reply_id, turn_id = playing
        session.ctx.emit(StopPlayout, turn_id=turn_id, reply_id=reply_id)
        session.ctx.emit(CancelReply, turn_id=turn_id, reply_id=reply_id, reason=reason)
        self.bridge.outbox.drop_audio(self.device_id, "flushed")
        self.playing = None
        self.counters[f"interrupted_{reason}"] += 1
        self.log.info("mqtt_interrupt", reply_id=reply_id, reason=reason)
        return reply_id

    # -- upkeep and reports

    def housekeep(self, now_s: float) -> None:
        if (
            self.unconfirmed_since_s is not None
            and self.bridge.outbox.connected
            and now_s - self.unconfirmed_since_s >= self.config.presence_timeout_s
        ):
            self.seen()  # no sign of the device: send what was held rather than keep it forever
        session = self.session
        if session is None:
            return
        if self.inbound is not None and self.inbound.pending:
            self._feed(session, self.inbound.expire(session.clock.now_ms()))
        if self.offline_since_s is not None and now_s - self.offline_since_s >= self.config.device_offline_grace_s:
            self.end_session("device_offline")
        elif now_s - self.last_stats_s >= self.config.stats_interval_s:
            self.publish_stats()

    def stats(self) -> dict[str, Any]:
        session = self.session
        return {
            "session_id": session.session_id if session else None,
            "audio_in": self.counts.as_dict(),
            "audio_out": {
                "frames": self.counters["audio_out_frames"],
                "dropped_outage": self.counters["audio_out_outage"],
                "dropped_backlog": self.counters["audio_out_backlog"],
                "flushed": self.counters["audio_out_flushed"],
            },
            "events": {
                "delayed": self.counters["events_delayed"],
                "dropped": self.counters["events_dropped"],
            },
            "bad_messages": dict(self.bad),
            "interrupts": {
                key.removeprefix("interrupted_"): n
                for key, n in self.counters.items()
                if key.startswith("interrupted_")
            },
            "bus_overflow": session.metrics.total("bus.overflow") if session else 0,
        }

    def publish_stats(self) -> None:
        self.last_stats_s = self.bridge.now_s()
        self.publish_event("stats", **self.stats())

    def outage_began(self, now_s: float) -> None:
        self.outage_counters = Counter(self.counters)
        if self.unconfirmed_since_s is None:
            self.unconfirmed_since_s = now_s
        self.interrupt("broker_outage")

    def outage_ended(self, down_ms: float, now_s: float) -> None:
        """Report the outage; the device's events wait until it shows it is back, too."""
        if self.unconfirmed_since_s is not None:
            self.unconfirmed_since_s = now_s
        if self.session is None and not self.counters:
            return
        delta = Counter(self.counters)
        delta.subtract(self.outage_counters)
        report = {
            "down_ms": round(down_ms, 1),
            "audio_out_dropped": delta["audio_out_outage"],
            "events_delayed": delta["events_delayed"],
            "events_dropped": delta["events_dropped"],
            "replies_interrupted": delta["interrupted_broker_outage"],
            "session_id": self.session.session_id if self.session else None,
        }
        self.log.warning("mqtt_outage_report", **report)
        self.publish_event("outage", **report)


# ------------------------------------------------------------------ the bridge


class MqttBridge:
    """Bridges a broker to duplexer sessions, one per device; survives broker restarts and bad input."""

    def __init__(self, broker: BrokerSettings, engines: EngineFactory, config: BridgeConfig | None = None) -> None:
        self.broker = broker
        self.engines = engines
        self.config = config or BridgeConfig()
        self.topics = self.config.topics
        self.client_id = f"duplexer-bridge-{self.config.bridge_id}-{secrets.token_hex(3)}"
        self.status_topic = self.topics.bridge_status(self.config.bridge_id)
        self.links: dict[str, DeviceLink] = {}
        self.outbox = Outbox(self.config.max_queued, self._dropped)
        self.errors = _ErrorGate(self.config.error_repeat_s)
        self.counters: Counter[str] = Counter()
        self.log = get_logger(component="mqtt_bridge", bridge_id=self.config.bridge_id)
        self.connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._down_since_s: float | None = None
        self._ever_connected = False

    # -- helpers

    def now_s(self) -> float:
        return asyncio.get_running_loop().time()

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _dropped(self, item: Outgoing, reason: str) -> None:
        link = self.links.get(item.device_id) if item.device_id else None
        counters = link.counters if link is not None else self.counters
        if reason == "delayed":
            counters["events_delayed"] += 1
        elif item.is_audio:
            counters[f"audio_out_{reason}"] += 1
        else:
            counters["events_dropped"] += 1

    def request_stop(self) -> None:
        """Stop gracefully: end the sessions, send what is queued, then mark the bridge offline."""
        self._stopping.set()

    # -- running

    async def run(self) -> None:
        """Serve until :meth:`request_stop`; raises BrokerLoginRefused if the first login is refused."""
        housekeeper = asyncio.create_task(self._housekeep_forever(), name="mqtt-housekeeping")
        try:
            await self._connect_forever()
        finally:
            housekeeper.cancel()
            await asyncio.gather(housekeeper, return_exceptions=True)
            await self._stop_sessions("bridge_stopped")
            tasks = list(self._tasks)
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _connect_forever(self) -> None:
        cfg = self.config
        backoff = Backoff(cfg.reconnect_initial_s, cfg.reconnect_max_s)
        while not self._stopping.is_set():
            client = make_client(
                self.broker,
                self.client_id,
                will=aiomqtt.Will(self.status_topic, OFFLINE, QOS_STATUS, retain=True),
                clean_start=not self._ever_connected,
                session_expiry_s=cfg.session_expiry_s,
            )
            try:
                async with client:
                    self._ever_connected = True
                    backoff.reset()
                    await self._serve(client)
                    return
            except aiomqtt.MqttError as exc:
                if is_auth_failure(exc) and not self._ever_connected:
                    raise BrokerLoginRefused(
                        f"broker {self.broker.url} refused the login ({exc}); check --username/--password"
                    ) from None
                self._connection_lost(exc)
            delay_s = backoff.next_s()
            self.log.warning("mqtt_reconnect_wait", delay_s=round(delay_s, 2), attempt=backoff.attempt)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay_s)

    async def _serve(self, client: aiomqtt.Client) -> None:
        for topic_filter, qos in self.topics.subscriptions(self.config.device_id):
            await client.subscribe(topic_filter, qos)
        await client.publish(self.status_topic, ONLINE, QOS_STATUS, retain=True)
        self._connection_made()
        reader = asyncio.create_task(self._read_forever(client), name="mqtt-reader")
        publisher = asyncio.create_task(self._publish_forever(client), name="mqtt-publisher")
        stopper = asyncio.create_task(self._stopping.wait(), name="mqtt-stop")
        workers = {reader, publisher, stopper}
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                reader.cancel()
                await self._stop_sessions("bridge_stopped")
                await self._drain(timeout_s=2.0)
                await client.publish(self.status_topic, OFFLINE, QOS_STATUS, retain=True)
                return
            for task in done:
                task.result()  # re-raises the MqttError that ended the connection
            raise aiomqtt.MqttError("connection ended")
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _drain(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(self.outbox) and loop.time() < deadline:
            await asyncio.sleep(0.01)

    def _connection_made(self) -> None:
        self.outbox.connected = True
        self.connected.set()
        self.counters["connections"] += 1
        if self._down_since_s is None:
            self.log.info("mqtt_connected", broker=self.broker.url, client_id=self.client_id)
            return
        down_ms = 1000.0 * (self.now_s() - self._down_since_s)
        self._down_since_s = None
        self.log.warning("mqtt_reconnected", broker=self.broker.url, down_ms=round(down_ms, 1))
        for link in self.links.values():
            link.outage_ended(down_ms, self.now_s())

    def _connection_lost(self, exc: BaseException) -> None:
        if self.outbox.connected:
            self.outbox.connected = False
            self.connected.clear()
            self._down_since_s = self.now_s()
            self.counters["disconnects"] += 1
            self.outbox.drop_audio(None, "outage")
            self.log.warning("mqtt_disconnected", broker=self.broker.url, error=str(exc))
            for link in self.links.values():
                link.outage_began(self.now_s())
        else:
            self.log.warning("mqtt_connect_failed", broker=self.broker.url, error=str(exc))

    async def _read_forever(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.dispatch(str(message.topic), _payload_bytes(message.payload), bool(message.retain))

    async def _publish_forever(self, client: aiomqtt.Client) -> None:
        slots = asyncio.Semaphore(self.config.max_inflight)
        inflight: set[asyncio.Task[None]] = set()
        try:
            while True:
                item = await self.outbox.get()
                await slots.acquire()
                task = asyncio.create_task(self._publish_one(client, item, slots))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
        finally:
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)

    async def _publish_one(self, client: aiomqtt.Client, item: Outgoing, slots: asyncio.Semaphore) -> None:
        try:
            await client.publish(item.topic, item.payload, item.qos, retain=item.retain)
        except aiomqtt.MqttError:
            self._unsent(item)  # the reader sees the lost connection and reconnects
        except asyncio.CancelledError:
            self._unsent(item)
            raise
        finally:
            slots.release()

    def _unsent(self, item: Outgoing) -> None:
        if item.is_audio:
            self._dropped(item, "outage")
        else:
            self.outbox.retry(item)  # at least once: it goes out again after reconnecting

    async def _housekeep_forever(self) -> None:
        period_s = self.config.housekeeping_ms / 1000.0
        while True:
            await asyncio.sleep(period_s)
            now_s = self.now_s()
            for link in list(self.links.values()):
                try:
                    link.housekeep(now_s)
                except Exception as exc:  # upkeep of one device must not stop the others'
                    link.log.error("mqtt_housekeeping_failed", error=repr(exc))

    async def _stop_sessions(self, reason: str) -> None:
        stopping = [link.end_session(reason) for link in self.links.values()]
        await asyncio.gather(*(task for task in stopping if task is not None), return_exceptions=True)

    # -- dispatch

    def dispatch(self, topic: str, payload: bytes, retained: bool = False) -> None:
        """Route one incoming message to its device; never raises."""
        self.counters["messages"] += 1
        parsed = self.topics.parse(topic)
        if parsed is None:
            self.counters["foreign_topic"] += 1
            return
        device_id, channel = parsed
        link = self._link(device_id)
        if link is None:
            return
        try:
            if not retained and channel is not Channel.STATUS:
                link.seen()  # it is publishing now, so it is connected
            if channel is Channel.AUDIO_IN:
                link.on_audio(payload)
            elif channel is Channel.CONFIG:
                link.on_config(payload)
            elif channel is Channel.CONTROL:
                link.on_control(payload)
            elif channel is Channel.STATUS:
                link.on_status(payload)
        except Exception as exc:  # a bug met by one message must not end the bridge or the session
            link.log.exception("mqtt_dispatch_failed", channel=channel.value, error=repr(exc))
            link.error(ErrorCode.INTERNAL, f"the bridge failed on a {channel.value} message: {exc!r}")

    def _link(self, device_id: str) -> DeviceLink | None:
        link = self.links.get(device_id)
        if link is not None:
            return link
        if not valid_device_id(device_id):
            self._refuse(
                device_id,
                ErrorCode.BAD_DEVICE_ID,
                f"device id {device_id[:80]!r} is not valid: use 1-64 of A-Z a-z 0-9 _ . - "
                "starting with a letter or digit",
            )
            return None
        if len(self.links) >= self.config.max_devices:
            self._refuse(
                device_id,
                ErrorCode.TOO_MANY_DEVICES,
                f"this bridge serves at most {self.config.max_devices} devices",
            )
            return None
        link = self.links[device_id] = DeviceLink(self, device_id)
        return link

    def _refuse(self, device_id: str, code: ErrorCode, message: str) -> None:
        self.counters[f"refused_{code.value}"] += 1
        allowed, suppressed = self.errors.allow((device_id, code.value), self.now_s())
        if not allowed:
            return
        self.log.warning("mqtt_bad_input", device_id=device_id[:80], code=code.value, message=message)
        body: dict[str, Any] = {"type": "error", "source": "mqtt", "code": code.value, "message": message}
        body.update(fatal=False, suppressed=suppressed)
        self.outbox.put(self.topics.device(device_id, Channel.EVENTS), encode_json(body), QOS_EVENTS, None, False)


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode("utf-8")
