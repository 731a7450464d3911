"""The turn-taking controller: a pure state machine, ``(state, event, now_ms) -> (state, actions)``.

Theory of operation
-------------------
Every rule that decides when the bot speaks, speculates or yields lives in this
file: the parameters (:class:`PolicyParams`), the transition table
(:data:`TRANSITIONS`) and the handlers it names. Nothing here does I/O or
reads a clock; the caller passes ``now_ms``, so the simulator, the server and
the robot run the same policy. The vocabulary the rules are written in (phases,
state, the shapes of a rule and a timer) is :mod:`duplexer.policies.state`.

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

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from duplexer.policies.state import (
    TIME_EPSILON_MS,
    ClockWentBackwards,
    ControllerError,
    ControllerState,
    Handler,
    Phase,
    Reply,
    Rule,
    Step,
    Timer,
    UndeclaredTarget,
    UndeclaredTransition,
)
from duplexer.runtime.events import (
    AsrFinal,
    AsrPartial,
    CancelReply,
    CommitReply,
    EndOfTurnProbability,
    ErrorEvent,
    Event,
    PausePlayout,
    PlayoutDone,
    PlayoutStarted,
    PlayoutStopped,
    ResumePlayout,
    SpeakRequest,
    SpeakText,
    StartPlayout,
    StopPlayout,
    Tick,
    TruncateHistory,
    VadSpeechStart,
    VadSpeechStop,
)

__all__ = [
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
]

# ------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class PolicyParams:
    """Every turn-taking threshold, in one place. The paper gives none, so all are configuration.

    The defaults are the live-call policy, the one every command runs unless a scenario or
    ``--policy NAME`` chooses another (:data:`POLICY_PRESETS`): the simulator scores what a live
    call does."""

    pause_ms: float = 150.0
    """Silence after speech that enters UserPaused and starts a speculative reply. The VAD's stop and
    the final transcript come ~150-250 ms after the user stops, so a longer pause only delays the
    speculative reply."""
    end_of_turn_ms: float = 700.0
    """Silence that ends the user's turn and commits a reply, when no detector speaks."""
    end_of_turn_min_ms: float = 625.0
    """Shortest end-of-turn silence a confident end-of-turn detector (p=1) may ask for. With the
    embedded CPU models a speculative reply's first audio is ready ~650-800 ms after the user stops,
    so committing sooner would play nothing sooner and only leave the user less time to go on (and
    speculation less time to save)."""
    end_of_turn_max_ms: float = 1500.0
    """Longest end-of-turn silence a doubtful end-of-turn detector (p=0) may ask for."""
    min_barge_in_ms: float = 500.0
    """User speech during bot speech needed to interrupt; shorter speech is a backchannel."""
    backchannel_pause_playout: bool = True
    """Hold bot audio while overlapping speech is still shorter than min_barge_in_ms: the bot falls
    silent the moment user speech is heard (a fast audible stop) and stops for good only after
    min_barge_in_ms of it."""
    resume_after_ms: float = 400.0
    """With backchannel_pause_playout: held bot audio resumes only after this much silence once a short
    overlap ends, longer than the pause at a comma. Speech within it continues the overlap, and all of
    its speech counts towards min_barge_in_ms, so an interruption with a pause in it ("Wait, | tell me
    ...") is not talked into."""
    min_speech_probability: float = 0.5
    """VAD speech onsets below this probability are ignored."""
    speculation: bool = True
    """Start replies during user pauses (off: replies start only at end of turn)."""
    max_speculative_calls: int = 3
    """Speculative replies allowed per user turn."""
    speculative_tts: bool = True
    """Synthesize a speculative reply's audio before it is committed, so a committed reply plays at once
    (off: TTS waits for the commit, saving work on discarded replies)."""
    asr_final_timeout_ms: float = 2000.0
    """How long past end of turn to wait for a late final transcript before replying anyway."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and value < 0:
                raise ValueError(f"policy parameter {f.name} must be >= 0, got {value}")
        if not 0 < self.pause_ms <= self.end_of_turn_ms:
            raise ValueError(
                f"policy parameter pause_ms ({self.pause_ms}) must be > 0 and <= end_of_turn_ms ({self.end_of_turn_ms})"
            )
        if not self.end_of_turn_min_ms <= self.end_of_turn_ms <= self.end_of_turn_max_ms:
            raise ValueError(
                "policy parameters need end_of_turn_min_ms <= end_of_turn_ms <= end_of_turn_max_ms, "
                f"got {self.end_of_turn_min_ms}, {self.end_of_turn_ms}, {self.end_of_turn_max_ms} "
                "(a shorter end_of_turn_ms needs end_of_turn_min_ms set no higher)"
            )
        if not 0.0 <= self.min_speech_probability <= 1.0:
            raise ValueError("policy parameter min_speech_probability must be within [0, 1]")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def with_overrides(self, overrides: Mapping[str, object]) -> PolicyParams:
        """These parameters with ``overrides`` applied; a ValueError (one line, naming the field) refuses
        an unknown name, a value of the wrong type (a bool for a number, a number for a bool), a
        non-finite or non-integral number where one does not fit, or values the policy refuses."""
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for name, value in overrides.items():
            if name not in known:
                raise ValueError(f"unknown policy parameter {name!r} (known: {', '.join(sorted(known))})")
            kind = str(known[name].type)  # "bool", "int" or "float" (annotations are strings here)
            if kind == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"policy parameter {name} must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"policy parameter {name} must be a number, got {value!r}")
            elif not math.isfinite(value):
                raise ValueError(f"policy parameter {name} must be finite, got {value!r}")
            elif kind == "int":
                if value != round(value):
                    raise ValueError(f"policy parameter {name} must be an integer, got {value!r}")
                value = int(value)
            changes[name] = value
        return replace(self, **changes)

    def effective_end_of_turn_ms(self, probability: float | None) -> float:
        """End-of-turn silence for a detector's probability: p=0 -> max, p=0.5 -> default, p=1 -> min."""
        if probability is None:
            return self.end_of_turn_ms
        p = min(1.0, max(0.0, probability))
        if p >= 0.5:
            return self.end_of_turn_ms + (p - 0.5) * 2.0 * (self.end_of_turn_min_ms - self.end_of_turn_ms)
        return self.end_of_turn_max_ms + p * 2.0 * (self.end_of_turn_ms - self.end_of_turn_max_ms)


LIVE_CALL_POLICY = PolicyParams()
"""The live-call policy: the defaults themselves (the name stays for code that asks for it)."""

CLASSIC_POLICY = PolicyParams(
    pause_ms=200.0, end_of_turn_min_ms=300.0, backchannel_pause_playout=False, resume_after_ms=0.0
)
"""The first defaults, before the live-call values became them: bot audio plays on through
overlapping speech until min_barge_in_ms of it stops the reply, speculation waits 200 ms of silence,
and a confident end-of-turn detector may commit after 300 ms. For comparing with earlier figures."""

DEFAULT_PRESET = "live"
"""The preset every command runs unless ``--policy NAME`` chooses another: :class:`PolicyParams`'s
own defaults."""

POLICY_PRESETS: dict[str, PolicyParams] = {DEFAULT_PRESET: LIVE_CALL_POLICY, "classic": CLASSIC_POLICY}
"""Named parameter sets, selected with ``--policy NAME`` on every command that runs a policy."""

PRESET_ALIASES: dict[str, str] = {"default": DEFAULT_PRESET}
"""Other names a preset answers to: ``default`` is whatever the default is."""


def preset(name: str) -> PolicyParams:
    """The preset called ``name``; a ValueError listing the names when there is none."""
    try:
        return POLICY_PRESETS[PRESET_ALIASES.get(name, name)]
    except KeyError:
        known = ", ".join([*POLICY_PRESETS, *PRESET_ALIASES])
        raise ValueError(f"unknown policy preset {name!r} (known: {known})") from None


# ------------------------------------------------------------------ handlers


# -- speech and transcripts


def _speech_starts_turn(step: Step, ev: VadSpeechStart) -> None:
    if ev.probability < step.params.min_speech_probability:
        return
    step.new_turn(ev.segment_id, ev.speech_start_ms)
    step.goto(Phase.USER_SPEAKING, "speech")


def _speech_joins_turn(step: Step, ev: VadSpeechStart) -> bool:
    """A new segment of the same turn; False for a doubtful onset, which is ignored."""
    if ev.probability < step.params.min_speech_probability:
        return False
    s = step.state
    step.set(
        speaking=True,
        speech_start_ms=ev.speech_start_ms,
        silence_since_ms=None,
        turn_segments=s.turn_segments | {ev.segment_id},
        awaiting_final=s.awaiting_final | {ev.segment_id},
    )
    return True


def _speech_continues(step: Step, ev: VadSpeechStart) -> None:
    _speech_joins_turn(step, ev)


def _user_resumes(step: Step, ev: VadSpeechStart) -> None:
    if _speech_joins_turn(step, ev):
        step.cancel_reply("user_resumed")
        step.goto(Phase.USER_SPEAKING, "user resumed")


def _speech_stops(step: Step, ev: VadSpeechStop) -> None:
    if ev.segment_id in step.state.turn_segments:
        step.set(speaking=False, silence_since_ms=ev.speech_end_ms)


def _final_transcript(step: Step, ev: AsrFinal) -> bool:
    """Record a segment's final transcript; False when it is not of this turn."""
    s = step.state
    if ev.segment_id not in s.turn_segments:
        return False
    kept = tuple(item for item in s.transcript if item[0] != ev.segment_id)
    step.set(
        transcript=(*kept, (ev.segment_id, ev.text.strip())),
        awaiting_final=s.awaiting_final - {ev.segment_id},
    )
    return True


def _record_final(step: Step, ev: AsrFinal) -> None:
    _final_transcript(step, ev)


def _final_in_pause(step: Step, ev: AsrFinal) -> None:
    if _final_transcript(step, ev):
        _maybe_speculate(step)


def _eot_probability(step: Step, ev: EndOfTurnProbability) -> None:
    step.set(eot_probability=ev.probability)


def _maybe_speculate(step: Step) -> None:
    """In UserPaused with the transcript final: speculate on it unless a reply already has it."""
    s, params = step.state, step.params
    if not params.speculation or s.awaiting_final or not s.user_text:
        return
    if s.reply is not None and s.reply.user_text == s.user_text:
        return
    if s.speculative_calls >= params.max_speculative_calls:
        return
    step.cancel_reply("transcript_changed")
    step.start_reply(speculative=True)


# -- timers: when each is due (None: not running), and what it does when it fires


def _pause_due(s: ControllerState, params: PolicyParams) -> float | None:
    if s.speaking or s.silence_since_ms is None:
        return None
    return s.silence_since_ms + params.pause_ms


def _end_of_turn_due(s: ControllerState, params: PolicyParams) -> float | None:
    if s.speaking or s.silence_since_ms is None:
        return None
    eot_ms = params.effective_end_of_turn_ms(s.eot_probability)
    if s.awaiting_final:  # the final transcript decides the reply: wait for it, within bounds
        eot_ms += params.asr_final_timeout_ms
    return s.silence_since_ms + eot_ms


def _barge_in_due(s: ControllerState, params: PolicyParams) -> float | None:
    if not s.speaking or s.speech_start_ms is None:
        return None
    return s.speech_start_ms + params.min_barge_in_ms - s.overlap_speech_ms


def _resume_due(s: ControllerState, params: PolicyParams) -> float | None:
    if s.speaking or s.silence_since_ms is None:
        return None
    return s.silence_since_ms + params.resume_after_ms


def _pause_begins(step: Step) -> None:
    step.goto(Phase.USER_PAUSED, "pause")
    _maybe_speculate(step)
    _fire_due_timer(step)  # the end of turn may be due at the same tick


def _end_of_turn(step: Step) -> None:
    s = step.state
    text = s.user_text
    if not text:
        step.cancel_reply("no_transcript")
        step.goto(Phase.SILENCE, "end of turn without words")
        return
    reply = s.reply
    if reply is None or reply.user_text != text:
        step.cancel_reply("stale_input")
        reply = step.start_reply(speculative=False)
    step.set(awaiting_final=frozenset())
    step.emit(CommitReply, reply_id=reply.reply_id, user_text=text)
    step.emit(StartPlayout, reply_id=reply.reply_id)
    step.goto(Phase.BOT_REPLYING, "end of turn")


def _barge_in(step: Step) -> None:
    s = step.state
    reply = s.reply
    assert reply is not None and s.overlap_segment is not None
    step.emit(StopPlayout, reply_id=reply.reply_id)
    step.emit(CancelReply, reply_id=reply.reply_id, reason="barge_in")
    step.set(reply=None, stopping_reply_id=reply.reply_id)
    speaking, silence_since = s.speaking, s.silence_since_ms
    step.new_turn(s.overlap_segment, s.speech_start_ms or step.now_ms)
    step.set(speaking=speaking, silence_since_ms=silence_since)
    step.goto(Phase.USER_SPEAKING, "barge-in")


def _backchannel_over(step: Step) -> None:
    """A short overlap ended for good: held bot audio resumes."""
    reply = step.state.reply
    if reply is not None and reply.paused:
        step.emit(ResumePlayout, reply_id=reply.reply_id)
        step.set(reply=replace(reply, paused=False))
    step.set(overlap_segment=None, speech_start_ms=None, silence_since_ms=None, overlap_speech_ms=0.0)
    step.goto(Phase.BOT_REPLYING, "backchannel")


_BARGE_IN = Timer("barge_in", _barge_in_due, _barge_in, "overlap speech >= min_barge_in_ms")
_RESUME = Timer("resume", _resume_due, _backchannel_over, "silence >= resume_after_ms after a short overlap")


def _due(step: Step, timer: Timer) -> bool:
    due_ms = timer.due_ms(step.state, step.params)
    return due_ms is not None and step.now_ms + TIME_EPSILON_MS >= due_ms


def _fire_due_timer(step: Step) -> None:
    """Fire the current phase's timer that is due, if any (they are declared mutually exclusive)."""
    for timer in TIMERS.get(step.state.phase, ()):
        if _due(step, timer):
            timer.fire(step)
            return


def _tick(step: Step, ev: Tick) -> None:
    _fire_due_timer(step)


def _check_barge_in(step: Step) -> bool:
    """Barge in now if the overlap's speech has reached min_barge_in_ms."""
    if _due(step, _BARGE_IN):
        _barge_in(step)
        return True
    return False


# -- the bot's speech


def _bot_speaks_first(step: Step, ev: SpeakRequest) -> None:
    step.set(reply=Reply(reply_id=ev.reply_id, user_text=""))
    step.emit(SpeakText, reply_id=ev.reply_id, text=ev.text)
    step.emit(StartPlayout, reply_id=ev.reply_id)
    step.goto(Phase.BOT_REPLYING, "bot speaks first")


def _is_live(step: Step, reply_id: str) -> bool:
    reply = step.state.reply
    return reply is not None and reply.reply_id == reply_id


def _playout_started(step: Step, ev: PlayoutStarted) -> None:
    reply = step.state.reply
    if reply is not None and reply.reply_id == ev.reply_id:
        step.set(reply=replace(reply, playing=True))


def _playout_started_in_overlap(step: Step, ev: PlayoutStarted) -> None:
    reply = step.state.reply
    if reply is not None and reply.reply_id == ev.reply_id:
        hold = step.params.backchannel_pause_playout
        step.set(reply=replace(reply, playing=True, paused=hold or reply.paused))
        if hold:
            step.emit(PausePlayout, reply_id=reply.reply_id)


def _stop_reached(step: Step, reply_id: str) -> bool:
    """The end of a reply the controller stopped: it needs nothing more than forgetting."""
    if step.state.stopping_reply_id != reply_id:
        return False
    step.set(stopping_reply_id=None)
    return True


def _late_playout_done(step: Step, ev: PlayoutDone) -> None:
    """Outside the bot's turn: the end of a stopped reply, or audio of the live speculative reply played
    before its commit (no playout does that today): that reply is spent, so it is cancelled and the
    turn goes on; the end of turn starts a fresh one."""
    if not _stop_reached(step, ev.reply_id) and _is_live(step, ev.reply_id):
        step.cancel_reply("played_before_commit")


def _late_playout_stopped(step: Step, ev: PlayoutStopped) -> None:
    """Outside the bot's turn: a stopped reply's history keeps what was played; an uncommitted live
    reply that played is spent (see :func:`_late_playout_done`)."""
    if _stop_reached(step, ev.reply_id):
        step.emit(TruncateHistory, reply_id=ev.reply_id, played_ms=ev.played_ms)
    elif _is_live(step, ev.reply_id):
        step.cancel_reply("played_before_commit")


def _reply_played(step: Step, ev: PlayoutDone) -> None:
    if not _stop_reached(step, ev.reply_id) and _is_live(step, ev.reply_id):
        step.set(reply=None)
        step.goto(Phase.SILENCE, "reply played")


def _playout_ended_early(step: Step, ev: PlayoutStopped) -> None:
    if _stop_reached(step, ev.reply_id):
        step.emit(TruncateHistory, reply_id=ev.reply_id, played_ms=ev.played_ms)
    elif _is_live(step, ev.reply_id):  # an output failure: keep what was heard and yield
        step.emit(TruncateHistory, reply_id=ev.reply_id, played_ms=ev.played_ms)
        step.set(reply=None)
        step.goto(Phase.SILENCE, "playout stopped")


def _floor_to_user(step: Step, reason: str) -> None:
    """The bot's audio ended during an overlap: a user still talking holds the floor, else silence."""
    s = step.state
    step.set(reply=None)
    if not s.speaking:  # held for a short overlap, now over
        step.set(overlap_segment=None, speech_start_ms=None, overlap_speech_ms=0.0)
        step.goto(Phase.SILENCE, reason)
    else:
        assert s.overlap_segment is not None
        step.new_turn(s.overlap_segment, s.speech_start_ms or step.now_ms)
        step.goto(Phase.USER_SPEAKING, f"{reason} during user speech")


def _reply_played_in_overlap(step: Step, ev: PlayoutDone) -> None:
    if not _stop_reached(step, ev.reply_id) and _is_live(step, ev.reply_id):
        _floor_to_user(step, "reply played")


def _playout_ended_in_overlap(step: Step, ev: PlayoutStopped) -> None:
    if _stop_reached(step, ev.reply_id):
        step.emit(TruncateHistory, reply_id=ev.reply_id, played_ms=ev.played_ms)
    elif _is_live(step, ev.reply_id):
        step.emit(TruncateHistory, reply_id=ev.reply_id, played_ms=ev.played_ms)
        _floor_to_user(step, "playout stopped")


# -- user speech over the bot


def _overlap_begins(step: Step, ev: VadSpeechStart) -> None:
    if ev.probability < step.params.min_speech_probability:
        return
    step.set(speaking=True, speech_start_ms=ev.speech_start_ms, overlap_segment=ev.segment_id)
    reply = step.state.reply
    if step.params.backchannel_pause_playout and reply is not None and reply.playing:
        step.emit(PausePlayout, reply_id=reply.reply_id)
        step.set(reply=replace(reply, paused=True))
    step.goto(Phase.USER_OVERLAP, "user speech over bot")
    _check_barge_in(step)


def _overlap_continues(step: Step, ev: VadSpeechStart) -> None:
    """Speech again while bot audio is held after a short overlap: the same overlap goes on."""
    s = step.state
    if s.speaking or ev.probability < step.params.min_speech_probability:
        return
    step.set(speaking=True, speech_start_ms=ev.speech_start_ms, silence_since_ms=None, overlap_segment=ev.segment_id)
    _check_barge_in(step)


def _overlap_ends(step: Step, ev: VadSpeechStop) -> None:
    s = step.state
    if ev.segment_id != s.overlap_segment or not s.speaking:
        return
    onset = s.speech_start_ms if s.speech_start_ms is not None else ev.speech_end_ms
    barge_in_ms = _barge_in_due(s, step.params)  # the barge-in timer's own deadline, met by the speech's end
    if barge_in_ms is not None and ev.speech_end_ms + TIME_EPSILON_MS >= barge_in_ms:
        step.set(speaking=False, silence_since_ms=ev.speech_end_ms)
        _barge_in(step)  # the speech, up to its end, was long enough
        return
    step.set(
        speaking=False,
        silence_since_ms=ev.speech_end_ms,
        overlap_speech_ms=s.overlap_speech_ms + max(0.0, ev.speech_end_ms - onset),
        speech_start_ms=None,
    )
    reply = step.state.reply
    held = reply is not None and reply.paused
    if not held or _due(step, _RESUME):
        _backchannel_over(step)


# ------------------------------------------------------------------ the table


S, US, UP, BR, UO = (
    Phase.SILENCE,
    Phase.USER_SPEAKING,
    Phase.USER_PAUSED,
    Phase.BOT_REPLYING,
    Phase.USER_OVERLAP,
)

TIMERS: dict[Phase, tuple[Timer, ...]] = {
    US: (Timer("pause", _pause_due, _pause_begins, "silence >= pause_ms: pause, speculate"),),
    UP: (
        Timer(
            "end_of_turn",
            _end_of_turn_due,
            _end_of_turn,
            "silence >= the end-of-turn wait (+ asr_final_timeout_ms while a final is due): commit or start fresh",
        ),
    ),
    UO: (_BARGE_IN, _RESUME),
}
"""Every timing rule, by the phase it runs in. The tick handler fires the one that is due and
:func:`next_deadline_ms` asks them when the next is due: one definition, so a tick at a deadline
always acts, and the ticker never needs to retry. A phase's timers are never due together
(barge-in runs while the user speaks, the others while silent)."""


def _ignore(note: str) -> Rule:
    return Rule(None, (), note)


def _rule(handler: Handler, *targets: Phase, note: str = "") -> Rule:
    return Rule(handler, targets, note or (handler.__doc__ or handler.__name__).strip("_ ").replace("_", " "))


CONTROLLER_INPUTS: tuple[type[Event], ...] = (
    VadSpeechStart,
    VadSpeechStop,
    AsrPartial,
    AsrFinal,
    EndOfTurnProbability,
    PlayoutStarted,
    PlayoutDone,
    PlayoutStopped,
    SpeakRequest,
    Tick,
)
"""Every event type the controller consumes. Playout progress is not one: no rule needs it, and on
Ray it would cross to the controller's host five times a second for nothing. Nor is ReplyReady: no
rule waits for audio to be ready (playout starts a committed reply's audio when it has some)."""

_STALE = "stale: belongs to a reply that is no longer current"
_NOT_NOW = "the bot never starts talking over the user or itself"
_LATE_DONE = "late done of a stopped reply; the live one played uncommitted: cancel it"
_LATE_STOP = "truncate a stopped reply's history; the live one played uncommitted: cancel it"

TRANSITIONS: dict[Phase, dict[type[Event], Rule]] = {
    S: {
        VadSpeechStart: _rule(_speech_starts_turn, US, note="user starts a new turn"),
        VadSpeechStop: _ignore("no speech was open"),
        AsrPartial: _ignore("text of speech outside any turn (noise, backchannel)"),
        AsrFinal: _ignore("text of speech outside any turn (noise, backchannel)"),
        EndOfTurnProbability: _ignore("no turn to end"),
        PlayoutStarted: _ignore(_STALE),
        PlayoutDone: _rule(_late_playout_done, note=_LATE_DONE),
        PlayoutStopped: _rule(_late_playout_stopped, note=_LATE_STOP),
        SpeakRequest: _rule(_bot_speaks_first, BR, note="the bot speaks first (a greeting)"),
        Tick: _ignore("nothing is timed in silence"),
    },
    US: {
        VadSpeechStart: _rule(_speech_continues, note="speech resumes after a short gap"),
        VadSpeechStop: _rule(_speech_stops, note="silence timing starts"),
        AsrPartial: _ignore("partials are for display; the final decides"),
        AsrFinal: _rule(_record_final, note="record the segment's transcript"),
        EndOfTurnProbability: _rule(_eot_probability, note="adjusts the end-of-turn silence"),
        PlayoutStarted: _ignore(_STALE),
        PlayoutDone: _rule(_late_playout_done, note=_LATE_DONE),
        PlayoutStopped: _rule(_late_playout_stopped, note=_LATE_STOP),
        SpeakRequest: _ignore(_NOT_NOW),
        Tick: _rule(_tick, UP, BR, S, note="timers: pause (then end of turn, if also due)"),
    },
    UP: {
        VadSpeechStart: _rule(_user_resumes, US, note="user resumes: cancel speculation"),
        VadSpeechStop: _rule(_speech_stops, note="silence timing starts"),
        AsrPartial: _ignore("partials are for display; the final decides"),
        AsrFinal: _rule(_final_in_pause, note="record the transcript; speculate on it"),
        EndOfTurnProbability: _rule(_eot_probability, note="adjusts the end-of-turn silence"),
        PlayoutStarted: _ignore(_STALE),
        PlayoutDone: _rule(_late_playout_done, note=_LATE_DONE),
        PlayoutStopped: _rule(_late_playout_stopped, note=_LATE_STOP),
        SpeakRequest: _ignore(_NOT_NOW),
        Tick: _rule(_tick, BR, S, note="timer: end of turn, commit latest reply or start fresh"),
    },
    BR: {
        VadSpeechStart: _rule(_overlap_begins, UO, US, note="user speech over the bot"),
        VadSpeechStop: _ignore("no user speech was open"),
        AsrPartial: _ignore("text of a backchannel or noise"),
        AsrFinal: _ignore("text of a backchannel or noise"),
        EndOfTurnProbability: _ignore("the user's turn has ended"),
        PlayoutStarted: _rule(_playout_started, note="bot audio is out"),
        PlayoutDone: _rule(_reply_played, S, note="reply played to its end"),
        PlayoutStopped: _rule(_playout_ended_early, S, note="playout ended early: keep what was heard"),
        SpeakRequest: _ignore(_NOT_NOW),
        Tick: _ignore("nothing is timed while the bot speaks alone"),
    },
    UO: {
        VadSpeechStart: _rule(_overlap_continues, US, note="speech again while held: the overlap goes on"),
        VadSpeechStop: _rule(_overlap_ends, BR, US, note="short overlap: a backchannel, after resume_after_ms"),
        AsrPartial: _ignore("the overlap's length decides, not its text"),
        AsrFinal: _ignore("the overlap's length decides, not its text"),
        EndOfTurnProbability: _ignore("the user's turn has ended"),
        PlayoutStarted: _rule(_playout_started_in_overlap, note="bot audio is out (held if backchannel pause)"),
        PlayoutDone: _rule(_reply_played_in_overlap, US, S, note="bot finished: the user holds the floor"),
        PlayoutStopped: _rule(_playout_ended_in_overlap, US, S, note="playout ended early: the user holds the floor"),
        SpeakRequest: _ignore(_NOT_NOW),
        Tick: _rule(_tick, US, BR, note="timers: barge-in at min_barge_in_ms of speech; resume after resume_after_ms"),
    },
}


def rule_for(phase: Phase, kind: type[Event]) -> Rule:
    """The declared rule for a pair; an undeclared pair is an error, never silently ignored."""
    rule = TRANSITIONS[phase].get(kind)
    if rule is None:
        raise UndeclaredTransition(phase, kind)
    return rule


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
    rule = rule_for(state.phase, type(event))
    state = replace(state, now_ms=now_ms)
    if rule.handler is None:
        return state, []
    work = Step(state, params, now_ms, event.kind)
    rule.handler(work, event)
    target = work.state.phase
    if target is not state.phase and target not in rule.targets:
        violation = UndeclaredTarget(state.phase, type(event), target)
        if strict:
            raise violation
        return safe_reset(state, params, now_ms, str(violation))
    return work.state, work.actions


def safe_reset(
    state: ControllerState, params: PolicyParams, now_ms: float, why: str
) -> tuple[ControllerState, list[Event]]:
    """Back to Silence from ``state``: an error event, the live reply's playout stopped and the reply
    cancelled, every timer and turn fact cleared (turn and reply numbering go on)."""
    work = Step(state, params, now_ms, "reset")
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
    due = [d for timer in TIMERS.get(state.phase, ()) if (d := timer.due_ms(state, params)) is not None]
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
