"""Tools loaded from a configuration file keep the safety rules of tools defined in code.

The session gets examples/concierge_tools.yaml the way ``--tools FILE`` and personas give it
(``PipelineConfig.tool_registry``): the read-only ``get_weather`` runs during a speculative reply
and, when that speculation is discarded, is cancelled and its answer thrown away; the
side-effecting ``send_message`` never runs for a discarded speculation, and for the committed
reply only after its announcement was played to the end.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from duplexer.actors.context import ContextManager
from duplexer.actors.engines import Engines
from duplexer.actors.pipeline import PipelineConfig, start_pipeline
from duplexer.actors.scripted import (
    ScriptedAsr,
    ScriptedToolLlm,
    ScriptedToolReply,
    ScriptedTts,
    ScriptedVad,
    SpeechSpan,
    SpeechTimeline,
)
from duplexer.actors.tool_config import load_tools
from duplexer.policies.controller import PolicyParams
from duplexer.runtime.clock import LoopClock, run_virtual
from duplexer.runtime.events import (
    FRAME_MS,
    FRAME_SAMPLES,
    INPUT_SAMPLE_RATE_HZ,
    AudioFrame,
    CancelReply,
    CommitReply,
    Event,
    PlayoutDone,
    ToolCallStarted,
    ToolResult,
    TtsAudio,
)
from duplexer.runtime.session import Session
from duplexer.sims.simulator import RecordingSink
from tests.conftest import REPO

PAUSED_POLICY = PolicyParams(end_of_turn_ms=1200.0, end_of_turn_max_ms=2000.0)
"""Commits only after 1.2 s of silence, so a 900 ms pause mid-sentence gets a speculative reply that is discarded."""


@dataclass
class Run:
    events: list[Event]
    history: list[tuple[str, str]]

    def of(self, kind: type[Any], **match: Any) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and all(getattr(e, k) == v for k, v in match.items())]


def spans(first: str, pause_ms: float, second: str, start_ms: float = 500.0) -> list[SpeechSpan]:
    out, t = [], start_ms
    for words in (first.split(), second.split()):
        onsets = tuple((t + 250.0 * i, w) for i, w in enumerate(words))
        out.append(SpeechSpan(t, t + 250.0 * len(words), onsets))
        t += 250.0 * len(words) + pause_ms
    return out


async def converse(speech: list[SpeechSpan], reply_for: Callable[[str], Any], until_ms: float) -> Run:
    clock, rng, timeline = LoopClock(), random.Random(0), SpeechTimeline()
    for span in speech:
        timeline.add(span)
    engines = Engines(
        vad=ScriptedVad(timeline),
        asr=ScriptedAsr(timeline, clock, rng),
        llm=ScriptedToolLlm(clock, rng, ttft_ms=60, tokens_per_s=100, reply_for=reply_for, continuation_ttft_ms=60),  # type: ignore[arg-type]
        tts=ScriptedTts(clock, rng),
        sink=RecordingSink(clock),
    )
    toolset = load_tools(REPO / "examples" / "concierge_tools.yaml")
    config = PipelineConfig(policy=PAUSED_POLICY, tool_registry=toolset.registry)
    context, events = ContextManager(), []
    async with Session("t", clock=clock) as session:
        everything = session.bus.subscribe("test", None, maxsize=1_000_000)
        start_pipeline(session, engines, config, context)
        seq = 0
        while clock.now_ms() < until_ms:
            session.ctx.emit(AudioFrame, pcm=bytes(2 * FRAME_SAMPLES), sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=seq)
            seq += 1
            await clock.sleep_ms(seq * FRAME_MS - clock.now_ms())
        while (event := everything.get_nowait()) is not None:
            events.append(event)
    return Run(events, list(context.history))


def test_a_read_only_config_tool_of_a_discarded_speculation_is_cancelled_and_its_answer_thrown_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(REPO / "examples"))  # the module load_tools imports from beside the file
    import concierge_tools

    monkeypatch.setattr(concierge_tools, "WEATHER_DELAY_S", 1.5)  # still running when the user resumes

    def reply_for(text: str) -> Any:
        city = "London" if "london" in text else "Paris"
        return ScriptedToolReply(
            preface=f"Let me check the weather in {city} for you.",
            name="get_weather",
            arguments=f'{{"city": "{city}"}}',
            then=f"Here is the weather in {city}.",
        )

    run = run_virtual(converse(spans("what is the weather in paris", 900, "no sorry in london"), reply_for, 14_000))
    assert isinstance(run, Run)
    [discarded] = run.of(CancelReply, reason="user_resumed")
    [started] = run.of(ToolCallStarted, reply_id=discarded.reply_id)
    assert started.read_only and started.speculative  # it ran speculatively, as a read-only tool may
    assert [r.status for r in run.of(ToolResult, reply_id=discarded.reply_id)] == ["cancelled"]
    # its call and answer never entered the history (only the user said Paris)
    assert not any("paris" in text.lower() for role, text in run.history if role != "user"), run.history
    [commit] = run.of(CommitReply)
    [kept] = run.of(ToolResult, reply_id=commit.reply_id)
    assert kept.status == "ok" and "London" in kept.content
    said = " ".join(e.text for e in run.of(TtsAudio) if e.text and e.reply_id == commit.reply_id)
    assert "London" in said and "Paris" not in said


def test_a_side_effecting_config_tool_never_runs_before_commit_and_playout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    import concierge_tools

    concierge_tools.SENT.clear()

    def reply_for(text: str) -> Any:
        message = "I will be late" if "late" in text else "hello"
        return ScriptedToolReply(
            preface="Okay, I will send that message to Bob for you right now.",
            name="send_message",
            arguments=f'{{"to": "Bob", "text": "{message}"}}',
        )

    speech = spans("send a message to bob", 900, "saying i will be late")
    run = run_virtual(converse(speech, reply_for, 14_000))
    assert isinstance(run, Run)
    [discarded] = run.of(CancelReply, reason="user_resumed")
    assert [r.status for r in run.of(ToolResult, reply_id=discarded.reply_id)] == ["prevented"]
    assert not run.of(ToolCallStarted, reply_id=discarded.reply_id)
    [commit] = run.of(CommitReply)
    [done] = run.of(PlayoutDone, reply_id=commit.reply_id)
    [started] = run.of(ToolCallStarted, reply_id=commit.reply_id)
    assert not started.read_only and started.ts_ms >= done.ts_ms  # only after commit and playout
    assert concierge_tools.SENT == [("Bob", "I will be late")]  # the discarded "hello" was never sent
