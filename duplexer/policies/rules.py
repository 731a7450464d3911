"""The turn-taking rules: the handlers, the timers per phase (:data:`TIMERS`) and the transition
table (:data:`TRANSITIONS`) that names them, for every (phase, event type) pair.

Each handler reads the state and the parameters (:mod:`duplexer.policies.params`) and records its
moves and actions on a :class:`~duplexer.policies.state.Step`; :mod:`duplexer.policies.controller`
looks the rule up, runs it and checks that it moved only where the table says it may.
"""

from __future__ import annotations

from dataclasses import replace

from duplexer.policies.params import PolicyParams
from duplexer.policies.reply import RESUMED_AFTER_COMMIT
from duplexer.policies.state import (
    TIME_EPSILON_MS,
    ControllerState,
    Handler,
    Phase,
    Reply,
    Rule,
    Step,
    Timer,
)
from duplexer.policies.table import CONTROLLER_INPUTS, PolicyTable
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
    ResumePlayout,
    SpeakRequest,
    SpeakText,
    StartPlayout,
    StopPlayout,
    Tick,
    TruncateHistory,
    VadOnsetCandidate,
    VadSpeechStart,
    VadSpeechStop,
)

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


def _onset_candidate(step: Step, ev: VadOnsetCandidate) -> None:
    step.set(onset_candidate_ms=ev.since_ms if ev.active else None)


def _resumes_after_commit(step: Step, ev: VadSpeechStart) -> bool:
    """Speech within resume_after_commit_ms of a commit: the user was not done. The reply stops at
    once and is taken back, and the speech joins the user's turn; False for any other speech."""
    s, params = step.state, step.params
    if params.resume_after_commit_ms <= 0 or s.committed_at_ms is None or s.reply is None:
        return False
    if ev.probability < params.min_speech_probability:
        return False
    if ev.speech_start_ms - s.committed_at_ms > params.resume_after_commit_ms:
        return False
    reply = s.reply
    step.emit(StopPlayout, reply_id=reply.reply_id)
    step.emit(CancelReply, reply_id=reply.reply_id, reason=RESUMED_AFTER_COMMIT)
    step.set(
        reply=None, stopping_reply_id=reply.reply_id, committed_at_ms=None, speculative_calls=0, eot_probability=None
    )
    _speech_joins_turn(step, ev)
    step.goto(Phase.USER_SPEAKING, "user resumed after commit")
    return True


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
    due_ms = s.silence_since_ms + eot_ms
    if s.onset_candidate_ms is not None:  # the newest audio may be the user going on: no commit onto it
        due_ms = max(due_ms, s.onset_candidate_ms + params.onset_hold_max_ms)
    return due_ms


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
    step.set(awaiting_final=frozenset(), committed_at_ms=step.now_ms)
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
    """Fire the current phase's timer that is due, if any (they are declared mutually exclusive).

    The timers are the running policy's (:attr:`Step.timers`), so a plug-in's table that reuses
    this handler fires its own timers."""
    timers = TIMERS if step.timers is None else step.timers
    for timer in timers.get(step.state.phase, ()):
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
    step.set(reply=Reply(reply_id=ev.reply_id, user_text=""), committed_at_ms=None)
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
        step.set(reply=None, committed_at_ms=None)
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
    if ev.probability < step.params.min_speech_probability or _resumes_after_commit(step, ev):
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


_STALE = "stale: belongs to a reply that is no longer current"
_NOT_NOW = "the bot never starts talking over the user or itself"
_LATE_DONE = "late done of a stopped reply; the live one played uncommitted: cancel it"
_LATE_STOP = "truncate a stopped reply's history; the live one played uncommitted: cancel it"

TRANSITIONS: dict[Phase, dict[type[Event], Rule]] = {
    S: {
        VadOnsetCandidate: _rule(_onset_candidate, note="recorded: only a commit waits on it"),
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
        VadOnsetCandidate: _rule(_onset_candidate, note="recorded: only a commit waits on it"),
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
        VadOnsetCandidate: _rule(_onset_candidate, note="holds the end-of-turn commit while speech may be starting"),
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
        VadOnsetCandidate: _rule(_onset_candidate, note="recorded: only a commit waits on it"),
        VadSpeechStart: _rule(
            _overlap_begins, UO, US, note="user speech over the bot; just after a commit it continues the turn"
        ),
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
        VadOnsetCandidate: _rule(_onset_candidate, note="recorded: only a commit waits on it"),
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


BUILT_IN_TABLE = PolicyTable("built-in", TRANSITIONS, TIMERS)
"""The built-in rules, checked as every plug-in's are (:mod:`duplexer.policies.table`); the mappings
are this module's own, not copies."""

__all__ = ["BUILT_IN_TABLE", "CONTROLLER_INPUTS", "TIMERS", "TRANSITIONS"]
