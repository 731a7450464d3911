"""Errors a surface answered, counted by kind, so an operator (and a soak test) can see every refusal.

A surface (the WebRTC server, the MQTT bridge) owns one :class:`ErrorCounts` and counts each bad
request or message it answers, under a kind drawn from a fixed set (an HTTP status, an MQTT error
code), never from the input itself, so a hostile client cannot grow the table.
"""

from __future__ import annotations

from collections import Counter


class ErrorCounts:
    """How many errors of each kind a surface has answered since it started."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def count(self, kind: str, n: int = 1) -> None:
        self._counts[kind] += n

    def get(self, kind: str) -> int:
        return self._counts[kind]

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def as_dict(self) -> dict[str, int]:
        """The counts by kind, sorted by kind (for status replies, logs and comparisons)."""
        return {kind: n for kind, n in sorted(self._counts.items()) if n}
