"""The Ray actor that hosts actors of one session, or of several: the same actor classes, on buses linked to the driver.

A host builds each session's actors from :class:`~duplexer.runtime.actor.ActorSpec` s
and runs them under the ordinary :class:`~duplexer.runtime.actor.Supervisor`, which
restarts a crashed actor in place. Events for other hosts are sent straight to them;
events for the driver wait in outboxes the driver long-polls, one poll for every
session on the host (a driver is not a Ray actor, so nothing can call it). A call
from the driver may carry batches of several sessions. Control events arrive through
a method in a concurrency group of their own, so a backlog of audio batches never
holds up an interrupt.

A host has ``slots``: how many sessions it serves at once. With one (the default) it
serves a single session and dies with it, so a host failure ends only that session.
With more, sessions share its process (see ``RayOptions.sessions_per_host``). Each
session in a host is a :class:`HostedSession` with its own bus, clock and actors,
named by its :data:`SlotKey`.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import ray

from duplexer.runtime.actor import ActorSpec, RestartPolicy, SessionContext, Supervisor
from duplexer.runtime.clock import EpochClock
from duplexer.runtime.events import Event
from duplexer.runtime.linked_bus import CONTROL, LinkedBus, Send
from duplexer.runtime.logging import configure_logging
from duplexer.runtime.metrics import Metrics

DRIVER = "driver"
"""The link name of the process that created the session (the transport edge)."""

CONCURRENCY_GROUPS = {CONTROL: 1}
"""Control batches have a thread and loop of their own; data batches and the rest share the default one."""

Item = tuple["SlotKey", str, str, int, list[Event]]
"""One batch for one session: (slot key, sender, lane, sequence number, events)."""
SlotKey = tuple[str, str]
"""A session's share of a host: (a token unique to the session object, the placement's host name).
Not the session id: nothing stops two sessions from having the same one."""


def pack(value: Any) -> bytes:
    """A batch as one bytes argument or result.

    Ray passes bytes through as they are, but serializes a list of event objects through its
    general path (pickle5 plus msgpack metadata): a one-event batch measured 1.05 ms a hop against
    0.88 ms packed (a bare call with a float: 0.82 ms).
    """
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(blob: bytes) -> Any:
    return pickle.loads(blob)


def sender_to(handle: Any, key: SlotKey, sender: str) -> Send:
    """Sends a link's batches to slot ``key`` of the host behind ``handle``: control ones to its control group."""

    def send(lane: str, seq: int, events: list[Event]) -> None:
        method = handle.deliver_control if lane == CONTROL else handle.deliver
        method.remote(pack([(key, sender, lane, seq, events)]))

    return send


class NoSinkHere:
    """The audio sink of a Ray host: the call's audio is in the driver, where the speaker or track is."""

    def write(self, pcm: bytes, sample_rate_hz: int, reply_id: str, ts_ms: float) -> None:
        raise RuntimeError(NO_SINK_HERE)

    def flush(self) -> None:
        raise RuntimeError(NO_SINK_HERE)


NO_SINK_HERE = "an actor that plays audio must run in the driver process, next to the call's audio sink"


@dataclass(frozen=True)
class SlotSpec:
    """What a host needs to serve its share of a session (sent by the driver to :meth:`SessionHost.start`)."""

    session_id: str
    epoch_s: float
    specs: list[ActorSpec]
    engine_factory: Callable[..., Any] | None
    peers: dict[str, tuple[Any, frozenset[type[Event]] | None]]
    """The session's other hosts: name -> (handle, the event types its actors subscribe to)."""
    driver_kinds: frozenset[type[Event]] | None
    batch_ms: float
    restart_policy: RestartPolicy


class HostedSession:
    """One session's share of a host: its bus, clock and actors, and its outbox for the driver."""

    def __init__(self, key: SlotKey, spec: SlotSpec, on_outbox: Callable[[], None], driver_version: int = 0) -> None:
        session_id = spec.session_id
        self.session_id, self.host = session_id, key[1]
        self.on_outbox = on_outbox
        """Called when events for the driver are queued (the host wakes its long-poll)."""
        self.clock = EpochClock(spec.epoch_s)
        self.metrics = Metrics()
        self.bus = LinkedBus(session_id, self.clock, self.metrics)
        self.ctx = SessionContext(session_id, self.bus, self.clock, self.metrics)
        self.restart_policy = spec.restart_policy
        self.supervisor: Supervisor | None = None
        self.to_driver: list[Event] = []
        self._driver_version = driver_version
        """The version of ``spec.driver_kinds`` (see :meth:`set_driver_kinds`)."""
        self._cpu_at_go: float | None = None
        self._early: list[tuple[str, str, int, list[Event]]] = []
        """Batches that arrived before the actors started (in :meth:`go`); delivered then, in order."""
        engines = None
        if any(actor.engine_fields for actor in spec.specs):
            if spec.engine_factory is None:
                raise ValueError(f"host {self.host!r}: actors need engines and no engine factory was given")
            engines = spec.engine_factory(self.clock, NoSinkHere())
        for name, (handle, kinds) in spec.peers.items():
            self.bus.link(name, kinds, sender_to(handle, (key[0], name), self.host), spec.batch_ms)
        self.bus.link(DRIVER, spec.driver_kinds, self._to_driver)
        self.actors = [actor.build(self.ctx, engines) for actor in spec.specs]

    def go(self, epoch_s: float | None) -> None:
        """Start the actors, with session time counted from ``epoch_s`` when given.

        Nothing has run yet, so moving the clock here cannot take time back from any actor.
        """
        if self.supervisor is not None:
            return
        self._cpu_at_go = time.process_time()
        if epoch_s is not None:
            self.clock.rebase(epoch_s)
        supervisor = Supervisor(self.ctx, self.restart_policy)
        for actor in self.actors:
            supervisor.start(actor)
        self.supervisor = supervisor
        early, self._early = self._early, []
        for batch in early:
            self.bus.receive(*batch)

    def receive(self, sender: str, lane: str, seq: int, events: list[Event]) -> None:
        if self.supervisor is None:
            self._early.append((sender, lane, seq, events))
            return
        self.bus.receive(sender, lane, seq, events)

    def _to_driver(self, lane: str, seq: int, events: list[Event]) -> None:
        self.to_driver.extend(events)
        self.on_outbox()

    def take(self) -> list[Event]:
        batch, self.to_driver = self.to_driver, []
        return batch

    def set_driver_kinds(self, version: int, kinds: frozenset[type[Event]] | None) -> None:
        """The event types the driver now subscribes to. Calls may run out of order: the newest wins."""
        if version <= self._driver_version:
            return
        self._driver_version = version
        self.bus.set_link_kinds(DRIVER, kinds)

    async def stop(self) -> dict[str, float]:
        """Stop every actor; hand the driver what is still queued for it; return the counters and the
        CPU time the host's process used while this session ran (``host.cpu_s``: the whole process's,
        which other sessions share when the host has several slots)."""
        if self.supervisor is not None:
            await self.supervisor.stop()
        self.bus.flush_all()
        cpu_s = time.process_time() - self._cpu_at_go if self._cpu_at_go is not None else 0.0
        return {**self.metrics.counters, "host.cpu_s": cpu_s}


class SessionHost:
    """A Ray actor serving up to ``slots`` sessions at once (wrapped by ``ray.remote`` in :func:`host_class`).

    It may be started before any session exists (a :class:`~duplexer.runtime.ray_executor.HostPool`
    keeps some ready); :meth:`start` gives it a session. With one slot it serves exactly one
    session in its life, and dies with it; with more, a stopped session's slot is free again.
    """

    def __init__(self, log_level: str = "WARNING", slots: int = 1) -> None:
        configure_logging(log_level)
        logging.getLogger("ray").setLevel(logging.WARNING)
        self.slots = slots
        self.sessions: dict[SlotKey, HostedSession] = {}
        self.served = 0
        self._last = ""
        self.loop: asyncio.AbstractEventLoop | None = None
        self._early: dict[SlotKey, list[tuple[str, str, int, list[Event]]]] = {}
        self._kinds: dict[SlotKey, tuple[int, frozenset[type[Event]] | None]] = {}
        """(version, kinds) from ``set_driver_kinds`` calls that overtook ``start``."""
        self._closed: list[tuple[SlotKey, list[Event], bool]] = []
        """Stopped sessions' last events for the driver, and their end (``True``)."""
        self._waiter: asyncio.Future[None] | None = None
        """The waiting :meth:`pull`, woken when a session queues events for the driver."""
        self._lock = threading.Lock()
        """Guards the maps above against :meth:`deliver_control`, which runs in its own thread."""

    async def preload(self, modules: list[str]) -> None:
        """Import modules a session's actors will need now, so taking this host costs no imports."""
        for name in modules:
            importlib.import_module(name)

    async def start(self, key: SlotKey, spec: SlotSpec) -> list[str]:
        """Join session ``spec.session_id`` as its host ``key[1]``: build the actors and link the other
        hosts and the driver; the actors start in :meth:`go`. Returns the actors' names.
        """
        self.loop = asyncio.get_running_loop()
        if self.slots == 1 and self.served:
            raise RuntimeError(f"this host already served session {self._last}; a host serves one session")
        if len(self.sessions) >= self.slots or key in self.sessions:
            raise RuntimeError(f"this host already serves {len(self.sessions)} sessions of its {self.slots}")
        version, kinds = self._kinds.pop(key, (0, spec.driver_kinds))  # set_driver_kinds may overtake start
        hosted = HostedSession(key, replace(spec, driver_kinds=kinds), self._wake, version)
        with self._lock:
            self.sessions[key] = hosted
            self.served += 1
            self._last = spec.session_id
            early = self._early.pop(key, [])
        for batch in early:
            hosted.receive(*batch)
        return [actor.name for actor in spec.specs]

    async def go(self, key: SlotKey, epoch_s: float | None) -> None:
        """Start a session's actors (after ``start``), with its time counted from ``epoch_s`` when given."""
        self.sessions[key].go(epoch_s)

    def _receive(self, key: SlotKey, sender: str, lane: str, seq: int, events: list[Event]) -> None:
        with self._lock:
            hosted = self.sessions.get(key)
            if hosted is None:
                self._early.setdefault(key, []).append((sender, lane, seq, events))
                return
        hosted.receive(sender, lane, seq, events)

    async def deliver(self, items: bytes) -> None:
        """Data batches, packed: a list of :data:`Item`, possibly of several sessions."""
        for item in unpack(items):
            self._receive(*item)

    @ray.method(concurrency_group=CONTROL)
    async def deliver_control(self, items: bytes) -> None:
        """Control batches, in the control group's own thread; delivered on the actors' loop."""
        batch: list[Item] = unpack(items)
        with self._lock:
            loop = self.loop
            if loop is None:  # no session has started here yet
                for key, sender, lane, seq, events in batch:
                    self._early.setdefault(key, []).append((sender, lane, seq, events))
                return
        for item in batch:
            loop.call_soon_threadsafe(self._receive, *item)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def pull(self) -> bytes:
        """Every session's events for the driver, packed as a list of (slot key, events, ended);
        waits until there are some. ``ended`` is True once: a stopped session's last events."""
        while True:
            ready = [(key, hosted.take(), False) for key, hosted in self.sessions.items() if hosted.to_driver]
            ready += self._closed
            self._closed = []
            if ready:
                return pack(ready)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def set_driver_kinds(self, key: SlotKey, version: int, kinds: frozenset[type[Event]] | None) -> None:
        """The event types the driver now subscribes to. Calls may run out of order: the newest wins."""
        hosted = self.sessions.get(key)
        if hosted is not None:
            hosted.set_driver_kinds(version, kinds)
            return
        known = self._kinds.get(key)
        if known is None or known[0] < version:
            self._kinds[key] = (version, kinds)  # it overtook start, which links the driver with these

    async def ping(self, key: SlotKey) -> float:
        """A session's time in ms (a liveness probe and a clock check)."""
        return self.sessions[key].clock.now_ms()

    async def stop(self, key: SlotKey) -> dict[str, float]:
        """Stop a session's actors and free its slot; return its counters (see :meth:`HostedSession.stop`)."""
        hosted = self.sessions.get(key)
        counters = {} if hosted is None else await hosted.stop()
        with self._lock:
            self.sessions.pop(key, None)
        self._closed.append((key, [] if hosted is None else hosted.take(), True))
        self._wake()
        return counters


@functools.cache
def host_class(max_restarts: int, num_cpus: float) -> Any:
    """The Ray actor class for session hosts, with its fault-tolerance and resource declarations.

    Cached: each ``ray.remote`` exports the class again, which blocks the driver's loop for 40-75 ms.
    """
    decorate: Any = ray.remote  # its stubs lack concurrency_groups
    return decorate(
        max_restarts=max_restarts,
        max_task_retries=0,
        num_cpus=num_cpus,
        concurrency_groups=CONCURRENCY_GROUPS,
    )(SessionHost)
