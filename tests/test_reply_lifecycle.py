"""A reply's life: a cancel is final, whichever lane brings it first."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from duplexer.actors.context import ContextActor
from duplexer.actors.llm import LlmActor
from duplexer.actors.playout import PlayoutActor
from duplexer.actors.scripted import ScriptedLlm, ScriptedTts
from duplexer.actors.tts import TtsActor
from duplexer.policies.reply import NEXT_STAGES, ReplyLedger, ReplyStage
from duplexer.runtime.clock import LoopClock, run_virtual
from duplexer.runtime.events import (
    CancelReply,
    CommitReply,
    Event,
    LlmDone,
    LlmToken,
    PlayoutDone,
    PlayoutStarted,
    PlayoutStopped,
    ReplyReady,
    SpeakText,
    StartReply,
    TtsAudio,
)
from duplexer.runtime.session import Session
from duplexer.sims.simulator import RecordingSink


async def _start_then_cancel_at_once() -> tuple[list[Event], ScriptedLlm]:
    """The controller emits a start and its cancel before the context actor has run once."""
    clock = LoopClock()
    rng = random.Random(0)
    llm = ScriptedLlm(clock, rng, reply_for=lambda _: "A whole reply that nobody will ever hear.")
    async with Session("s", clock=clock) as session:
        everything = session.bus.subscribe("test", None, maxsize=100_000)
        ctx = session.ctx
        session.add(
            ContextActor(ctx),
            LlmActor(ctx, llm),
            TtsActor(ctx, ScriptedTts(clock, rng)),
            PlayoutActor(ctx, RecordingSink(clock)),
        )
        ctx.emit(StartReply, turn_id=1, reply_id="t1r1", user_text="what is the", speculative=True)
        ctx.emit(CancelReply, turn_id=1, reply_id="t1r1", reason="user_resumed")
        await clock.sleep_ms(3000.0)
        events: list[Event] = []
        while (event := everything.get_nowait()) is not None:
            events.append(event)
    return events, llm


def test_a_cancel_that_overtakes_its_start_is_never_generated_nor_played() -> None:
    events, llm = run_virtual(_start_then_cancel_at_once())  # type: ignore[misc]
    assert llm.calls == [], "the LLM generated a reply that was cancelled before it started"
    leaked = [e for e in events if isinstance(e, (LlmToken, LlmDone, TtsAudio, PlayoutStarted))]
    assert leaked == [], f"a cancelled reply came back: {[e.kind for e in leaked]}"


S = "s"


def _lifecycle_event(kind: type[Event]) -> Event:
    fields: dict[str, object] = {"session_id": S, "ts_ms": 0.0, "reply_id": "r"}
    if kind is StartReply:
        fields.update(user_text="hi", speculative=True)
    elif kind is CommitReply:
        fields.update(user_text="hi")
    elif kind is CancelReply:
        fields.update(reason="test")
    elif kind is SpeakText:
        fields.update(text="hello")
    elif kind in (PlayoutDone, PlayoutStopped):
        fields.update(played_ms=100.0)
    return kind(**fields)  # type: ignore[arg-type]


LIFECYCLE_KINDS = [StartReply, ReplyReady, CommitReply, CancelReply, PlayoutStarted, PlayoutDone, PlayoutStopped]


@settings(max_examples=300, deadline=None)
@given(order=st.lists(st.sampled_from(LIFECYCLE_KINDS), max_size=10))
def test_no_order_of_lifecycle_events_brings_a_cancelled_reply_back(order: list[type[Event]]) -> None:
    ledger = ReplyLedger()
    cancelled_at: int | None = None
    for i, kind in enumerate(order):
        before = ledger.stage("r")
        moves = ledger.observe(_lifecycle_event(kind))
        for move in moves:
            assert move.old == before and move.new in NEXT_STAGES[move.old], move
        if kind is CancelReply and cancelled_at is None:
            cancelled_at = i
        if cancelled_at is not None:
            assert ledger.cancelled("r") and not ledger.may_run("r")
            assert ledger.stage("r") in (ReplyStage.CANCELLED, ReplyStage.STOPPED, ReplyStage.DONE)
            if i > cancelled_at:
                assert all(m.new in (ReplyStage.STOPPED,) for m in moves), moves


def test_a_cancel_before_its_start_is_remembered_and_the_memory_is_bounded() -> None:
    ledger = ReplyLedger(max_ended=3)
    ledger.observe(CancelReply(session_id=S, ts_ms=0.0, reply_id="early", reason="barge_in"))
    assert ledger.observe(_lifecycle_event(StartReply)) != ()  # an unrelated reply "r" starts
    assert ledger.observe(StartReply(session_id=S, ts_ms=0.0, reply_id="early", user_text="x", speculative=True)) == ()
    assert ledger.cancelled("early")
    for n in range(5):
        ledger.observe(CancelReply(session_id=S, ts_ms=0.0, reply_id=f"c{n}", reason="x"))
    assert "early" not in ledger and "r" in ledger  # ended replies are forgotten oldest first; live ones kept
    assert [ledger.cancelled(f"c{n}") for n in range(5)] == [False, False, True, True, True]


def test_replies_that_never_end_here_are_forgotten_oldest_first() -> None:
    """An actor that never sees a reply's end (the TTS sees no playout events) keeps a bounded ledger."""
    ledger = ReplyLedger(max_ended=2, max_replies=4)
    for n in range(10):
        ledger.observe(StartReply(session_id=S, ts_ms=0.0, reply_id=f"r{n}", user_text="x", speculative=False))
        ledger.observe(CommitReply(session_id=S, ts_ms=0.0, reply_id=f"r{n}", user_text="x"))
    assert [f"r{n}" in ledger for n in range(10)] == [False] * 6 + [True] * 4
