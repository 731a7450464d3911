"""The controller's vocabulary: phases, state, the scratch space of one step, and the shapes of rules.

The rules themselves are in :mod:`duplexer.policies.rules`, their parameters and presets in
:mod:`duplexer.policies.params`, and the state machine that applies them in :mod:`duplexer.policies.controller`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from duplexer.runtime.events import CancelReply, Event, StartReply, StateChanged

if TYPE_CHECKING:
    from duplexer.policies.params import PolicyParams

E = TypeVar("E", bound=Event)


class Phase(enum.StrEnum):
    SILENCE = "Silence"
    USER_SPEAKING = "UserSpeaking"
    USER_PAUSED = "UserPaused"
    BOT_REPLYING = "BotReplying"
    USER_OVERLAP = "UserOverlap"


# ------------------------------------------------------------------ state


@dataclass(frozen=True)
class Reply:
    """The reply in flight, as far as a rule needs it (its whole life: :mod:`duplexer.policies.reply`)."""

    reply_id: str
    user_text: str
    playing: bool = False
    paused: bool = False


@dataclass(frozen=True)
class ControllerState:
    session_id: str
    phase: Phase = Phase.SILENCE
    now_ms: float = 0.0
    turn_id: int = 0
    reply_seq: int = 0
    speaking: bool = False
    speech_start_ms: float | None = None
    silence_since_ms: float | None = None
    turn_segments: frozenset[int] = frozenset()
    awaiting_final: frozenset[int] = frozenset()
    transcript: tuple[tuple[int, str], ...] = ()
    eot_probability: float | None = None
    speculative_calls: int = 0
    reply: Reply | None = None
    stopping_reply_id: str | None = None
    overlap_segment: int | None = None
    overlap_speech_ms: float = 0.0
    """User speech in the current overlap before its open segment (resume_after_ms joins segments)."""
    onset_candidate_ms: float | None = None
    """Since when the VAD has a speech onset candidate (raw probability up, speech not confirmed)."""
    committed_at_ms: float | None = None
    """When the live reply was committed (None: not a committed answer to a user turn)."""

    @property
    def user_text(self) -> str:
        """The turn's final transcript so far, segment by segment."""
        return " ".join(text for _, text in sorted(self.transcript) if text).strip()


# ------------------------------------------------------------------ errors


class ControllerError(Exception):
    """The controller was driven in a way its rules do not allow."""


BUILT_IN_RULES = "duplexer.policies.rules.TRANSITIONS"
"""Where an error about the built-in table tells the reader to look (a plug-in's names its table)."""


class UndeclaredTransition(ControllerError):
    def __init__(self, phase: Phase, kind: type[Event], table: str = BUILT_IN_RULES) -> None:
        super().__init__(
            f"no rule for event {kind.__name__} in state {phase.value}: declare it in "
            f"{table} (as a transition or as ignored)"
        )


class ClockWentBackwards(ControllerError):
    pass


class UndeclaredTarget(ControllerError):
    """A handler moved to a phase its rule does not declare: the table broke its own promise."""

    def __init__(self, phase: Phase, kind: type[Event], target: Phase, table: str = BUILT_IN_RULES) -> None:
        self.phase, self.kind, self.target = phase, kind, target
        super().__init__(
            f"rule for event {kind.__name__} in state {phase.value} moved to {target.value}, "
            f"a target it does not declare in {table}"
        )


# ------------------------------------------------------------------ one step


class Step:
    """Scratch space for one transition: the evolving state and the actions it emits."""

    def __init__(
        self,
        state: ControllerState,
        params: PolicyParams,
        now_ms: float,
        reason: str,
        timers: Mapping[Phase, tuple[Timer, ...]] | None = None,
    ) -> None:
        self.state = state
        self.params = params
        self.now_ms = now_ms
        self.actions: list[Event] = []
        self.reason = reason
        self.timers = timers
        """The running policy's timers, for a handler that fires them (None: the built-in ones)."""

    def set(self, **changes: Any) -> None:
        self.state = replace(self.state, **changes)

    def emit(self, kind: type[E], **values: Any) -> None:
        self.actions.append(
            kind(session_id=self.state.session_id, ts_ms=self.now_ms, turn_id=self.state.turn_id, **values)
        )

    def goto(self, phase: Phase, reason: str) -> None:
        if phase is not self.state.phase:
            self.emit(StateChanged, old_state=self.state.phase.value, new_state=phase.value, reason=reason)
            self.set(phase=phase)

    # -- reply bookkeeping

    def start_reply(self, speculative: bool) -> Reply:
        seq = self.state.reply_seq + 1
        reply = Reply(reply_id=f"t{self.state.turn_id}r{seq}", user_text=self.state.user_text)
        self.set(reply_seq=seq, reply=reply)
        if speculative:
            self.set(speculative_calls=self.state.speculative_calls + 1)
        self.emit(
            StartReply,
            reply_id=reply.reply_id,
            user_text=reply.user_text,
            speculative=speculative,
            prerender=not speculative or self.params.speculative_tts,
        )
        return reply

    def cancel_reply(self, reason: str) -> None:
        reply = self.state.reply
        if reply is not None:
            self.emit(CancelReply, reply_id=reply.reply_id, reason=reason)
            self.set(reply=None)

    def new_turn(self, segment_id: int, speech_start_ms: float) -> None:
        self.set(
            turn_id=self.state.turn_id + 1,
            speaking=True,
            speech_start_ms=speech_start_ms,
            silence_since_ms=None,
            turn_segments=frozenset({segment_id}),
            awaiting_final=frozenset({segment_id}),
            transcript=(),
            eot_probability=None,
            speculative_calls=0,
            overlap_segment=None,
            overlap_speech_ms=0.0,
            committed_at_ms=None,
        )


Handler = Callable[[Step, Any], None]


TIME_EPSILON_MS = 1e-6
"""Float slack for comparing a clock reading with a deadline computed from it."""


@dataclass(frozen=True)
class Rule:
    """A declared (phase, event) pair: the handler and every phase it may lead to."""

    handler: Handler | None
    targets: tuple[Phase, ...] = ()
    note: str = ""

    @property
    def ignored(self) -> bool:
        return self.handler is None


@dataclass(frozen=True)
class Timer:
    """A timing rule of one phase: when it is due for a state, and the transition it makes then."""

    name: str
    due_ms: Callable[[ControllerState, PolicyParams], float | None]
    fire: Callable[[Step], None]
    note: str
