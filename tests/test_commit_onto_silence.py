"""Commit only onto silence: an onset candidate holds the commit, and speech just after a commit
continues the user's turn at once instead of being talked over until a barge-in."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from duplexer.actors.context import ContextActor, ContextManager
from duplexer.actors.vad import VadActor, VadParams
from duplexer.policies.controller import LIVE_CALL_POLICY, Phase
from duplexer.policies.reply import RESUMED_AFTER_COMMIT
from duplexer.runtime.events import (
    FRAME_MS,
    FRAME_SAMPLES,
    INPUT_SAMPLE_RATE_HZ,
    AsrFinal,
    AudioFrame,
    CancelReply,
    CommitReply,
    EndOfTurnProbability,
    Event,
    PlayoutStarted,
    StartReply,
    StopPlayout,
    TruncateHistory,
    VadOffsetCandidate,
    VadOnsetCandidate,
    VadSpeechStart,
    VadSpeechStop,
)
from duplexer.runtime.session import Session
from tests.test_controller_overlap import Driver


def _commits(d: Driver) -> list[tuple[float, CommitReply]]:
    return [(t, a) for t, a in d.actions if isinstance(a, CommitReply)]


def _paused_with_words(d: Driver, words: str = "so do you play basketball") -> None:
    d.speak(800)
    d.send(AsrFinal, segment_id=d.segment, text=words)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.0, 600.0), st.booleans())
def test_an_onset_candidate_holds_the_commit_until_it_is_dropped_or_too_old(lead_ms: float, dropped: bool) -> None:
    d = Driver(LIVE_CALL_POLICY)
    _paused_with_words(d)
    end_ms = d.now
    eot_ms = LIVE_CALL_POLICY.effective_end_of_turn_ms(None)
    d.wait(max(0.0, eot_ms - lead_ms - FRAME_MS))  # the candidate starts lead_ms before the commit was due
    since = d.now
    d.send(VadOnsetCandidate, active=True, probability=0.4, since_ms=since)
    d.wait(100.0)
    if dropped:
        d.send(VadOnsetCandidate, active=False, probability=0.1, since_ms=since)
    d.wait(lead_ms + LIVE_CALL_POLICY.onset_hold_max_ms + 100.0)
    ((commit_ms, _),) = _commits(d)
    assert commit_ms >= end_ms + eot_ms - FRAME_MS
    if since < end_ms + eot_ms:  # the candidate was up when the commit came due
        assert commit_ms >= since + (100.0 if dropped else LIVE_CALL_POLICY.onset_hold_max_ms) - 1e-6
        assert commit_ms <= max(end_ms + eot_ms, since + LIVE_CALL_POLICY.onset_hold_max_ms) + FRAME_MS


@given(st.floats(-100.0, LIVE_CALL_POLICY.resume_after_commit_ms))
def test_speech_just_after_a_commit_stops_the_reply_and_continues_the_turn(onset_after_commit_ms: float) -> None:
    d = Driver(LIVE_CALL_POLICY)
    _paused_with_words(d, "so do you play basketball")
    d.wait(LIVE_CALL_POLICY.end_of_turn_max_ms)
    ((commit_ms, commit),) = _commits(d)
    turn_id = d.c.state.turn_id
    d.send(PlayoutStarted, reply_id=commit.reply_id)
    d.actions.clear()
    d.now = max(d.now, commit_ms + onset_after_commit_ms)
    d.segment += 1
    d.send(VadSpeechStart, segment_id=d.segment, probability=0.9, speech_start_ms=commit_ms + onset_after_commit_ms)
    kinds = [type(a) for _, a in d.actions]
    assert StopPlayout in kinds  # at once: no min_barge_in_ms of the bot over the user
    cancel = next(a for _, a in d.actions if isinstance(a, CancelReply))
    assert cancel.reply_id == commit.reply_id and cancel.reason == RESUMED_AFTER_COMMIT
    assert d.c.phase is Phase.USER_SPEAKING and d.c.state.turn_id == turn_id
    d.wait(600.0)
    d.send(VadSpeechStop, segment_id=d.segment, probability=0.1, speech_end_ms=d.now)
    d.send(AsrFinal, segment_id=d.segment, text="on thursdays")
    d.wait(LIVE_CALL_POLICY.end_of_turn_max_ms)
    ((_, again),) = [(t, a) for t, a in d.actions if isinstance(a, CommitReply)]
    assert again.user_text == "so do you play basketball on thursdays"
    assert again.turn_id == turn_id


def test_speech_well_after_a_commit_is_an_overlap_as_before() -> None:
    d = Driver(LIVE_CALL_POLICY)
    d.bot_is_talking()
    d.wait(LIVE_CALL_POLICY.resume_after_commit_ms + 100.0)
    d.segment += 1
    d.send(VadSpeechStart, segment_id=d.segment, probability=0.9, speech_start_ms=d.now)
    assert d.c.phase is Phase.USER_OVERLAP
    assert not any(isinstance(a, (StopPlayout, CancelReply)) for _, a in d.actions)


class _Probabilities:
    """A VAD engine that reads the next probability from a list (one per frame)."""

    def __init__(self, values: list[float]) -> None:
        self.values = iter(values)

    def speech_probability(self, pcm: bytes, frame_start_ms: float) -> float:
        return next(self.values)


def _vad_events(values: list[float]) -> list[object]:
    return _vad_events_of(values, (VadOnsetCandidate, VadSpeechStart))


def _vad_events_of(values: list[float], kinds: tuple[type[Event], ...]) -> list[object]:
    async def run() -> list[object]:
        session = Session(session_id="s")
        out = session.bus.subscribe("test", kinds, maxsize=1000)
        vad = VadActor(session.ctx, _Probabilities(values), VadParams())
        silence = b"\0\0" * FRAME_SAMPLES
        for seq in range(len(values)):
            await vad.handle(
                AudioFrame(
                    session_id="s", ts_ms=seq * FRAME_MS, pcm=silence, sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=seq
                )
            )
        events = []
        while (event := out.get_nowait()) is not None:
            events.append(event)
        return events

    return asyncio.run(run())


def test_the_vad_announces_a_candidate_before_the_onset_and_ends_it_after() -> None:
    events = _vad_events([0.0, 0.35, 0.6, 0.7, 0.8, 0.9, 0.9, 0.1])
    kinds = [(type(e).__name__, getattr(e, "active", None)) for e in events]
    assert kinds == [("VadOnsetCandidate", True), ("VadSpeechStart", None), ("VadOnsetCandidate", False)]
    assert events[0].since_ms == FRAME_MS  # type: ignore[attr-defined]


def test_a_dropped_candidate_is_ended_and_steady_probability_makes_no_more_events() -> None:
    events = _vad_events([0.4, 0.45, 0.2, 0.1, 0.1, 0.05, 0.4])
    assert [getattr(e, "active", None) for e in events] == [True, False, True]


def test_a_reply_taken_back_leaves_the_history_as_before_it() -> None:
    async def run() -> list[tuple[str, str]]:
        session = Session(session_id="s")
        manager = ContextManager("system")
        actor = ContextActor(session.ctx, manager)
        e = {"session_id": "s", "ts_ms": 0.0, "turn_id": 1}
        await actor.handle(StartReply(**e, reply_id="r1", user_text="so do you", speculative=True))
        await actor.handle(CommitReply(**e, reply_id="r1", user_text="so do you"))
        await actor.handle(CancelReply(**e, reply_id="r1", reason=RESUMED_AFTER_COMMIT))
        await actor.handle(TruncateHistory(**e, reply_id="r1", played_ms=120.0))
        return manager.history

    assert asyncio.run(run()) == []


def test_the_vad_offers_a_speech_end_once_per_silence_before_it_stops() -> None:
    on, off = [0.9] * 5, [0.05] * 8
    events = _vad_events_of([*on, 0.05, 0.9, *on, *off], (VadOffsetCandidate, VadSpeechStop))
    offers = [e for e in events if isinstance(e, VadOffsetCandidate)]
    (stop,) = [e for e in events if isinstance(e, VadSpeechStop)]
    assert len(offers) == 1  # a one-frame dip is not 40 ms of silence
    assert offers[0].speech_end_ms == stop.speech_end_ms == 12 * FRAME_MS
    assert events.index(offers[0]) < events.index(stop)


def test_a_resumed_turn_forgets_the_end_of_turn_estimate_made_before_the_commit() -> None:
    d = Driver(LIVE_CALL_POLICY)
    _paused_with_words(d)
    d.send(EndOfTurnProbability, probability=0.99)
    d.wait(LIVE_CALL_POLICY.end_of_turn_max_ms)
    ((commit_ms, commit),) = _commits(d)
    d.send(PlayoutStarted, reply_id=commit.reply_id)
    d.segment += 1
    d.send(VadSpeechStart, segment_id=d.segment, probability=0.9, speech_start_ms=commit_ms + 100.0)
    assert d.c.phase is Phase.USER_SPEAKING and d.c.state.eot_probability is None


def test_without_a_resume_window_speech_after_a_commit_is_an_overlap() -> None:
    params = replace(LIVE_CALL_POLICY, resume_after_commit_ms=0.0)
    d = Driver(params)
    _paused_with_words(d)
    while not _commits(d):
        d.wait(FRAME_MS)
    ((_, commit),) = _commits(d)
    d.send(PlayoutStarted, reply_id=commit.reply_id)
    d.segment += 1
    d.send(VadSpeechStart, segment_id=d.segment, probability=0.9, speech_start_ms=d.now - 20.0)
    assert d.c.phase is Phase.USER_OVERLAP
    assert not any(isinstance(a, CancelReply) for _, a in d.actions)
