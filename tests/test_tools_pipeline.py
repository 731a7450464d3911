"""Asynchronous tool calls in a live session: speech goes on while the tool runs, dead replies never act.

Most tests replay scenarios on the simulator (the real actors on a virtual clock, scripted
engines and tools); the text-level ones wire a pipeline directly and look at every event.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from duplexer.actors.context import ContextManager
from duplexer.actors.engines import Engines
from duplexer.actors.llm import LlmParams
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
from duplexer.actors.tool_calls import CALL_CLOSE, CALL_OPEN, call_text
from duplexer.actors.tool_registry import ToolRegistry
from duplexer.policies.controller import PolicyParams
from duplexer.policies.reply import RESUMED_AFTER_COMMIT
from duplexer.runtime.clock import LoopClock, run_virtual
from duplexer.runtime.events import (
    FRAME_MS,
    FRAME_SAMPLES,
    INPUT_SAMPLE_RATE_HZ,
    AudioFrame,
    CancelReply,
    CommitReply,
    ErrorEvent,
    Event,
    LlmCancelled,
    LlmDone,
    LlmToken,
    PlayoutDone,
    PlayoutStopped,
    ToolCallRequested,
    ToolCallStarted,
    ToolResult,
    TtsAudio,
)
from duplexer.runtime.session import Session
from duplexer.sims.metrics import USER_STOPPED_REASONS, reply_gaps_ms, summarize, turn_facts
from duplexer.sims.scenario import load_scenario, parse_scenario
from duplexer.sims.simulator import RecordingSink, SimRun, policy_for, simulate
from tests.conftest import REPO, SCENARIOS

APOLOGY = LlmParams().tool_error_reply
TIMEOUT_APOLOGY = LlmParams().tool_timeout_reply
ACCEPTABLE_GAP_BEYOND_TOOL_MS = 300.0
"""Bot silence allowed after a tool answers, on top of the part of its latency speech could not cover."""


def sim(script: list[dict[str, Any]], engines: dict[str, Any] | None = None, seed: int = 0, **extra: Any) -> SimRun:
    data = {"name": "g", "engines": engines or {}, "script": script, "tail_ms": 8000, **extra}
    scenario = parse_scenario(data, Path("<test>"))
    return simulate(scenario, policy_for(scenario, PolicyParams(), "<test>"), seed)


def of(run: SimRun, kind: type[Any], **match: Any) -> list[Any]:
    return [e for e in run.events if isinstance(e, kind) and all(getattr(e, k) == v for k, v in match.items())]


def weather(preface: str, latency_ms: float = 2000.0, call_format: str = "step_audio") -> dict[str, Any]:
    return {
        "say": "What is the weather in Paris?",
        "reply": {
            "preface": preface,
            "call": {"name": "get_weather", "args": {"city": "Paris"}, "format": call_format},
            "tool": {"latency_ms": latency_ms, "result": {"forecast": "sunny", "temp_c": 18}},
            "then": "It is sunny, eighteen degrees and clear all afternoon.",
        },
    }


HANG_UP = {
    "say": "We are done, please hang up",
    "reply": {
        "preface": "Alright, thank you for calling today. I will hang up the call now, goodbye and take care!",
        "call": {"name": "hang_up_call"},
        "tool": {"side_effect": True, "latency_ms": 50, "result": "call ended"},
    },
}

# Engines as measured for the embedded default (ARCHITECTURE.md section 4): a warm, prefix-cached
# continuation starts within tens of ms, and Piper's first chunk takes about 55 ms.
FAST_CONTINUATION = {"llm": {"continuation_ttft_ms": 60}, "tts": {"first_chunk_ms": 80}}


# ------------------------------------------------------------------ speech covers the tool


@pytest.mark.parametrize("call_format", ["step_audio", "openai"])
@pytest.mark.parametrize(("jitter", "seed"), [(0.0, 0), (0.1, 1), (0.1, 2)])
@pytest.mark.parametrize("preface", ["Let me check that for you.", "One moment while I look that up"])
def test_a_two_second_tool_with_a_spoken_preface_leaves_no_gap_beyond_its_own_remainder(
    preface: str, call_format: str, jitter: float, seed: int
) -> None:
    # The preface (about 2 s of audio, with or without a closing full stop) is shorter than the
    # tool, so some silence is unavoidable: the part of the tool's 2 s that speech could not
    # cover. Anything beyond that is overhead.
    run = sim([weather(preface, call_format=call_format)], {**FAST_CONTINUATION, "jitter": jitter}, seed)
    [commit] = of(run, CommitReply)
    [result] = of(run, ToolResult, reply_id=commit.reply_id)
    assert result.status == "ok" and result.latency_ms == pytest.approx(2000.0)
    audio = sorted((a for a in run.bot_audio if a.reply_id == commit.reply_id), key=lambda a: a.start_ms)
    assert len(audio) == 2, "the answer did not follow the preface in the same reply"
    preface, answer = audio
    assert preface.start_ms < result.ts_ms, "the preface was not speaking while the tool ran"
    remainder_ms = max(0.0, result.ts_ms - preface.end_ms)
    gap_ms = answer.start_ms - preface.end_ms
    assert gap_ms <= remainder_ms + ACCEPTABLE_GAP_BEYOND_TOOL_MS, (gap_ms, remainder_ms)
    [done] = of(run, PlayoutDone, reply_id=commit.reply_id)
    assert done.ts_ms == pytest.approx(answer.end_ms)  # one reply, played to its end after the answer


def test_a_preface_longer_than_the_tool_hides_it_completely() -> None:
    run = sim([weather("Let me look up the weather in Paris for you, it takes just a moment.")], FAST_CONTINUATION)
    [commit] = of(run, CommitReply)
    assert reply_gaps_ms(commit.reply_id, run.bot_audio) == []
    tools = summarize([turn_facts(run)], [])["tools"]
    assert tools["dead_air_ms"]["max"] == 0.0
    assert tools["hidden_share"] == 1.0 and tools["latency_ms"]["p50"] == 2000.0


def test_the_shipped_weather_scenario_hides_a_two_second_lookup_behind_speech() -> None:
    scenario = load_scenario(SCENARIOS / "tool_weather_behind_preface.yaml")
    run = simulate(scenario, policy_for(scenario, PolicyParams(), "shipped"), 0)
    tools = summarize([turn_facts(run)], [])["tools"]
    assert tools["latency_ms"]["p50"] == 2000.0
    assert tools["dead_air_ms"]["max"] == 0.0 and tools["hidden_share"] == 1.0
    assert turn_facts(run).unanswered_turns == 0


def test_runs_without_tools_report_no_tools_block() -> None:
    run = sim([{"say": "hello there", "reply": "Hi, how can I help?"}])
    assert "tools" not in summarize([turn_facts(run)], [])


# ------------------------------------------------------------------ side effects


@pytest.mark.parametrize("gap_ms", [300, 1500, 3000, 4500])
def test_a_side_effecting_tool_never_runs_for_a_reply_cancelled_by_barge_in(gap_ms: int) -> None:
    interruption = {"say": "Wait no, one more question", "start": {"after": "bot_start", "gap_ms": gap_ms}}
    run = sim([HANG_UP, interruption])
    [cancel] = [c for c in of(run, CancelReply) if c.reason in USER_STOPPED_REASONS]
    assert run.tools_ran == [], "hang_up_call ran although the user interrupted its announcement"
    if cancel.reason == RESUMED_AFTER_COMMIT:  # speech within resume_after_commit_ms: taken back before the call
        assert gap_ms < 1000 and not of(run, ToolResult, reply_id=cancel.reply_id, status="ok")
        return
    assert of(run, ToolCallRequested, reply_id=cancel.reply_id, name="hang_up_call")
    assert [r.status for r in of(run, ToolResult, reply_id=cancel.reply_id)] == ["prevented"]
    side_effects = summarize([turn_facts(run)], [])["tools"]["side_effects"]
    assert side_effects == {"run": 0, "prevented_after_barge_in": 1, "prevented_other": 0}


def test_a_side_effecting_tool_runs_once_its_announcement_was_heard_to_the_end() -> None:
    run = sim([HANG_UP])
    [commit] = of(run, CommitReply)
    [done] = of(run, PlayoutDone, reply_id=commit.reply_id)
    assert [name for name, _, _ in run.tools_ran] == ["hang_up_call"]
    assert run.tools_ran[0][2] >= done.ts_ms
    assert [r.status for r in of(run, ToolResult)] == ["ok"]


def test_a_side_effecting_tool_never_runs_for_a_discarded_speculative_reply() -> None:
    # The user pauses mid-sentence; the speculative reply to the first half already wrote the call.
    turn = {
        "say": "send a message to Bob saying I will be late",
        "pauses": [{"after_word": 5, "ms": 900}],
        "reply": {
            "preface": "Okay, I will send that to Bob.",
            "call": {"name": "send_message", "args": {"to": "Bob", "text": "I will be late"}},
            "tool": {"side_effect": True, "latency_ms": 100, "result": "sent"},
        },
    }
    run = sim(
        [turn],
        {"jitter": 0.0, "llm": {"ttft_ms": 60, "tokens_per_s": 100}},
        policy={"end_of_turn_ms": 1200, "end_of_turn_max_ms": 2000},
    )
    [discarded] = of(run, CancelReply, reason="user_resumed")
    assert of(run, ToolCallRequested, reply_id=discarded.reply_id), "the discarded reply never wrote its call"
    assert [r.status for r in of(run, ToolResult, reply_id=discarded.reply_id)] == ["prevented"]
    [commit] = of(run, CommitReply)
    [done] = of(run, PlayoutDone, reply_id=commit.reply_id)
    assert len(run.tools_ran) == 1 and run.tools_ran[0][2] >= done.ts_ms  # only the committed reply's call
    side_effects = summarize([turn_facts(run)], [])["tools"]["side_effects"]
    assert side_effects == {"run": 1, "prevented_after_barge_in": 0, "prevented_other": 1}


def test_a_read_only_tool_of_an_interrupted_reply_is_cancelled_and_its_answer_never_spoken() -> None:
    interruption = {"say": "Actually forget it, never mind that", "start": {"after": "bot_start", "gap_ms": 700}}
    run = sim([weather("Let me check the weather in Paris for you.", latency_ms=4000), interruption])
    [cancel] = of(run, CancelReply, reason="barge_in")
    assert [r.status for r in of(run, ToolResult, reply_id=cancel.reply_id)] == ["cancelled"]
    assert of(run, LlmCancelled, reply_id=cancel.reply_id) and not of(run, LlmDone, reply_id=cancel.reply_id)
    [stopped] = of(run, PlayoutStopped, reply_id=cancel.reply_id)
    assert all(a.end_ms <= stopped.ts_ms for a in run.bot_audio if a.reply_id == cancel.reply_id)
    assert turn_facts(run).unanswered_turns == 0  # the interruption itself was answered


# ------------------------------------------------------------------ failures are spoken, not fatal

BAD_CALLS = {
    "text that is not a call": {"call": {"name": "book_table", "text": f"{CALL_OPEN}book a table{CALL_CLOSE}"}},
    "arguments that are not JSON": {
        "call": {"name": "book_table", "text": f'{CALL_OPEN}function\nbook_table\n{{"people": two}}{CALL_CLOSE}'}
    },
    "arguments that fail the schema": {
        "call": {"name": "book_table", "args": {"people": "two"}},
        "tool": {"params": {"people": "integer"}},
    },
    "OpenAI arguments that fail the schema": {
        "call": {"name": "book_table", "args": {"persons": 2}, "format": "openai"},
        "tool": {"params": {"people": "integer"}},
    },
    "a tool the session does not have": {"call": {"name": "book_table", "args": {}}, "tool": {"registered": False}},
    "a call that never closes": {
        "call": {"name": "book_table", "text": f'{CALL_OPEN}function\nbook_table\n{{"people": 2'}
    },
    "a tool that raises": {"call": {"name": "book_table", "args": {}}, "tool": {"error": "the booking API is down"}},
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_a_bad_tool_call_gives_an_error_event_and_a_spoken_recovery_and_the_session_goes_on(case: str) -> None:
    first = {"say": "Book a table for two tonight", "reply": {"preface": "Sure, let me do that.", **BAD_CALLS[case]}}
    second = {"say": "Then tell me a joke", "reply": "Why did the scarecrow win an award? He was outstanding."}
    run = sim([first, second])
    [first_reply, second_reply] = [c.reply_id for c in of(run, CommitReply)]
    errors = of(run, ErrorEvent)
    assert errors and all("crashed" not in e.message for e in errors)
    assert any(f"on reply {first_reply}" in e.message for e in errors)
    [done] = of(run, LlmDone, reply_id=first_reply)
    assert done.text.strip().endswith(APOLOGY)
    assert CALL_OPEN not in done.text and "function\n" not in done.text
    assert of(run, PlayoutDone, reply_id=first_reply) and of(run, PlayoutDone, reply_id=second_reply)
    assert turn_facts(run).unanswered_turns == 0


def test_a_timed_out_tool_gives_a_spoken_apology_and_the_conversation_continues() -> None:
    slow = {
        "say": "How is the Acme share price today?",
        "reply": {
            "preface": "Let me look that up.",
            "call": {"name": "get_share_price", "args": {"ticker": "ACME"}},
            "tool": {"latency_ms": 60_000, "timeout_ms": 3000, "result": {"price": 12.5}},
            "then": "Acme trades at twelve fifty.",
        },
    }
    run = sim([slow, {"say": "Never mind, what time is it?", "reply": "It is half past four."}])
    [first_reply, second_reply] = [c.reply_id for c in of(run, CommitReply)]
    [started] = of(run, ToolCallStarted, reply_id=first_reply)
    [result] = of(run, ToolResult, reply_id=first_reply)
    assert result.status == "timeout" and result.ts_ms - started.ts_ms == pytest.approx(3000.0)
    [done] = of(run, LlmDone, reply_id=first_reply)
    assert done.text.strip().endswith(TIMEOUT_APOLOGY) and "twelve fifty" not in done.text
    assert any("get_share_price" in e.message and "3000 ms" in e.message for e in of(run, ErrorEvent))
    assert of(run, PlayoutDone, reply_id=second_reply)


# ------------------------------------------------------------------ text: withheld from speech, kept in history


def load_example_tools() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_tools", REPO / "examples" / "tools.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@dataclass
class Talk:
    events: list[Event]
    history: list[tuple[str, str]]
    sink: RecordingSink

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def words_at(start_ms: float, text: str, ms_per_word: float = 250.0) -> SpeechSpan:
    words = text.split()
    onsets = tuple((start_ms + i * ms_per_word, w) for i, w in enumerate(words))
    return SpeechSpan(start_ms, start_ms + ms_per_word * len(words), onsets)


async def talk(
    spans: list[SpeechSpan], until_ms: float, replies: dict[str, ScriptedToolReply | str], tools: ToolRegistry | None
) -> Talk:
    """One session on scripted engines with the given tools; every event and the final history.

    The scripted LLM answers each user turn from ``replies`` (by its transcript), else "Okay.".
    """
    clock, rng, timeline = LoopClock(), random.Random(0), SpeechTimeline()
    for span in spans:
        timeline.add(span)
    sink = RecordingSink(clock)
    engines = Engines(
        vad=ScriptedVad(timeline),
        asr=ScriptedAsr(timeline, clock, rng),
        llm=ScriptedToolLlm(clock, rng, reply_for=lambda text: replies.get(text, "Okay."), continuation_ttft_ms=60),  # type: ignore[arg-type]
        tts=ScriptedTts(clock, rng),
        sink=sink,
    )
    context, events = ContextManager(), []
    async with Session("t", clock=clock) as session:
        everything = session.bus.subscribe("test", None, maxsize=1_000_000)
        start_pipeline(session, engines, PipelineConfig(), context, tools=tools)
        seq = 0
        while clock.now_ms() < until_ms:
            session.ctx.emit(AudioFrame, pcm=bytes(2 * FRAME_SAMPLES), sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=seq)
            seq += 1
            await clock.sleep_ms(seq * FRAME_MS - clock.now_ms())
        await asyncio.sleep(0)
        while (event := everything.get_nowait()) is not None:
            events.append(event)
    return Talk(events, list(context.history), sink)


def spoken_text(run: Talk) -> str:
    return " ".join(e.text for e in run.of(TtsAudio) if e.text)


WEATHER_REPLY = ScriptedToolReply(
    preface="Let me check the weather in Paris for you.",
    name="get_weather",
    arguments='{"city": "Paris"}',
    then="It is sunny and eighteen degrees in Paris.",
)


@pytest.mark.parametrize("call_format", ["step_audio", "openai"])
def test_tool_call_text_never_reaches_tts_and_call_and_result_enter_history(call_format: str) -> None:
    example = load_example_tools()
    reply = ScriptedToolReply(**{**WEATHER_REPLY.__dict__, "call_format": call_format})
    question = "what is the weather in paris"
    run = run_virtual(talk([words_at(500, question)], 10_000, {question: reply}, example.build_registry()))
    assert isinstance(run, Talk)
    assert spoken_text(run) == "Let me check the weather in Paris for you. It is sunny and eighteen degrees in Paris."
    assert all(CALL_OPEN not in e.text and "get_weather" not in e.text for e in run.of(LlmToken))
    [done] = run.of(LlmDone)
    [result] = run.of(ToolResult)
    assert done.ts_ms > result.ts_ms  # the reply ends only after its continuation
    assert run.history == [
        ("user", "what is the weather in paris"),
        ("assistant", "Let me check the weather in Paris for you. " + call_text("get_weather", '{"city": "Paris"}')),
        ("tool", '{"city": "Paris", "forecast": "sunny", "temperature": 18, "unit": "celsius"}'),
        ("assistant", "It is sunny and eighteen degrees in Paris."),
    ]


def test_a_committed_reply_with_a_deferred_side_effect_records_its_late_result_in_history() -> None:
    example = load_example_tools()
    call = example.LiveCall()
    reply = ScriptedToolReply(preface="Okay, hanging up now. Goodbye!", name="hang_up_call", arguments="{}")
    question = "please hang up now"
    run = run_virtual(talk([words_at(500, question)], 9000, {question: reply}, example.build_registry(call=call)))
    assert isinstance(run, Talk)
    assert call.hung_up
    assert run.history == [
        ("user", "please hang up now"),
        ("assistant", "Okay, hanging up now. Goodbye! <tool_call>function\nhang_up_call\n{}</tool_call>"),
        ("tool", "the call has ended"),  # recorded when it ran, after the reply had played
    ]
    [done] = run.of(PlayoutDone)
    [started] = run.of(ToolCallStarted)
    assert started.ts_ms >= done.ts_ms


def test_an_interrupted_hang_up_leaves_the_example_call_up_and_says_so_in_history() -> None:
    example = load_example_tools()
    call = example.LiveCall()
    reply = ScriptedToolReply(
        preface="Alright, thank you for calling today. I will hang up the call now, goodbye and take care!",
        name="hang_up_call",
        arguments='{"reason": "caller asked"}',
    )
    spans = [words_at(500, "please hang up now"), words_at(4000, "wait wait one more thing please")]
    replies: dict[str, ScriptedToolReply | str] = {"please hang up now": reply}
    run = run_virtual(talk(spans, 12_000, replies, example.build_registry(call=call)))
    assert isinstance(run, Talk)
    assert not call.hung_up
    assert ("tool", "not run: its reply was cancelled (barge_in)") in run.history


def test_without_tools_in_the_session_a_tool_call_is_refused_aloud_and_never_spoken() -> None:
    question = "what is the weather in paris"
    run = run_virtual(talk([words_at(500, question)], 9000, {question: WEATHER_REPLY}, tools=None))
    assert isinstance(run, Talk)
    assert spoken_text(run) == f"Let me check the weather in Paris for you. {APOLOGY}"
    assert any("no tools are configured" in e.message for e in run.of(ErrorEvent))
    assert [r.status for r in run.of(ToolResult)] == ["invalid"]
