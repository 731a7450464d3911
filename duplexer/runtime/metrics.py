"""In-memory counters and observations for one session."""

from __future__ import annotations

from collections import defaultdict


def _key(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    inner = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


class Metrics:
    """Counters and value series keyed by name and labels."""

    def __init__(self) -> None:
        self.counters: dict[str, float] = defaultdict(float)
        self.series: dict[str, list[float]] = defaultdict(list)

    def incr(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self.counters[_key(name, labels)] += amount

    def observe(self, name: str, value: float, **labels: str) -> None:
        self.series[_key(name, labels)].append(value)

    def count(self, name: str, **labels: str) -> float:
        return self.counters.get(_key(name, labels), 0.0)

    def total(self, name: str) -> float:
        """Sum of a counter over all its label sets."""
        return sum(v for k, v in self.counters.items() if k == name or k.startswith(name + "{"))
