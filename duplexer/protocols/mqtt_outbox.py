"""Everything the MQTT bridge publishes, in order, while the broker may come and go.

Audio is dropped rather than sent stale (during an outage, or past capacity);
events wait out an outage and go out after reconnecting, oldest first. Every
drop is reported to the bridge, which counts it per device.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


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
