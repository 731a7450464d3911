"""A reply's life: a cancel is final, whichever lane brings it first."""

from __future__ import annotations

import random

from duplexer.actors.context import ContextActor
from duplexer.actors.llm import LlmActor
from duplexer.actors.playout import PlayoutActor
from duplexer.actors.scripted import ScriptedLlm, ScriptedTts
from duplexer.actors.tts import TtsActor
from duplexer.runtime.clock import LoopClock, run_virtual
from duplexer.runtime.events import (
    CancelReply,
    Event,
    LlmDone,
    LlmToken,
    PlayoutStarted,
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
