"""The turn-taking controller: a pure state machine, ``(state, event, now_ms) -> (state, actions)``.

Theory of operation
-------------------
Every rule that decides when the bot speaks, speculates or yields lives in this
file: the parameters (:class:`PolicyParams`), the transition table
(:data:`TRANSITIONS`) and the handlers it names. Nothing here does I/O or
reads a clock; the caller passes ``now_ms``, so the simulator, the server and
the robot run the same policy.

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
the handler and the phases it may lead to, or as ignored. An undeclared pair
raises :class:`UndeclaredTransition`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from duplexer.runtime.events import (
    AsrFinal,
    AsrPartial,
    CancelReply,
    CommitReply,
    EndOfTurnProbability,
    Event,
    PausePlayout,
    PlayoutDone,
    PlayoutStarted,
    PlayoutStopped,
    ReplyReady,
    ResumePlayout,
    SpeakRequest,
    SpeakText,
    StartPlayout,
    StartReply,
    StateChanged,
    StopPlayout,
    Tick,
    TruncateHistory,
    VadSpeechStart,
    VadSpeechStop,
)

E = TypeVar("E", bound=Event)


class Phase(enum.StrEnum):
    SILENCE = "Silence"
    USER_SPEAKING = "UserSpeaking"
    USER_PAUSED = "UserPaused"
    BOT_REPLYING = "BotReplying"
    USER_OVERLAP = "UserOverlap"


# ------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class PolicyParams:
    """Every turn-taking threshold, in one place. The paper gives none, so all are configuration."""

    pause_ms: float = 200.0
    """Silence after speech that enters UserPaused and starts a speculative reply."""
    end_of_turn_ms: float = 700.0
    """Silence that ends the user's turn and commits a reply, when no detector speaks."""
    end_of_turn_min_ms: float = 300.0
    """Shortest end-of-turn silence a confident end-of-turn detector (p=1) may ask for."""
    end_of_turn_max_ms: float = 1500.0
    """Longest end-of-turn silence a doubtful end-of-turn detector (p=0) may ask for."""
    min_barge_in_ms: float = 500.0
    """User speech during bot speech needed to interrupt; shorter speech is a backchannel."""
    backchannel_pause_playout: bool = False
    """Hold bot audio while overlapping speech is still shorter than min_barge_in_ms."""
    resume_after_ms: float = 0.0
    """With backchannel_pause_playout: held bot audio resumes only after this much silence once a short
    overlap ends. Speech within it continues the overlap, and all of its speech counts towards
    min_barge_in_ms, so an interruption with a pause in it ("Wait, | tell me ...") is not talked into."""
    min_speech_probability: float = 0.5
    """VAD speech onsets below this probability are ignored."""
    speculation: bool = True
    """Start replies during user pauses (off: replies start only at end of turn)."""
    max_speculative_calls: int = 3
    """Speculative replies allowed per user turn."""
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
                f"got {self.end_of_turn_min_ms}, {self.end_of_turn_ms}, {self.end_of_turn_max_ms}"
            )
        if not 0.0 <= self.min_speech_probability <= 1.0:
            raise ValueError("policy parameter min_speech_probability must be within [0, 1]")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def effective_end_of_turn_ms(self, probability: float | None) -> float:
        """End-of-turn silence for a detector's probability: p=0 -> max, p=0.5 -> default, p=1 -> min."""
        if probability is None:
            return self.end_of_turn_ms
        p = min(1.0, max(0.0, probability))
        if p >= 0.5:
            return self.end_of_turn_ms + (p - 0.5) * 2.0 * (self.end_of_turn_min_ms - self.end_of_turn_ms)
        return self.end_of_turn_max_ms + p * 2.0 * (self.end_of_turn_ms - self.end_of_turn_max_ms)


LIVE_CALL_POLICY = PolicyParams(
    backchannel_pause_playout=True, resume_after_ms=400.0, pause_ms=150.0, end_of_turn_min_ms=625.0
)
"""For live audio: bot audio pauses the moment user speech is heard (a fast audible stop) and
stops for good only after min_barge_in_ms of speech; shorter speech resumes it after 400 ms of
silence, longer than the pause at a comma, so the bot does not resume between the words of one
interruption. Speculation starts after 150 ms of silence: the VAD's stop and the final transcript
come ~150-250 ms after the user stops, so a longer pause only delays the speculative reply. A
confident end-of-turn detector shortens the wait to no less than 625 ms of silence: with the
embedded CPU models a speculative reply's first audio is ready ~650-800 ms after the user stops, so
committing sooner would play nothing sooner and only leave the user less time to go on (and
speculation less time to save)."""


# ------------------------------------------------------------------ state


@dataclass(frozen=True)
class Reply:
    """The reply in flight: speculative until committed."""

    reply_id: str
    user_text: str
    speculative: bool
    committed: bool = False
    ready: bool = False
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

    @property
    def user_text(self) -> str:
        """The turn's final transcript so far, segment by segment."""
        return " ".join(text for _, text in sorted(self.transcript) if text).strip()


# ------------------------------------------------------------------ errors


class ControllerError(Exception):
    """The controller was driven in a way its rules do not allow."""


class UndeclaredTransition(ControllerError):
    def __init__(self, phase: Phase, kind: type[Event]) -> None:
        super().__init__(
            f"no rule for event {kind.__name__} in state {phase.value}: declare it in "
            "duplexer.policies.controller.TRANSITIONS (as a transition or as ignored)"
        )


class ClockWentBackwards(ControllerError):
    pass


# ------------------------------------------------------------------ handlers


class _Step:
    """Scratch space for one transition: the evolving state and the actions it emits."""

    def __init__(self, state: ControllerState, params: PolicyParams, now_ms: float, reason: str) -> None:
        self.state = state
        self.params = params
        self.now_ms = now_ms
        self.actions: list[Event] = []
        self.reason = reason

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
        reply = Reply(reply_id=f"t{self.state.turn_id}r{seq}", user_text=self.state.user_text, speculative=speculative)
        self.set(reply_seq=seq, reply=reply)
        if speculative:
            self.set(speculative_calls=self.state.speculative_calls + 1)
        self.emit(StartReply, reply_id=reply.reply_id, user_text=reply.user_text, speculative=speculative)
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
        )


Handler = Callable[[_Step, Any], None]


def _speech_starts_turn(step: _Step, ev: VadSpeechStart) -> None:
    if ev.probability < step.params.min_speech_probability:
        return
    step.new_turn(ev.segment_id, ev.speech_start_ms)
    step.goto(Phase.USER_SPEAKING, "speech")


def _speech_continues(step: _Step, ev: VadSpeechStart) -> None:
    if ev.probability < step.params.min_speech_probability:
        return
    s = step.state
    step.set(
        speaking=True,
        speech_start_ms=ev.speech_start_ms,
        silence_since_ms=None,
        turn_segments=s.turn_segments | {ev.segment_id},
        awaiting_final=s.awaiting_final | {ev.segment_id},
    )
    if s.phase is Phase.USER_PAUSED:
        step.cancel_reply("user_resumed")
        step.goto(Phase.USER_SPEAKING, "user resumed")


def _speech_stops(step: _Step, ev: VadSpeechStop) -> None:
    if ev.segment_id in step.state.turn_segments:
        step.set(speaking=False, silence_since_ms=ev.speech_end_ms)


def _final_transcript(step: _Step, ev: AsrFinal) -> None:
    s = step.state
    if ev.segment_id not in s.turn_segments:
        return
    kept = tuple(item for item in s.transcript if item[0] != ev.segment_id)
    step.set(
        transcript=(*kept, (ev.segment_id, ev.text.strip())),
        awaiting_final=s.awaiting_final - {ev.segment_id},
    )
    if s.phase is Phase.USER_PAUSED:
        _maybe_speculate(step)


def _eot_probability(step: _Step, ev: EndOfTurnProbability) -> None:
    step.set(eot_probability=ev.probability)


def _maybe_speculate(step: _Step) -> None:
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


TIME_EPSILON_MS = 1e-6
"""Float slack for comparing a clock reading with a deadline computed from it."""


def _silence_elapsed_ms(step: _Step) -> float:
    s = step.state
    if s.speaking or s.silence_since_ms is None:
        return 0.0
    return step.now_ms - s.silence_since_ms + TIME_EPSILON_MS


def _tick_user_speaking(step: _Step, ev: Tick) -> None:
    if _silence_elapsed_ms(step) >= step.params.pause_ms:
        step.goto(Phase.USER_PAUSED, "pause")
        _maybe_speculate(step)
        _tick_user_paused(step, ev)


def _tick_user_paused(step: _Step, ev: Tick) -> None:
    s, params = step.state, step.params
    silence_ms = _silence_elapsed_ms(step)
    eot_ms = params.effective_end_of_turn_ms(s.eot_probability)
    if silence_ms < eot_ms:
        return
    if s.awaiting_final and silence_ms < eot_ms + params.asr_final_timeout_ms:
        return  # the final transcript decides the reply: wait for it, within bounds
    text = s.user_text
    if not text:
        step.cancel_reply("no_transcript")
        step.goto(Phase.SILENCE, "end of turn without words")
        return
    reply = s.reply
    if reply is None or reply.user_text != text:
        step.cancel_reply("stale_input")
        reply = step.start_reply(speculative=False)
    reply = replace(reply, committed=True)
    step.set(reply=reply, awaiting_final=frozenset())
    step.emit(CommitReply, reply_id=reply.reply_id, user_text=text)
    step.emit(StartPlayout, reply_id=reply.reply_id)
    step.goto(Phase.BOT_REPLYING, "end of turn")


def _reply_ready(step: _Step, ev: ReplyReady) -> None:
    reply = step.state.reply
    if reply is not None and reply.reply_id == ev.reply_id:
        step.set(reply=replace(reply, ready=True))


def _bot_speaks_first(step: _Step, ev: SpeakRequest) -> None:
    reply = Reply(reply_id=ev.reply_id, user_text="", speculative=False, committed=True)
    step.set(reply=reply)
    step.emit(SpeakText, reply_id=ev.reply_id, text=ev.text)
    step.emit(StartPlayout, reply_id=ev.reply_id)
    step.goto(Phase.BOT_REPLYING, "bot speaks first")


def _playout_started(step: _Step, ev: PlayoutStarted) -> None:
    reply = step.state.reply
    if reply is not None and reply.reply_id == ev.reply_id:
        hold = step.state.phase is Phase.USER_OVERLAP and step.params.backchannel_pause_playout
        step.set(reply=replace(reply, playing=True, paused=hold or reply.paused))
        if hold:
            step.emit(PausePlayout, reply_id=reply.reply_id)


def _playout_done(step: _Step, ev: PlayoutDone) -> None:
    s = step.state
    if s.stopping_reply_id == ev.reply_id:
        step.set(stopping_reply_id=None)  # it finished before the stop reached it: nothing to cut
        return
    if s.reply is None or s.reply.reply_id != ev.reply_id:
        return
    _bot_done(step, "reply played")


def _playout_stopped(step: _Step, ev: PlayoutStopped) -> None:
    s = step.state
    if s.stopping_reply_id == ev.reply_id:
        step.set(stopping_reply_id=None)
        step.emit(TruncateHistory, reply_id=ev.reply_id, played_ms=ev.played_ms)
    elif s.reply is not None and s.reply.reply_id == ev.reply_id:
        # Playout ended by itself (an output failure): keep what was heard and yield.
        step.emit(TruncateHistory, reply_id=ev.reply_id, played_ms=ev.played_ms)
        _bot_done(step, "playout stopped")


def _bot_done(step: _Step, reason: str) -> None:
    """The bot's audio ended; a user talking over it now holds the floor, else silence."""
    s = step.state
    step.set(reply=None)
    if s.phase is Phase.USER_OVERLAP and not s.speaking:  # held for a short overlap, now over
        step.set(overlap_segment=None, speech_start_ms=None, overlap_speech_ms=0.0)
        step.goto(Phase.SILENCE, reason)
    elif s.phase is Phase.USER_OVERLAP:
        assert s.overlap_segment is not None
        step.new_turn(s.overlap_segment, s.speech_start_ms or step.now_ms)
        step.goto(Phase.USER_SPEAKING, f"{reason} during user speech")
    else:
        step.goto(Phase.SILENCE, reason)


def _overlap_begins(step: _Step, ev: VadSpeechStart) -> None:
    if ev.probability < step.params.min_speech_probability:
        return
    step.set(speaking=True, speech_start_ms=ev.speech_start_ms, overlap_segment=ev.segment_id)
    reply = step.state.reply
    if step.params.backchannel_pause_playout and reply is not None and reply.playing:
        step.emit(PausePlayout, reply_id=reply.reply_id)
        step.set(reply=replace(reply, paused=True))
    step.goto(Phase.USER_OVERLAP, "user speech over bot")
    _check_barge_in(step, step.now_ms)


def _barge_in(step: _Step) -> None:
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


def _check_barge_in(step: _Step, speech_until_ms: float) -> bool:
    s = step.state
    onset = s.speech_start_ms if s.speech_start_ms is not None else step.now_ms
    if s.overlap_speech_ms + speech_until_ms - onset + TIME_EPSILON_MS >= step.params.min_barge_in_ms:
        _barge_in(step)
        return True
    return False


def _overlap_continues(step: _Step, ev: VadSpeechStart) -> None:
    """Speech again while bot audio is held after a short overlap: the same overlap goes on."""
    s = step.state
    if s.speaking or ev.probability < step.params.min_speech_probability:
        return
    step.set(speaking=True, speech_start_ms=ev.speech_start_ms, silence_since_ms=None, overlap_segment=ev.segment_id)
    _check_barge_in(step, step.now_ms)


def _tick_overlap(step: _Step, ev: Tick) -> None:
    s = step.state
    if s.speaking:
        _check_barge_in(step, step.now_ms)
    elif s.silence_since_ms is not None and step.now_ms - s.silence_since_ms + TIME_EPSILON_MS >= (
        step.params.resume_after_ms
    ):
        _backchannel_over(step)


def _overlap_ends(step: _Step, ev: VadSpeechStop) -> None:
    s = step.state
    if ev.segment_id != s.overlap_segment or not s.speaking:
        return
    step.set(speaking=False, silence_since_ms=ev.speech_end_ms)
    if _check_barge_in(step, ev.speech_end_ms):
        return
    onset = s.speech_start_ms if s.speech_start_ms is not None else ev.speech_end_ms
    step.set(overlap_speech_ms=s.overlap_speech_ms + max(0.0, ev.speech_end_ms - onset), speech_start_ms=None)
    reply = step.state.reply
    held = reply is not None and reply.paused
    if not held or step.now_ms - ev.speech_end_ms + TIME_EPSILON_MS >= step.params.resume_after_ms:
        _backchannel_over(step)


def _backchannel_over(step: _Step) -> None:
    """A short overlap ended for good: held bot audio resumes."""
    reply = step.state.reply
    if reply is not None and reply.paused:
        step.emit(ResumePlayout, reply_id=reply.reply_id)
        step.set(reply=replace(reply, paused=False))
    step.set(overlap_segment=None, speech_start_ms=None, silence_since_ms=None, overlap_speech_ms=0.0)
    step.goto(Phase.BOT_REPLYING, "backchannel")


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Rule:
    """A declared (phase, event) pair: the handler and every phase it may lead to."""

    handler: Handler | None
    targets: tuple[Phase, ...] = ()
    note: str = ""

    @property
    def ignored(self) -> bool:
        return self.handler is None


def _ignore(note: str) -> Rule:
    return Rule(None, (), note)


def _rule(handler: Handler, *targets: Phase, note: str = "") -> Rule:
    return Rule(handler, targets, note or (handler.__doc__ or handler.__name__).strip("_ ").replace("_", " "))


S, US, UP, BR, UO = (
    Phase.SILENCE,
    Phase.USER_SPEAKING,
    Phase.USER_PAUSED,
    Phase.BOT_REPLYING,
    Phase.USER_OVERLAP,
)

CONTROLLER_INPUTS: tuple[type[Event], ...] = (
    VadSpeechStart,
    VadSpeechStop,
    AsrPartial,
    AsrFinal,
    EndOfTurnProbability,
    ReplyReady,
    PlayoutStarted,
    PlayoutDone,
    PlayoutStopped,
    SpeakRequest,
    Tick,
)
"""Every event type the controller consumes. Playout progress is not one: no rule needs it, and on
Ray it would cross to the controller's host five times a second for nothing."""

_STALE = "stale: belongs to a reply that is no longer current"
_NOT_NOW = "the bot never starts talking over the user or itself"

TRANSITIONS: dict[Phase, dict[type[Event], Rule]] = {
    S: {
        VadSpeechStart: _rule(_speech_starts_turn, US, note="user starts a new turn"),
        VadSpeechStop: _ignore("no speech was open"),
        AsrPartial: _ignore("text of speech outside any turn (noise, backchannel)"),
        AsrFinal: _ignore("text of speech outside any turn (noise, backchannel)"),
        EndOfTurnProbability: _ignore("no turn to end"),
        ReplyReady: _ignore(_STALE),
        PlayoutStarted: _ignore(_STALE),
        PlayoutDone: _rule(_playout_done, note="late done of a stopped reply"),
        PlayoutStopped: _rule(_playout_stopped, note="truncate history to what was played"),
        SpeakRequest: _rule(_bot_speaks_first, BR, note="the bot speaks first (a greeting)"),
        Tick: _ignore("nothing is timed in silence"),
    },
    US: {
        VadSpeechStart: _rule(_speech_continues, note="speech resumes after a short gap"),
        VadSpeechStop: _rule(_speech_stops, note="silence timing starts"),
        AsrPartial: _ignore("partials are for display; the final decides"),
        AsrFinal: _rule(_final_transcript, note="record the segment's transcript"),
        EndOfTurnProbability: _rule(_eot_probability, note="adjusts the end-of-turn silence"),
        ReplyReady: _ignore(_STALE),
        PlayoutStarted: _ignore(_STALE),
        PlayoutDone: _rule(_playout_done, note="late done of a stopped reply"),
        PlayoutStopped: _rule(_playout_stopped, note="truncate history to what was played"),
        SpeakRequest: _ignore(_NOT_NOW),
        Tick: _rule(_tick_user_speaking, UP, BR, S, note="silence >= pause_ms: pause, speculate"),
    },
    UP: {
        VadSpeechStart: _rule(_speech_continues, US, note="user resumes: cancel speculation"),
        VadSpeechStop: _rule(_speech_stops, note="silence timing starts"),
        AsrPartial: _ignore("partials are for display; the final decides"),
        AsrFinal: _rule(_final_transcript, note="record the transcript; speculate on it"),
        EndOfTurnProbability: _rule(_eot_probability, note="adjusts the end-of-turn silence"),
        ReplyReady: _rule(_reply_ready, note="the speculative reply has audio"),
        PlayoutStarted: _ignore(_STALE),
        PlayoutDone: _rule(_playout_done, note="late done of a stopped reply"),
        PlayoutStopped: _rule(_playout_stopped, note="truncate history to what was played"),
        SpeakRequest: _ignore(_NOT_NOW),
        Tick: _rule(_tick_user_paused, BR, S, note="end of turn: commit latest reply or start fresh"),
    },
    BR: {
        VadSpeechStart: _rule(_overlap_begins, UO, US, note="user speech over the bot"),
        VadSpeechStop: _ignore("no user speech was open"),
        AsrPartial: _ignore("text of a backchannel or noise"),
        AsrFinal: _ignore("text of a backchannel or noise"),
        EndOfTurnProbability: _ignore("the user's turn has ended"),
        ReplyReady: _rule(_reply_ready, note="the committed reply has audio"),
        PlayoutStarted: _rule(_playout_started, note="bot audio is out"),
        PlayoutDone: _rule(_playout_done, S, note="reply played to its end"),
        PlayoutStopped: _rule(_playout_stopped, S, note="playout ended early: keep what was heard"),
        SpeakRequest: _ignore(_NOT_NOW),
        Tick: _ignore("nothing is timed while the bot speaks alone"),
    },
    UO: {
        VadSpeechStart: _rule(_overlap_continues, US, note="speech again while held: the overlap goes on"),
        VadSpeechStop: _rule(_overlap_ends, BR, US, note="short overlap: a backchannel, after resume_after_ms"),
        AsrPartial: _ignore("the overlap's length decides, not its text"),
        AsrFinal: _ignore("the overlap's length decides, not its text"),
        EndOfTurnProbability: _ignore("the user's turn has ended"),
        ReplyReady: _rule(_reply_ready, note="the committed reply has audio"),
        PlayoutStarted: _rule(_playout_started, note="bot audio is out (held if backchannel pause)"),
        PlayoutDone: _rule(_playout_done, US, S, note="bot finished: the user holds the floor"),
        PlayoutStopped: _rule(_playout_stopped, US, S, note="playout ended early: the user holds the floor"),
        SpeakRequest: _ignore(_NOT_NOW),
        Tick: _rule(_tick_overlap, US, BR, note="barge-in at min_barge_in_ms of speech; resume after resume_after_ms"),
    },
}


def rule_for(phase: Phase, kind: type[Event]) -> Rule:
    """The declared rule for a pair; an undeclared pair is an error, never silently ignored."""
    rule = TRANSITIONS[phase].get(kind)
    if rule is None:
        raise UndeclaredTransition(phase, kind)
    return rule


def step(
    state: ControllerState, event: Event, now_ms: float, params: PolicyParams
) -> tuple[ControllerState, list[Event]]:
    """Apply one event at ``now_ms``; return the new state and the actions to carry out."""
    if now_ms < state.now_ms:
        raise ClockWentBackwards(f"controller time went backwards: {now_ms} ms after {state.now_ms} ms ({event.kind})")
    rule = rule_for(state.phase, type(event))
    state = replace(state, now_ms=now_ms)
    if rule.handler is None:
        return state, []
    work = _Step(state, params, now_ms, event.kind)
    rule.handler(work, event)
    return work.state, work.actions


def next_deadline_ms(state: ControllerState, params: PolicyParams) -> float | None:
    """When the next timing rule could fire, so a driver can tick exactly then, not a frame late."""
    if state.phase in (Phase.USER_SPEAKING, Phase.USER_PAUSED):
        if state.speaking or state.silence_since_ms is None:
            return None
        if state.phase is Phase.USER_SPEAKING:
            return state.silence_since_ms + params.pause_ms
        eot_ms = params.effective_end_of_turn_ms(state.eot_probability)
        if state.awaiting_final:
            eot_ms += params.asr_final_timeout_ms
        return state.silence_since_ms + eot_ms
    if state.phase is Phase.USER_OVERLAP and state.speaking and state.speech_start_ms is not None:
        return state.speech_start_ms + params.min_barge_in_ms - state.overlap_speech_ms
    if state.phase is Phase.USER_OVERLAP and state.silence_since_ms is not None:
        return state.silence_since_ms + params.resume_after_ms
    return None


@dataclass
class Controller:
    """Holds a :class:`ControllerState` and applies events to it; still pure, no I/O."""

    session_id: str
    params: PolicyParams = field(default_factory=PolicyParams)
    state: ControllerState = field(init=False)

    def __post_init__(self) -> None:
        self.state = ControllerState(session_id=self.session_id)

    def handle(self, event: Event, now_ms: float) -> list[Event]:
        self.state, actions = step(self.state, event, now_ms, self.params)
        return actions

    @property
    def phase(self) -> Phase:
        return self.state.phase

    def next_deadline_ms(self) -> float | None:
        return next_deadline_ms(self.state, self.params)
