"""The turn-taking controller: a pure state machine, ``(state, event, now_ms) -> (state, actions)``.

Theory of operation
-------------------
Every rule that decides when the bot speaks, speculates or yields is in the
transition table (:data:`TRANSITIONS`) and the handlers it names
(:mod:`duplexer.policies.rules`), reading the parameters (:class:`PolicyParams`,
:mod:`duplexer.policies.params`); this module applies them. Nothing here does
I/O or reads a clock; the caller passes ``now_ms``, so the simulator, the server
and the robot run the same policy. The vocabulary the rules are written in
(phases, state, the shapes of a rule and a timer) is :mod:`duplexer.policies.state`.

Phases::

    Silence --speech--> UserSpeaking --silence >= pause_ms--> UserPaused
    UserPaused --speech--> UserSpeaking           (speculative reply cancelled)
    UserPaused --silence >= end of turn--> BotReplying   (latest reply committed)
    BotReplying --speech--> UserOverlap --speech >= min_barge_in_ms--> UserSpeaking (barge-in)
    UserOverlap --speech ends sooner--> BotReplying  (a backchannel: the bot goes on)
    BotReplying --playout done--> Silence

Speculation: entering UserPaused (with the pause's final transcript in hand)
starts a speculative reply on the transcript so far. If the user resumes it is
cancelled. At end of turn the latest reply is committed if its input matches
the final transcript; otherwise it is cancelled and a fresh reply starts.
Every reply ends committed or cancelled.

A policy plug-in brings its own table (:class:`PolicyTable`, named by its parameters' class:
:func:`table_of`), held to the same checks when it is built and enforced here the same way.

Every (phase, event type) pair is declared in :data:`TRANSITIONS`, either with
the handler for that phase and the phases it may lead to, or as ignored. An
undeclared pair raises :class:`UndeclaredTransition`; a handler that moves to a
phase its rule does not declare raises :class:`UndeclaredTarget` (strict, as in
tests and the simulator) or, in a live session, becomes an :class:`ErrorEvent`
and a safe reset to Silence. Every timing rule is a :class:`Timer` declared per
phase in :data:`TIMERS`: the tick handler fires it and :func:`next_deadline_ms`
asks it when it is due, so the two never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from duplexer.policies.params import (
    CLASSIC_POLICY,
    DEFAULT_PRESET,
    LIVE_CALL_POLICY,
    POLICY_PRESETS,
    PRESET_ALIASES,
    PolicyParams,
    preset,
)
from duplexer.policies.rules import BUILT_IN_TABLE, TIMERS, TRANSITIONS
from duplexer.policies.state import (
    BUILT_IN_RULES,
    TIME_EPSILON_MS,
    ClockWentBackwards,
    ControllerError,
    ControllerState,
    Phase,
    Reply,
    Rule,
    Step,
    Timer,
    UndeclaredTarget,
    UndeclaredTransition,
)
from duplexer.policies.table import CONTROLLER_INPUTS, PolicyTable, PolicyTableError
from duplexer.runtime.events import ErrorEvent, Event, StopPlayout

__all__ = [
    "BUILT_IN_TABLE",
    "CLASSIC_POLICY",
    "CONTROLLER_INPUTS",
    "DEFAULT_PRESET",
    "LIVE_CALL_POLICY",
    "POLICY_PRESETS",
    "PRESET_ALIASES",
    "TIMERS",
    "TIME_EPSILON_MS",
    "TRANSITIONS",
    "ClockWentBackwards",
    "Controller",
    "ControllerError",
    "ControllerState",
    "Phase",
    "PolicyParams",
    "PolicyTable",
    "PolicyTableError",
    "Reply",
    "Rule",
    "Timer",
    "UndeclaredTarget",
    "UndeclaredTransition",
    "next_deadline_ms",
    "preset",
    "rule_for",
    "safe_reset",
    "step",
    "table_of",
]


def table_of(params: PolicyParams) -> PolicyTable:
    """The rules ``params`` are read by: their class's table (a plug-in's), else the built-in one."""
    return type(params).table or BUILT_IN_TABLE


def rule_for(phase: Phase, kind: type[Event], table: PolicyTable = BUILT_IN_TABLE) -> Rule:
    """The declared rule for a pair; an undeclared pair is an error, never silently ignored."""
    rule = table.rule_for(phase, kind)
    if rule is None:
        raise UndeclaredTransition(phase, kind, _where(table))
    return rule


def _where(table: PolicyTable) -> str:
    return BUILT_IN_RULES if table is BUILT_IN_TABLE else f"policy table {table.name!r}"


def step(
    state: ControllerState, event: Event, now_ms: float, params: PolicyParams, strict: bool = True
) -> tuple[ControllerState, list[Event]]:
    """Apply one event at ``now_ms``; return the new state and the actions to carry out.

    A handler that moves to a phase its rule does not declare raises :class:`UndeclaredTarget` when
    ``strict`` (tests, the simulator); otherwise (a live session) the step becomes an error event and
    a safe reset to Silence instead, so a hole in the table never crashes a call.
    """
    if now_ms < state.now_ms:
        raise ClockWentBackwards(f"controller time went backwards: {now_ms} ms after {state.now_ms} ms ({event.kind})")
    table = table_of(params)
    rule = rule_for(state.phase, type(event), table)
    state = replace(state, now_ms=now_ms)
    if rule.handler is None:
        return state, []
    work = Step(state, params, now_ms, event.kind, table.timers)
    rule.handler(work, event)
    target = work.state.phase
    if target is not state.phase and target not in rule.targets:
        violation = UndeclaredTarget(state.phase, type(event), target, _where(table))
        if strict:
            raise violation
        return safe_reset(state, params, now_ms, str(violation))
    return work.state, work.actions


def safe_reset(
    state: ControllerState, params: PolicyParams, now_ms: float, why: str
) -> tuple[ControllerState, list[Event]]:
    """Back to Silence from ``state``: an error event, the live reply's playout stopped and the reply
    cancelled, every timer and turn fact cleared (turn and reply numbering go on)."""
    work = Step(state, params, now_ms, "reset", table_of(params).timers)
    work.emit(ErrorEvent, source="controller", message=f"{why}; reset to Silence")
    reply = state.reply
    if reply is not None:
        work.emit(StopPlayout, reply_id=reply.reply_id)
        work.cancel_reply("controller_reset")
    work.goto(Phase.SILENCE, "reset after a rule violation")
    work.set(
        speaking=False,
        speech_start_ms=None,
        silence_since_ms=None,
        turn_segments=frozenset(),
        awaiting_final=frozenset(),
        transcript=(),
        eot_probability=None,
        # A playing reply's stop truncates history; otherwise a barge-in stop still in flight keeps its cut.
        stopping_reply_id=reply.reply_id if reply is not None and reply.playing else state.stopping_reply_id,
        overlap_segment=None,
        overlap_speech_ms=0.0,
    )
    return work.state, work.actions


def next_deadline_ms(state: ControllerState, params: PolicyParams) -> float | None:
    """When the next timer of the phase comes due (:data:`TIMERS`), so a driver can tick exactly then."""
    timers = table_of(params).timers
    due = [d for timer in timers.get(state.phase, ()) if (d := timer.due_ms(state, params)) is not None]
    return min(due, default=None)


@dataclass
class Controller:
    """Holds a :class:`ControllerState` and applies events to it; still pure, no I/O.

    ``strict``: a rule that moves to a target it does not declare raises (tests, the simulator);
    off, it becomes an error event and a safe reset (a live session).
    """

    session_id: str
    params: PolicyParams = field(default_factory=PolicyParams)
    strict: bool = True
    state: ControllerState = field(init=False)

    def __post_init__(self) -> None:
        self.state = ControllerState(session_id=self.session_id)

    def handle(self, event: Event, now_ms: float) -> list[Event]:
        self.state, actions = step(self.state, event, now_ms, self.params, self.strict)
        return actions

    @property
    def phase(self) -> Phase:
        return self.state.phase

    def next_deadline_ms(self) -> float | None:
        return next_deadline_ms(self.state, self.params)
