"""The real actors together, on scripted engines and the virtual clock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

from duplexer.actors.context import ContextManager
from duplexer.actors.engines import Engines, Message
from duplexer.actors.pipeline import PipelineConfig, start_pipeline
from duplexer.actors.scripted import (
    ScriptedAsr,
    ScriptedLlm,
    ScriptedTts,
    ScriptedVad,
    SpeechSpan,
    SpeechTimeline,
)
from duplexer.policies.controller import PolicyParams
from duplexer.runtime.clock import LoopClock, run_virtual
from duplexer.runtime.events import (
    FRAME_MS,
    FRAME_SAMPLES,
    INPUT_SAMPLE_RATE_HZ,
    AudioFrame,
    ErrorEvent,
    Event,
    HistoryUpdated,
    PlayoutDone,
    PlayoutStopped,
)
from duplexer.runtime.session import Session
from duplexer.sims.simulator import RecordingSink


def words_at(start_ms: float, text: str, ms_per_word: float = 250.0) -> SpeechSpan:
    words = text.split()
    return SpeechSpan(
        start_ms,
        start_ms + ms_per_word * len(words),
        tuple((start_ms + i * ms_per_word, w) for i, w in enumerate(words)),
    )


class FailingLlm:
    """Streams two words, then raises, as a server dropping mid-stream would."""

    async def stream(self, messages: Sequence[Message], reply_id: str) -> AsyncIterator[str]:
        yield "Well"
        yield " actually"
        raise ConnectionError("server went away")


async def converse(
    spans: list[SpeechSpan], until_ms: float, llm: Any = None, reply: str | None = None
) -> tuple[list[Event], ContextManager, RecordingSink]:
    clock = LoopClock()
    rng = random.Random(0)
    timeline = SpeechTimeline()
    for span in spans:
        timeline.add(span)
    sink = RecordingSink(clock)
    text = reply or "Paris is the capital of France, and it is lovely in spring."
    engines = Engines(
        vad=ScriptedVad(timeline),
        asr=ScriptedAsr(timeline, clock, rng),
        llm=llm or ScriptedLlm(clock, rng, reply_for=lambda _: text),
        tts=ScriptedTts(clock, rng),
        sink=sink,
    )
    context = ContextManager()
    events: list[Event] = []
    async with Session("t", clock=clock) as session:
        everything = session.bus.subscribe("test", None, maxsize=1_000_000)
        start_pipeline(session, engines, PipelineConfig(policy=PolicyParams()), context)
        seq = 0
        while clock.now_ms() < until_ms:
            session.ctx.emit(AudioFrame, pcm=bytes(2 * FRAME_SAMPLES), sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=seq)
            seq += 1
            await clock.sleep_ms(seq * FRAME_MS - clock.now_ms())
        await asyncio.sleep(0)
        while (e := everything.get_nowait()) is not None:
            events.append(e)
    return events, context, sink


def test_a_question_gets_a_spoken_answer_and_both_enter_history() -> None:
    events, context, sink = run_virtual(converse([words_at(500, "what is the capital of france")], 9000))
    assert [i.reply_id for i in sink.intervals] == ["t1r1"]
    assert any(isinstance(e, PlayoutDone) for e in events)
    assert context.history == [
        ("user", "what is the capital of france"),
        ("assistant", "Paris is the capital of France, and it is lovely in spring."),
    ]


def test_barge_in_stops_the_bot_and_history_keeps_only_what_was_played() -> None:
    question = words_at(500, "tell me about paris")  # ends at 1500
    # The bot starts about 700 ms after the turn ends; interrupt it 1 s later for 1.5 s.
    interruption = words_at(3200, "stop stop that is enough thanks", 250.0)
    events, context, sink = run_virtual(converse([question, interruption], 9000))
    stopped = [e for e in events if isinstance(e, PlayoutStopped)]
    assert len(stopped) == 1
    first_reply = sink.intervals[0]
    assert first_reply.end_ms - 3200 <= PolicyParams().min_barge_in_ms + 2 * FRAME_MS
    assistant = [text for role, text in context.history if role == "assistant"]
    full = "Paris is the capital of France, and it is lovely in spring."
    assert assistant and full.startswith(assistant[0]) and assistant[0] != full
    users = [text for role, text in context.history if role == "user"]
    assert users[:2] == ["tell me about paris", "stop stop that is enough thanks"]
    # the interrupted reply enters the history when its playout stops, cut to what was played
    recorded = [
        e.text
        for e in events
        if isinstance(e, HistoryUpdated) and e.role == "assistant" and e.ts_ms >= stopped[0].ts_ms
    ]
    assert recorded[:1] == assistant[:1]


def test_llm_failure_mid_reply_speaks_a_fallback_and_the_next_turn_works() -> None:
    spans = [words_at(500, "first question"), words_at(8000, "second question")]
    events, context, sink = run_virtual(converse(spans, 16000, llm=FailingLlm()))
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert errors and "server went away" in errors[0].message
    assistant = [text for role, text in context.history if role == "assistant"]
    assert len(assistant) == 2  # both turns were answered
    assert all("Sorry" in text for text in assistant)
    assert len(sink.intervals) == 2


def test_energy_vad_hears_loud_frames_not_silence() -> None:
    import numpy as np

    from duplexer.actors.energy_vad import EnergyVad

    vad = EnergyVad()
    tone = (np.sin(np.arange(320) / 3.0) * 8000).astype("<i2").tobytes()
    assert vad.speech_probability(bytes(640), 0.0) == 0.0
    assert vad.speech_probability(tone, 0.0) == 1.0
    assert vad.speech_probability(b"", 0.0) == 0.0


def test_a_pipeline_with_a_tokenizer_publishes_whole_interleaved_groups() -> None:
    import numpy as np

    from duplexer.actors.energy_vad import EnergyVad
    from duplexer.actors.scripted import CannedAsr
    from duplexer.actors.tokenizer_engines import LogMelKMeansTestTokenizer
    from duplexer.runtime.events import AudioTokens

    async def main() -> list[AudioTokens]:
        clock = LoopClock()
        rng = random.Random(0)
        sink = RecordingSink(clock)
        engines = Engines(EnergyVad(), CannedAsr(clock), ScriptedLlm(clock, rng), ScriptedTts(clock, rng), sink)
        noise = (np.random.default_rng(0).standard_normal(FRAME_SAMPLES * 50) * 3000).astype("<i2").tobytes()
        async with Session("t", clock=clock) as session:
            tokens = session.bus.subscribe("tokens", [AudioTokens])
            start_pipeline(session, engines, tokenizer=LogMelKMeansTestTokenizer())
            for seq in range(50):  # one second of audio
                frame = noise[seq * 2 * FRAME_SAMPLES : (seq + 1) * 2 * FRAME_SAMPLES]
                session.ctx.emit(AudioFrame, pcm=frame, sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=seq)
                await clock.sleep_ms((seq + 1) * FRAME_MS - clock.now_ms())
            await asyncio.sleep(0.1)
            got = []
            while (e := tokens.get_nowait()) is not None:
                got.append(e)
            return got  # type: ignore[return-value]

    events = run_virtual(main())
    ids = [i for e in events for i in e.ids]
    assert len(ids) >= 5 * 6  # at least 6 whole 120 ms groups from 1 s of audio
    assert len(ids) % 5 == 0
    for g in range(0, len(ids), 5):
        assert all(65536 <= i < 66560 for i in ids[g : g + 2])  # linguistic first
        assert all(66560 <= i < 70656 for i in ids[g + 2 : g + 5])  # then semantic


def test_the_bot_can_speak_first_and_a_greeting_enters_history() -> None:
    async def main() -> tuple[list[tuple[str, str]], list[str]]:
        from duplexer.runtime.events import SpeakRequest, StateChanged

        clock = LoopClock()
        rng = random.Random(0)
        timeline = SpeechTimeline()
        sink = RecordingSink(clock)
        engines = Engines(
            ScriptedVad(timeline),
            ScriptedAsr(timeline, clock, rng),
            ScriptedLlm(clock, rng),
            ScriptedTts(clock, rng),
            sink,
        )
        context = ContextManager()
        async with Session("t", clock=clock) as session:
            states = session.bus.subscribe("states", [StateChanged])
            start_pipeline(session, engines, context=context)
            await asyncio.sleep(0)
            session.ctx.emit(SpeakRequest, reply_id="greeting", text="(slow) Good evening, how can I help?")
            await asyncio.sleep(10)
            seen = []
            while (e := states.get_nowait()) is not None:
                seen.append(e.new_state)  # type: ignore[attr-defined]
            return list(context.history), seen

    history, states = run_virtual(main())
    assert history == [("assistant", "Good evening, how can I help?")]
    assert states == ["BotReplying", "Silence"]
