"""A bus that crosses processes: local delivery as :class:`Bus`, plus links to the buses of other processes.

Each process of a session (the driver and every Ray actor that hosts some of its
actors) has one :class:`LinkedBus`. An event published in a process is delivered
to that process's subscribers and, once, to every linked process that has a
subscriber for its type. An event that arrives over a link is delivered locally
only, so nothing travels twice.

Sending is batched: the events a process publishes for one link in the same
event-loop turn (or, with ``batch_ms``, within that many milliseconds) travel as
one message. Control events (interrupts, stops) go at once in a lane of their
own, so they never wait for a batch of audio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from duplexer.runtime.bus import DEFAULT_QUEUE_SIZE, Bus, Subscription
from duplexer.runtime.clock import Clock
from duplexer.runtime.events import Event, Priority
from duplexer.runtime.metrics import Metrics

Send = Callable[[str, int, list[Event]], None]
"""Sends one batch to a linked process: (lane, sequence number, events). Must not block."""

CONTROL, DATA = "control", "data"


@dataclass
class Link:
    """One linked process: which event types it wants, and how to send to it."""

    name: str
    kinds: frozenset[type[Event]] | None  # None: every event
    send: Send
    batch_ms: float = 0.0
    outbox: list[Event] = field(default_factory=list)
    seq: dict[str, int] = field(default_factory=lambda: {CONTROL: 0, DATA: 0})
    flush_handle: asyncio.Handle | None = None

    def wants(self, kind: type[Event]) -> bool:
        return self.kinds is None or kind in self.kinds

    def send_now(self, lane: str, events: list[Event]) -> None:
        self.seq[lane] += 1
        self.send(lane, self.seq[lane], events)


class LinkedBus(Bus):
    """A session's bus in one process, linked to the same session's buses in other processes."""

    def __init__(self, session_id: str, clock: Clock, metrics: Metrics | None = None) -> None:
        super().__init__(session_id, clock, metrics)
        self.links: dict[str, Link] = {}
        self._inbound: dict[tuple[str, str], tuple[int, dict[int, list[Event]]]] = {}
        self.on_subscribe: Callable[[], None] | None = None
        """Called when a local subscription is added or removed, so linked processes can be told."""

    def link(self, name: str, kinds: Iterable[type[Event]] | None, send: Send, batch_ms: float = 0.0) -> None:
        self.links[name] = Link(name, None if kinds is None else frozenset(kinds), send, batch_ms)

    def set_link_kinds(self, name: str, kinds: Iterable[type[Event]] | None) -> None:
        self.links[name].kinds = None if kinds is None else frozenset(kinds)

    def unlink(self, name: str) -> None:
        link = self.links.pop(name, None)
        if link is not None and link.flush_handle is not None:
            link.flush_handle.cancel()

    def subscribed_kinds(self) -> frozenset[type[Event]] | None:
        """Every event type some local subscriber wants; None when one of them wants all."""
        if self._catch_all:
            return None
        return frozenset(kind for kind, subs in self._by_kind.items() if subs)

    def subscribe(
        self, name: str, kinds: Iterable[type[Event]] | None = None, maxsize: int = DEFAULT_QUEUE_SIZE
    ) -> Subscription:
        sub = super().subscribe(name, kinds, maxsize)
        if self.on_subscribe is not None:
            self.on_subscribe()
        return sub

    def publish(self, event: Event) -> None:
        """Deliver locally, and queue for every linked process that wants this type."""
        super().publish(event)
        kind = type(event)
        for link in self.links.values():
            if not link.wants(kind):
                continue
            if event.priority is Priority.CONTROL:
                self._flush(link)  # what was published before it goes first
                link.send_now(CONTROL, [event])
                continue
            link.outbox.append(event)
            if link.flush_handle is None:
                loop = asyncio.get_running_loop()
                link.flush_handle = (
                    loop.call_later(link.batch_ms / 1000.0, self._flush, link)
                    if link.batch_ms > 0
                    else loop.call_soon(self._flush, link)
                )

    def _flush(self, link: Link) -> None:
        if link.flush_handle is not None:
            link.flush_handle.cancel()
            link.flush_handle = None
        if link.outbox:
            batch, link.outbox = link.outbox, []
            link.send_now(DATA, batch)

    def flush_all(self) -> None:
        for link in list(self.links.values()):
            self._flush(link)

    def receive(self, sender: str, lane: str, seq: int, events: list[Event]) -> None:
        """Deliver a batch from a linked process locally, in the order it was sent on its lane."""
        expected, held = self._inbound.get((sender, lane), (1, {}))
        if seq != expected:
            held[seq] = events
            self.metrics.incr("bus.link_reordered", sender=sender)
            self._inbound[(sender, lane)] = (expected, held)
            return
        self.deliver_local(events)
        expected += 1
        while expected in held:
            self.deliver_local(held.pop(expected))
            expected += 1
        self._inbound[(sender, lane)] = (expected, held)

    def deliver_local(self, events: list[Event]) -> None:
        """Deliver events that came from elsewhere to local subscribers only (no sequence check)."""
        for event in events:
            Bus.publish(self, event)
