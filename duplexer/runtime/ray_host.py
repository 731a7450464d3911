"""The Ray actor that hosts some of one session's actors: the same actor classes, on a bus linked to the driver.

A host builds its actors from :class:`~duplexer.runtime.actor.ActorSpec` s and runs
them under the ordinary :class:`~duplexer.runtime.actor.Supervisor`, which restarts
a crashed actor in place. Events for other hosts are sent straight to them; events
for the driver wait in an outbox the driver long-polls (a driver is not a Ray actor,
so nothing can call it). Control events arrive through a method in a concurrency
group of their own, so a backlog of audio batches never holds up an interrupt.
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


def pack(value: Any) -> bytes:
    """A batch as one bytes argument or result.

    Ray passes bytes through as they are, but serializes a list of event objects through its
    general path (pickle5 plus msgpack metadata): a one-event batch measured 1.05 ms a hop against
    0.88 ms packed (a bare call with a float: 0.82 ms).
    """
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(blob: bytes) -> Any:
    return pickle.loads(blob)


def sender_to(handle: Any, sender: str) -> Send:
    """Sends a link's batches to the session host behind ``handle``: control ones to its control group."""

    def send(lane: str, seq: int, events: list[Event]) -> None:
        method = handle.deliver_control if lane == CONTROL else handle.deliver
        method.remote(pack((sender, lane, seq, events)))

    return send


class NoSinkHere:
    """The audio sink of a Ray host: playout runs in the driver, where the speaker or track is."""

    def write(self, pcm: bytes, sample_rate_hz: int, reply_id: str, ts_ms: float) -> None:
        raise RuntimeError("playout must run in the driver process, next to its audio sink")

    def flush(self) -> None:
        raise RuntimeError("playout must run in the driver process, next to its audio sink")


class SessionHost:
    """One Ray actor's share of one session (wrapped by ``ray.remote`` in :func:`host_class`).

    It may be started before its session exists (a :class:`~duplexer.runtime.ray_executor.HostPool`
    keeps some ready); :meth:`start` gives it its session, once. It never serves another.
    """

    def __init__(self, log_level: str = "WARNING") -> None:
        configure_logging(log_level)
        logging.getLogger("ray").setLevel(logging.WARNING)
        self._bind("", "", time.time())
        self.supervisor: Supervisor | None = None
        self.restart_policy = RestartPolicy()
        self.actors: list[Any] = []
        self._cpu_at_go: float | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.to_driver: list[Event] = []
        self._driver_waiter: asyncio.Future[None] | None = None
        self._stopped = asyncio.Event()
        self._driver_kinds: tuple[int, frozenset[type[Event]] | None] | None = None
        """The newest (version, kinds) from ``set_driver_kinds``: Ray runs an async actor's calls in any order."""
        self._early: list[tuple[str, str, int, list[Event]]] = []
        self._early_lock = threading.Lock()
        """Batches that arrived before the actors started (in :meth:`go`); delivered then, in order."""

    async def preload(self, modules: list[str]) -> None:
        """Import modules a session's actors will need now, so taking this host costs no imports."""
        for name in modules:
            importlib.import_module(name)

    def _bind(self, session_id: str, host: str, epoch_s: float) -> None:
        self.session_id, self.host = session_id, host
        self.clock = EpochClock(epoch_s)
        self.metrics = Metrics()
        self.bus = LinkedBus(session_id, self.clock, self.metrics)
        self.ctx = SessionContext(session_id, self.bus, self.clock, self.metrics)

    async def start(
        self,
        session_id: str,
        host: str,
        epoch_s: float,
        specs: list[ActorSpec],
        engine_factory: Callable[..., Any] | None,
        peers: dict[str, tuple[Any, frozenset[type[Event]] | None]],
        driver_kinds: frozenset[type[Event]] | None,
        batch_ms: float,
        restart_policy: RestartPolicy,
    ) -> list[str]:
        """Join session ``session_id`` as its host ``host``: build the actors and link the other hosts
        and the driver; the actors start in :meth:`go`. Returns the actors' names.
        """
        if self.session_id:
            raise RuntimeError(f"this host already serves session {self.session_id}; a host serves one session")
        self._bind(session_id, host, epoch_s)
        self.loop = asyncio.get_running_loop()
        engines = None
        if any(spec.engine_fields for spec in specs):
            if engine_factory is None:
                raise ValueError(f"host {self.host!r}: actors need engines and no engine factory was given")
            engines = engine_factory(self.clock, NoSinkHere())
        for name, (handle, kinds) in peers.items():
            self.bus.link(name, kinds, sender_to(handle, self.host), batch_ms)
        self.bus.link(DRIVER, driver_kinds if self._driver_kinds is None else self._driver_kinds[1], self._to_driver)
        self.restart_policy = restart_policy
        self.actors = [spec.build(self.ctx, engines) for spec in specs]
        return [spec.name for spec in specs]

    async def go(self, epoch_s: float | None) -> None:
        """Start the actors (after ``start``), with session time counted from ``epoch_s`` when given.

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
        with self._early_lock:
            self.supervisor = supervisor
            early, self._early = self._early, []
        for batch in early:
            self.bus.receive(*batch)

    def _to_driver(self, lane: str, seq: int, events: list[Event]) -> None:
        self.to_driver.extend(events)
        waiter = self._driver_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _receive(self, sender: str, lane: str, seq: int, events: list[Event]) -> None:
        with self._early_lock:
            if self.supervisor is None:
                self._early.append((sender, lane, seq, events))
                return
        self.bus.receive(sender, lane, seq, events)

    async def deliver(self, batch: bytes) -> None:
        """A data batch from ``sender_to``: (sender, lane, seq, events), packed."""
        self._receive(*unpack(batch))

    @ray.method(concurrency_group=CONTROL)
    async def deliver_control(self, batch: bytes) -> None:
        """A control batch, in the control group's own thread; delivered on the actors' loop."""
        sender, lane, seq, events = unpack(batch)
        with self._early_lock:
            if self.loop is None:
                self._early.append((sender, lane, seq, events))
                return
            loop = self.loop
        loop.call_soon_threadsafe(self._receive, sender, lane, seq, events)

    async def pull(self) -> bytes:
        """Events for the driver, packed; waits until there are some (the driver keeps one pull waiting)."""
        while not self.to_driver:
            if self._stopped.is_set():
                return pack([])
            self._driver_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._driver_waiter
            finally:
                self._driver_waiter = None
        batch, self.to_driver = self.to_driver, []
        return pack(batch)

    async def set_driver_kinds(self, version: int, kinds: frozenset[type[Event]] | None) -> None:
        """The event types the driver now subscribes to. Calls may run out of order: the newest wins."""
        if self._driver_kinds is not None and self._driver_kinds[0] >= version:
            return
        self._driver_kinds = (version, kinds)
        if DRIVER in self.bus.links:
            self.bus.set_link_kinds(DRIVER, kinds)
        # else: it arrived before start, which links the driver with these

    async def ping(self) -> float:
        """This host's session time, in ms (a liveness probe and a clock check)."""
        return self.clock.now_ms()

    async def restarts(self) -> dict[str, int]:
        return {} if self.supervisor is None else dict(self.supervisor.restarts)

    async def stop(self) -> dict[str, float]:
        """Stop every actor; hand the driver what is still queued for it; return this host's counters
        and the CPU time its process used while the session ran (``host.cpu_s``)."""
        if self.supervisor is not None:
            await self.supervisor.stop()
        self.bus.flush_all()
        self._stopped.set()
        waiter = self._driver_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        cpu_s = time.process_time() - self._cpu_at_go if self._cpu_at_go is not None else 0.0
        return {**self.metrics.counters, "host.cpu_s": cpu_s}


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
