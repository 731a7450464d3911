"""Where a Ray session's actors run: placements, and what a pipeline tells the executor about its actors.

The runtime names no actor. The code that builds a pipeline describes its actors in an
:class:`ActorCatalog` (which ones exist, which must stay in the driver, its named placements, what a
session host imports ahead of them) and hands it to the Ray executor, which checks placements
against it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class PlacementError(ValueError):
    """A placement names an unknown actor, or puts a driver-only actor on a host."""


@dataclass(frozen=True)
class Placement:
    """Which Ray host runs each actor of a session; actors not named run in the driver.

    Written as ``HOST=ACTOR,ACTOR;HOST=ACTOR``, e.g. ``session=controller,context,llm,tts``.
    Each host is one Ray actor per session.
    """

    hosts: tuple[tuple[str, tuple[str, ...]], ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for host, actors in self.hosts:
            if not host or host == "driver":
                raise PlacementError(f"placement: {host!r} is not a host name")
            for actor in actors:
                if actor in seen:
                    raise PlacementError(f"placement: {actor!r} is placed twice")
                seen.add(actor)

    @classmethod
    def parse(cls, text: str, named: Mapping[str, Placement] | None = None) -> Placement:
        """``text`` as one of the ``named`` placements, or as ``HOST=ACTOR,ACTOR[;HOST=...]``."""
        named = named or {}
        if text in named:
            return named[text]
        hosts = []
        for part in text.split(";"):
            host, sep, names = part.partition("=")
            actors = tuple(a.strip() for a in names.split(",") if a.strip())
            if not sep or not actors:
                choices = f" or one of {', '.join(named)}" if named else ""
                raise PlacementError(f"placement {text!r}: expected HOST=ACTOR,ACTOR[;HOST=...]{choices}")
            hosts.append((host.strip(), actors))
        return cls(tuple(hosts))

    def host_of(self, actor: str) -> str | None:
        for host, actors in self.hosts:
            if actor in actors:
                return host
        return None

    def actors(self) -> frozenset[str]:
        return frozenset(a for _, actors in self.hosts for a in actors)

    def describe(self) -> str:
        return ";".join(f"{host}={','.join(actors)}" for host, actors in self.hosts)


@dataclass(frozen=True)
class ActorCatalog:
    """A pipeline's actors as the Ray executor must know them, declared by the pipeline itself.

    The empty catalog knows no actor: a placement may then name only the actors a session runs.
    """

    actors: frozenset[str] = frozenset()
    """Every actor a session of the pipeline may run, those it runs only when configured included."""
    driver_only: frozenset[str] = frozenset()
    """Actors that must run in the driver (an actor that writes to the call's audio sink)."""
    placements: tuple[tuple[str, Placement], ...] = ()
    """Named placements, for ``--placement NAME``."""
    preload: tuple[str, ...] = ()
    """Modules a pooled session host imports before its first session: those defining the actors,
    whose import costs a cold host about as much CPU as starting its process."""

    def parse(self, text: str) -> Placement:
        """``text`` as a placement (a named one, or ``HOST=ACTOR,...``), checked against the catalog."""
        placement = Placement.parse(text, dict(self.placements))
        self.check(placement)
        return placement

    def check(self, placement: Placement, running: Iterable[str] = ()) -> None:
        """Raise PlacementError if ``placement`` puts a driver-only actor on a host, or names an actor
        that is neither in the catalog nor ``running``."""
        driver_only = sorted(placement.actors() & self.driver_only)
        if driver_only:
            raise PlacementError(f"placement: {driver_only[0]!r} must run in the driver, next to the call's audio sink")
        unknown = placement.actors() - self.actors - frozenset(running)
        if unknown:
            known = ", ".join(sorted(self.actors | frozenset(running)))
            raise PlacementError(
                f"placement {placement.describe()!r} names actors this pipeline does not run: "
                f"{', '.join(sorted(unknown))} (it runs: {known})"
            )
