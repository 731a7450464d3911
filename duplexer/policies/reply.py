"""A reply's life, as a pure model: started -> ready -> committed or cancelled -> playing -> done or stopped.

The controller decides when a reply starts, commits or is cancelled; generation, synthesis and
playout each learn of it by their own path over the bus, and the paths do not keep order with each
other: a cancel rides the control lane in one hop while the start reaches the LLM in two (the
prompt rides the data lane). Each actor therefore keeps a :class:`ReplyLedger` and asks it, not its
own flags, whether a reply may still run. A cancel is final: a cancel seen before its start is
remembered (a bounded number per session), and no later event brings the reply back.

Nothing here does I/O; :meth:`ReplyLedger.observe` returns the lifecycle transitions an event
caused, so a test (or a log) can follow each reply's life explicitly.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, replace

from duplexer.runtime.events import (
    CancelReply,
    CommitReply,
    Event,
    PlayoutDone,
    PlayoutStarted,
    PlayoutStopped,
    ReplyReady,
    SpeakText,
    StartReply,
)

RESUMED_AFTER_COMMIT = "resumed_after_commit"
"""CancelReply reason: the user went on speaking just after the commit, so the turn was not over.
The reply is taken back: its user message and its words leave the history."""


class ReplyStage(enum.StrEnum):
    STARTED = "started"
    READY = "ready"
    COMMITTED = "committed"
    CANCELLED = "cancelled"
    PLAYING = "playing"
    DONE = "done"
    STOPPED = "stopped"


ENDED = frozenset({ReplyStage.CANCELLED, ReplyStage.DONE, ReplyStage.STOPPED})
"""Stages a reply never leaves, except that a cancelled reply's playout may still report where it stopped."""

NEXT_STAGES: dict[ReplyStage | None, frozenset[ReplyStage]] = {
    None: frozenset({ReplyStage.STARTED, ReplyStage.COMMITTED, ReplyStage.CANCELLED}),
    ReplyStage.STARTED: frozenset({ReplyStage.READY, ReplyStage.COMMITTED, ReplyStage.CANCELLED}),
    ReplyStage.READY: frozenset({ReplyStage.COMMITTED, ReplyStage.CANCELLED}),
    ReplyStage.COMMITTED: frozenset({ReplyStage.PLAYING, ReplyStage.CANCELLED, ReplyStage.DONE, ReplyStage.STOPPED}),
    ReplyStage.PLAYING: frozenset({ReplyStage.CANCELLED, ReplyStage.DONE, ReplyStage.STOPPED}),
    ReplyStage.CANCELLED: frozenset({ReplyStage.STOPPED}),
    ReplyStage.DONE: frozenset(),
    ReplyStage.STOPPED: frozenset(),
}
"""Every move the model allows (``None``: a reply not seen yet). A start without its reply id known
begins at STARTED; fixed text the bot says (``SpeakText``) begins committed; a cancel may come first."""

MAX_ENDED_REPLIES = 256
"""Ended replies remembered per session, so a late start or prompt of one is recognised; older ones
are forgotten (a session never has more than a few replies in flight)."""

MAX_REPLIES = 1024
"""Replies remembered per session in all, ended or not: an actor that never sees a reply's end (the
TTS sees no playout events) would otherwise keep one entry per turn for the whole session; past
this, the oldest replies seen are forgotten first."""


@dataclass(frozen=True)
class ReplyLife:
    """What is known of one reply: its stage, and the facts that outlive a stage."""

    reply_id: str
    stage: ReplyStage
    committed: bool = False
    cancelled: bool = False


@dataclass(frozen=True)
class ReplyTransition:
    """A lifecycle event: one reply moved from one stage to the next (``old`` None: first seen)."""

    reply_id: str
    old: ReplyStage | None
    new: ReplyStage


class ReplyLedger:
    """The lives of one session's replies, advanced by the bus events that name them."""

    def __init__(self, max_ended: int = MAX_ENDED_REPLIES, max_replies: int = MAX_REPLIES) -> None:
        self.max_ended = max_ended
        self.max_replies = max(max_replies, max_ended)
        self._lives: dict[str, ReplyLife] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, reply_id: str) -> bool:
        return reply_id in self._lives

    def stage(self, reply_id: str) -> ReplyStage | None:
        life = self._lives.get(reply_id)
        return None if life is None else life.stage

    def cancelled(self, reply_id: str) -> bool:
        """True once a cancel for the reply was seen, before or after its start."""
        life = self._lives.get(reply_id)
        return life is not None and life.cancelled

    def committed(self, reply_id: str) -> bool:
        life = self._lives.get(reply_id)
        return life is not None and life.committed

    def may_run(self, reply_id: str) -> bool:
        """Whether work for the reply (generation, synthesis, playout) may still start."""
        return not self.cancelled(reply_id)

    def observe(self, event: Event) -> tuple[ReplyTransition, ...]:
        """Advance the reply the event names; returns the transitions it caused (none for a stale event)."""
        reply_id = getattr(event, "reply_id", None)
        if not isinstance(reply_id, str):
            return ()
        life = self._lives.get(reply_id)
        if isinstance(event, StartReply):
            return self._move(life, reply_id, ReplyStage.STARTED)
        if isinstance(event, SpeakText):
            return self._move(life, reply_id, ReplyStage.COMMITTED, committed=True)
        if isinstance(event, ReplyReady):
            return self._move(life, reply_id, ReplyStage.READY)
        if isinstance(event, CommitReply):
            return self._move(life, reply_id, ReplyStage.COMMITTED, committed=True)
        if isinstance(event, CancelReply):
            return self._move(life, reply_id, ReplyStage.CANCELLED, cancelled=True)
        if isinstance(event, PlayoutStarted):
            return self._move(life, reply_id, ReplyStage.PLAYING)
        if isinstance(event, PlayoutDone):
            return self._move(life, reply_id, ReplyStage.DONE)
        if isinstance(event, PlayoutStopped):
            return self._move(life, reply_id, ReplyStage.STOPPED)
        return ()

    def _move(
        self, life: ReplyLife | None, reply_id: str, new: ReplyStage, **facts: object
    ) -> tuple[ReplyTransition, ...]:
        old = None if life is None else life.stage
        if new not in NEXT_STAGES[old]:
            if life is not None and new is ReplyStage.CANCELLED and not life.cancelled:
                self._lives[reply_id] = replace(life, cancelled=True)  # too late to stop it, but never again
            return ()
        if life is None:
            life = ReplyLife(reply_id, new)
            while len(self._lives) >= self.max_replies:  # dicts keep insertion order: oldest seen first
                forgotten = next(iter(self._lives))
                self._lives.pop(forgotten)
                self._ended.pop(forgotten, None)
        self._lives[reply_id] = replace(life, stage=new, **facts)  # type: ignore[arg-type]
        if new in ENDED:
            self._remember_ended(reply_id)
        return (ReplyTransition(reply_id, old, new),)

    def _remember_ended(self, reply_id: str) -> None:
        self._ended[reply_id] = None
        self._ended.move_to_end(reply_id)
        while len(self._ended) > self.max_ended:
            forgotten, _ = self._ended.popitem(last=False)
            self._lives.pop(forgotten, None)
