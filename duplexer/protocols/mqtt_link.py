"""One device on the MQTT bridge: its audio format, session, inbound audio, held events and counters.

:class:`DeviceLink` handles the device's messages and owns its session;
:class:`MqttLinkActor` forwards the session's events to the device, and
:class:`MqttAudioSink` plays the session's bot audio onto its ``audio/out`` topic.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import asdict, fields, replace
from typing import TYPE_CHECKING, Any

from duplexer.actors.pipeline import start_pipeline
from duplexer.actors.turn_recorder import SentAudio, TurnRecorderActor
from duplexer.policies.controller import PolicyParams
from duplexer.protocols.echo_session import SessionEcho
from duplexer.protocols.inbound_audio import InboundAudio, InboundCounts
from duplexer.protocols.mqtt_guard import TokenBucket, token_matches
from duplexer.protocols.mqtt_topics import (
    ENCODING_PCM16LE,
    FLAG_REPLY_START,
    MAX_AUDIO_PAYLOAD_BYTES,
    OFFLINE,
    QOS_AUDIO,
    QOS_EVENTS,
    AudioFormat,
    Channel,
    Control,
    ControlType,
    ErrorCode,
    PolicyOverrides,
    WireError,
    encode_json,
    pack_audio,
    parse_control,
    parse_device_config,
    parse_status,
    unpack_audio,
)
from duplexer.runtime.actor import Actor, SessionContext
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
from duplexer.runtime.executors import ExecutorSession
from duplexer.runtime.logging import get_logger

if TYPE_CHECKING:
    from duplexer.protocols.mqtt_bridge import MqttBridge


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


def policy_with(base: PolicyParams, overrides: PolicyOverrides) -> PolicyParams:
    """``base`` with overrides applied; raises WireError(BAD_POLICY) naming the bad parameter."""
    try:
        return base.with_overrides(overrides)
    except ValueError as exc:
        raise WireError(ErrorCode.BAD_POLICY, f"{exc}; see `duplexer policy show`") from None


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

    def __init__(self, bridge: MqttBridge, device_id: str, fmt: AudioFormat | None = None) -> None:
        self.bridge = bridge
        self.device_id = device_id
        self.config = bridge.config
        self.log = get_logger(component="mqtt", device_id=device_id)
        self.events_topic = self.config.topics.device(device_id, Channel.EVENTS)
        self.audio_topic = self.config.topics.device(device_id, Channel.AUDIO_OUT)
        self.fmt: AudioFormat | None = fmt
        """The declared format; where the bridge has device tokens, only a config with the token sets it."""
        self.echo = SessionEcho(make_canceller=self.config.make_canceller, params=self.config.echo, log=self.log)
        self.last_heard_s = bridge.now_s()
        """When the device last published a live message; its session ends after the idle timeout."""
        self.budget = TokenBucket(
            self.config.device_messages_per_s, self.config.device_burst_messages, self.last_heard_s
        )
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

    def admit(self, now_s: float) -> bool:
        """A live message arrived: note it, and say whether it is within the device's message budget."""
        self.last_heard_s = now_s
        if self.budget.take(now_s):
            return True
        self.error(
            ErrorCode.RATE_LIMITED,
            f"more than {self.config.device_messages_per_s:g} messages per second (bursts of "
            f"{self.config.device_burst_messages}) from this device; the excess is dropped",
        )
        return False

    def forgettable(self, now_s: float) -> bool:
        """No session, nothing held for it, and nothing heard from it for the idle timeout."""
        return self.session is None and not self.held and now_s - self.last_heard_s >= self.config.device_idle_timeout_s

    def error(self, code: ErrorCode, message: str) -> None:
        """Refuse one message: count it, tell the device (rate-limited) and log a structured line."""
        self.bad[code.value] += 1
        self.bridge.error_counts.count(code.value)
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
            config = parse_device_config(payload)
        except WireError as exc:
            self.error(exc.code, exc.message)
            return
        if not token_matches(self.config.device_tokens, self.device_id, config.token):
            self.error(
                ErrorCode.UNAUTHORIZED,
                f"this bridge needs the token of device {self.device_id!r} in its config ('token'); "
                "the config was ignored",
            )
            return
        fmt = config.fmt
        if fmt != self.fmt and self.inbound is not None:
            self.inbound = self._new_inbound(fmt, self.inbound.next_frame)
        self.fmt = fmt
        self.echo.configure(config.echo, fmt)
        self.publish_event("config", audio_in=fmt.to_json(), echo=config.echo.to_json())

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
            if self.fmt is None:
                raise WireError(
                    ErrorCode.UNKNOWN_DEVICE,
                    f"audio from device {self.device_id!r}, which has not declared its format: publish a "
                    f"retained JSON config to {self.config.topics.device(self.device_id, Channel.CONFIG)} first",
                )
            self.fmt.check_frame(pcm)
            if self.stopped_by_device:
                raise WireError(ErrorCode.SESSION_STOPPED, "audio after a stop control is ignored; send start first")
            session = self.session or self.start_session()
            if session is None:
                return
            now_ms = session.clock.now_ms()
            if self.inbound is None:
                self.inbound = self._new_inbound(self.fmt, None)  # its first audio ends at now
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
        if self.config.device_tokens is not None and self.fmt is None:
            self.error(
                ErrorCode.UNAUTHORIZED,
                f"device {self.device_id!r} has no accepted config: publish its config with its token first",
            )
            return
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
        elif control.type is ControlType.PLAYED and control.played is not None:
            self.echo.playout_report(*control.played, self.fmt, self.inbound)

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
        observability = self.bridge.observed.observability
        device_sink = MqttAudioSink(self)
        sent = SentAudio(device_sink) if observability is not None else None  # when audible samples went out
        try:
            engines = self.bridge.engines(session.clock, self.echo.tap(sent or device_sink))
            pipeline = replace(self.config.pipeline, policy=self.policy)
            start_pipeline(session, engines, pipeline)
        except Exception as exc:  # a failing engine (or a Ray host that cannot start) must not take the bridge down
            self.log.error("mqtt_engine_failed", error=repr(exc))
            self.error(ErrorCode.ENGINE_FAILED, f"could not start the engines: {type(exc).__name__}: {exc}")
            self.bridge.spawn(session.stop())
            return None
        session.add(MqttLinkActor(session.ctx, self))
        if observability is not None and sent is not None:
            session.add(TurnRecorderActor(session.ctx, observability, sent.heard))
        self.session = session
        self.counts = InboundCounts()
        self.inbound = None
        self.playing = None
        self.echo.start(self.fmt, session.metrics)
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
        self.echo.stop()
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
            clean, gate = self.echo.process(seq, pcm, session.clock.now_ms())
            ctx.emit(AudioFrame, pcm=clean, sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=seq, speech_gate=gate)

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
        elif (
            self.offline_since_s is None
            and self.bridge.outbox.connected
            and now_s - self.last_heard_s >= self.config.device_idle_timeout_s
        ):
            self.end_session("idle")  # it vanished without a last will, or fell silent
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
            "echo": self.echo.stats(),
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
        self.last_heard_s = now_s  # the broker's silence was not the device's
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
