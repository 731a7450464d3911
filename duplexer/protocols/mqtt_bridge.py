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
other devices. Any client the broker admits may publish on a device's topics, so
the bridge trusts nothing replayed: retained control, status and audio messages
are ignored, and retained configs only teach it formats (a bounded table), so
litter left on the broker neither stops nor creates devices. Each device has a
message budget (:mod:`duplexer.protocols.mqtt_guard`), an optional token, and an
idle timeout that ends the session of a device that vanished without a last will.

When the broker goes away the sessions keep running and keep their state; the
bridge reconnects with backoff. While it is away, bot audio cannot reach anyone,
so the reply playing is stopped (history keeps what was heard) and queued audio
is dropped and counted; events are queued and sent after reconnecting, followed
by an ``outage`` report. Audio the device held during the outage comes back
flagged and in sequence, and is fed to the pipeline in order.

The wire contract is in :mod:`duplexer.protocols.mqtt_topics` and docs/mqtt.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import Counter
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiomqtt

from duplexer.actors.pipeline import PipelineConfig
from duplexer.protocols.echo_control import CancellerFactory, EchoParams
from duplexer.protocols.echo_session import warm_up
from duplexer.protocols.engine_factory import EngineFactory
from duplexer.protocols.inbound_audio import DEFAULT_REORDER_WINDOW_FRAMES, MAX_CONCEAL_MS
from duplexer.protocols.metrics_endpoint import ObservabilitySettings, ObservedService
from duplexer.protocols.mqtt_connection import Backoff, BrokerSettings, is_auth_failure, make_client
from duplexer.protocols.mqtt_guard import (
    DEFAULT_DEVICE_BURST_MESSAGES,
    DEFAULT_DEVICE_IDLE_TIMEOUT_S,
    DEFAULT_DEVICE_MESSAGES_PER_S,
    BoundedTable,
    token_matches,
)
from duplexer.protocols.mqtt_link import DeviceLink
from duplexer.protocols.mqtt_outbox import Outbox, Outgoing
from duplexer.protocols.mqtt_topics import (
    MAX_INBOUND_PACKET_BYTES,
    OFFLINE,
    ONLINE,
    QOS_EVENTS,
    QOS_STATUS,
    AudioFormat,
    Channel,
    ErrorCode,
    Topics,
    WireError,
    encode_json,
    parse_device_config,
    valid_device_id,
)
from duplexer.runtime.error_counts import ErrorCounts
from duplexer.runtime.executors import SessionMaker, local_session
from duplexer.runtime.logging import get_logger

T = TypeVar("T")


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
    """Devices the bridge keeps at once; past it, one with no session is forgotten to make room, and
    only when every one holds a session is a new device refused (``too_many_devices``)."""
    device_idle_timeout_s: float = DEFAULT_DEVICE_IDLE_TIMEOUT_S
    """A session ends after this long without a live message from its device (one that vanished without
    a last will); a device without a session is forgotten after as long."""
    device_messages_per_s: float = DEFAULT_DEVICE_MESSAGES_PER_S
    """Inbound messages handled per device per second, on average; the excess is dropped (``rate_limited``)."""
    device_burst_messages: int = DEFAULT_DEVICE_BURST_MESSAGES
    """Inbound messages a device may send at once, e.g. the frames it held through an outage."""
    device_tokens: Mapping[str, str] | None = None
    """Device id to token: a config must carry its device's token (else ``unauthorized``). None: no tokens."""
    max_retained_formats: int = 10_000
    """Formats learnt from retained configs of devices not (yet) heard live; past it the oldest are forgotten."""
    make_session: SessionMaker = local_session
    """Makes each device's session: ``local_session`` (default), or a Ray executor's
    (:func:`duplexer.runtime.executors.session_maker`), which builds the placed actors' engines in
    Ray processes with the bridge's engine factory."""
    ready_timeout_s: float = 120.0
    """How long a Ray session's hosts may take to start before the session is given up."""
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    """The /metrics port and the tracer; off by default."""
    make_canceller: CancellerFactory | None = None
    """Builds each session's echo canceller (devices whose config leaves echo to the server); None: the kernel's."""
    echo: EchoParams = field(default_factory=EchoParams)
    """Echo alignment and fallback settings (:mod:`duplexer.protocols.echo_control`)."""


MAX_GATE_KEY_CHARS = 80
"""Characters of a refused device id kept by the error gate: its memory stays small whatever ids arrive."""


class BrokerLoginRefused(RuntimeError):
    """The broker refused the bridge's credentials on the first connection."""


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
        self.retained_formats: BoundedTable[str, AudioFormat] = BoundedTable(self.config.max_retained_formats)
        """Formats from retained configs (checked, token included) of devices the bridge has no link for."""
        self.outbox = Outbox(self.config.max_queued, self._dropped)
        self.errors = _ErrorGate(self.config.error_repeat_s)
        self.counters: Counter[str] = Counter()
        self.error_counts = ErrorCounts()
        """Every message refused, by error code, across devices (links come and go; this stays)."""
        self.observed = ObservedService(self.config.observability, "mqtt", self.error_counts)
        self.log = get_logger(component="mqtt_bridge", bridge_id=self.config.bridge_id)
        self.connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._down_since_s: float | None = None
        self._ever_connected = False
        self._reported: Counter[str] = Counter()
        self._reported_s = 0.0

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
        """Serve until :meth:`request_stop`; raises BrokerLoginRefused if the first login is refused,
        MetricsPortTaken if the metrics endpoint cannot listen."""
        await self.observed.start()
        await asyncio.to_thread(warm_up, self.config.make_canceller)  # not in a device's first frame
        housekeeper = asyncio.create_task(self._housekeep_forever(), name="mqtt-housekeeping")
        try:
            await self._connect_forever()
        finally:
            housekeeper.cancel()
            await asyncio.gather(housekeeper, return_exceptions=True)
            await self._stop_sessions("bridge_stopped")
            tasks = list(self._tasks)
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.observed.stop()
            self.log.info("mqtt_bridge_stopped", errors=self.error_counts.as_dict())

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
                max_packet_bytes=MAX_INBOUND_PACKET_BYTES,
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
                if link.forgettable(now_s) and self.outbox.connected:
                    self._forget(link, "idle")
            if now_s - self._reported_s >= self.config.stats_interval_s:
                self._report_ignored(now_s)

    def _report_ignored(self, now_s: float) -> None:
        """Log what the bridge ignored since the last report (retained replays, statuses of unknown
        devices, refused retained configs), so that litter on the broker shows in the log."""
        self._reported_s = now_s
        kinds = ("retained_ignored", "status_unknown_device", "retained_config_refused")
        new = {kind: self.counters[kind] - self._reported[kind] for kind in kinds}
        if any(new.values()):
            self.log.info("mqtt_ignored", **new, totals={kind: self.counters[kind] for kind in kinds})
            self._reported.update(new)

    def _forget(self, link: DeviceLink, reason: str) -> None:
        """Drop a device without a session; its format is kept, so it can come back without a config."""
        del self.links[link.device_id]
        if link.fmt is not None:
            self.retained_formats.put(link.device_id, link.fmt)
        self.counters[f"forgotten_{reason}"] += 1
        link.log.info("mqtt_device_forgotten", reason=reason)

    async def _stop_sessions(self, reason: str) -> None:
        stopping = [link.end_session(reason) for link in self.links.values()]
        await asyncio.gather(*(task for task in stopping if task is not None), return_exceptions=True)

    # -- dispatch

    def dispatch(self, topic: str, payload: bytes, retained: bool = False) -> None:
        """Route one incoming message to its device; never raises.

        ``retained`` is the retain flag on delivery: set only for what the broker replays on
        subscribing, never for a message published while the bridge listens."""
        self.counters["messages"] += 1
        parsed = self.topics.parse(topic)
        if parsed is None:
            self.counters["foreign_topic"] += 1
            return
        device_id, channel = parsed
        if retained and channel is not Channel.CONFIG:
            self.counters["retained_ignored"] += 1  # a replay, maybe left by anyone: stop, offline, old audio
            return
        if (retained or channel is Channel.STATUS) and device_id not in self.links:
            self._unheard(device_id, channel, payload)
            return
        link = self._link(device_id)
        if link is None:
            return
        now_s = self.now_s()
        if not retained and not link.admit(now_s):
            return
        try:
            if not retained and channel is not Channel.STATUS:
                link.seen()  # it is publishing now, so it is connected
            if channel is Channel.AUDIO_IN:
                link.on_audio(payload)
            elif channel is Channel.CONFIG:
                link.on_config(payload)
            elif channel is Channel.AUDIO_REF:  # the device's loopback, placed by its microphone's numbering
                now_ms = link.session.clock.now_ms() if link.session else None
                try:
                    link.echo.reference_frame(payload, link.fmt, now_ms, link.inbound)
                except WireError as exc:
                    link.error(exc.code, exc.message)
            elif channel is Channel.CONTROL:
                link.on_control(payload)
            elif channel is Channel.STATUS:
                link.on_status(payload)
        except Exception as exc:  # a bug met by one message must not end the bridge or the session
            link.log.exception("mqtt_dispatch_failed", channel=channel.value, error=repr(exc))
            link.error(ErrorCode.INTERNAL, f"the bridge failed on a {channel.value} message: {exc!r}")

    def _unheard(self, device_id: str, channel: Channel, payload: bytes) -> None:
        """A retained config, or a status, of a device the bridge has no link for: neither makes one.

        A retained config that is valid (with its token, where tokens are set) is remembered, so the
        device's audio is understood when it speaks; a status of an unknown device changes nothing."""
        if channel is not Channel.CONFIG:
            self.counters["status_unknown_device"] += 1
            return
        if not payload or not valid_device_id(device_id):
            self.retained_formats.pop(device_id)
            return
        try:
            config = parse_device_config(payload)
        except WireError:
            self.counters["retained_config_refused"] += 1
            return
        if not token_matches(self.config.device_tokens, device_id, config.token):
            self.counters["retained_config_refused"] += 1
            return
        self.retained_formats.put(device_id, config.fmt)

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
            idle = [link for link in self.links.values() if link.session is None]
            if not idle:
                self._refuse(
                    device_id,
                    ErrorCode.TOO_MANY_DEVICES,
                    f"this bridge serves at most {self.config.max_devices} devices, all in a session",
                )
                return None
            self._forget(min(idle, key=lambda link: link.last_heard_s), "room")
        link = self.links[device_id] = DeviceLink(self, device_id, self.retained_formats.pop(device_id))
        return link

    def _refuse(self, device_id: str, code: ErrorCode, message: str) -> None:
        self.counters[f"refused_{code.value}"] += 1
        self.error_counts.count(code.value)
        gate_key = (device_id[:MAX_GATE_KEY_CHARS], code.value)  # a 60 KB id must not cost 60 KB per key
        allowed, suppressed = self.errors.allow(gate_key, self.now_s())
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
