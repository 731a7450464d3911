"""The turn detector: an end-of-turn probability for each final transcript in the user's turn."""

from __future__ import annotations

import asyncio
import os
import string
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duplexer.actors.engines import Message
from duplexer.actors.turn_detector import (
    NEUTRAL_PROBABILITY,
    PAUSE_OFFSETS_MS,
    TURN_AUDIO_MAX_MS,
    TurnDetectorActor,
    TurnDetectorParams,
    normalize_transcript,
)
from duplexer.runtime.actor import SessionContext
from duplexer.runtime.bus import Bus
from duplexer.runtime.clock import LoopClock, run_virtual
from duplexer.runtime.events import (
    FRAME_SAMPLES,
    AsrFinal,
    AudioFrame,
    EndOfTurnProbability,
    ErrorEvent,
    Event,
    HistoryUpdated,
    StateChanged,
    VadSpeechStart,
    VadSpeechStop,
)
from tests.conftest import SHARED

S = "s"


class FakeDetector:
    """A stand-in model: a turn ending in "weekend" is over (0.9), anything else is not (0.1)."""

    def __init__(self, fail: bool = False, delay_s: float = 0.0) -> None:
        self.calls: list[tuple[str, tuple[Message, ...]]] = []
        self.fail = fail
        self.delay_s = delay_s

    async def end_of_turn_probability(self, transcript: str, context: Sequence[Message], audio: bytes = b"") -> float:
        self.calls.append((transcript, tuple(context)))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("model exploded")
        return 0.9 if transcript.rstrip(" ?.").endswith("weekend") else 0.1


def state(old: str, new: str, turn_id: int) -> StateChanged:
    return StateChanged(session_id=S, ts_ms=0.0, turn_id=turn_id, old_state=old, new_state=new, reason="test")


def final(segment_id: int, text: str) -> AsrFinal:
    return AsrFinal(session_id=S, ts_ms=0.0, segment_id=segment_id, text=text)


def speech(segment_id: int) -> VadSpeechStart:
    return VadSpeechStart(session_id=S, ts_ms=0.0, segment_id=segment_id, probability=0.9, speech_start_ms=0.0)


def bot_said(text: str) -> HistoryUpdated:
    return HistoryUpdated(session_id=S, ts_ms=0.0, role="assistant", text=text)


def drive(engine: FakeDetector, events: Sequence[Event | float]) -> list[Event]:
    """Feed events to the actor (a float waits that long, in seconds); return what it emitted."""
    got, _ = drive_actor(engine, events)
    return got  # type: ignore[no-any-return]


def probabilities(events: Sequence[Event]) -> list[float]:
    return [e.probability for e in events if isinstance(e, EndOfTurnProbability)]


def test_a_final_in_the_users_turn_gets_a_probability_for_the_whole_turn_so_far() -> None:
    engine = FakeDetector()
    out = drive(
        engine,
        [
            bot_said("Paris."),
            state("Silence", "UserSpeaking", 2),
            final(1, "Can you recommend?"),
            0.1,
            state("UserSpeaking", "UserPaused", 2),
            final(2, "a good book to read this weekend."),
        ],
    )
    assert probabilities(out) == [0.1, 0.9]
    assert all(e.turn_id == 2 for e in out)
    assert engine.calls[1] == ("Can you recommend? a good book to read this weekend.", (("assistant", "Paris."),))


def test_only_the_end_of_a_long_bot_reply_is_context() -> None:
    engine = FakeDetector()
    long_reply = " ".join(f"w{i}" for i in range(100))
    drive(engine, [bot_said(long_reply), state("Silence", "UserSpeaking", 1), final(1, "ok")])
    assert engine.calls == [("ok", (("assistant", " ".join(f"w{i}" for i in range(70, 100))),))]


def test_finals_outside_the_users_turn_get_nothing() -> None:
    engine = FakeDetector()
    out = drive(
        engine,
        [
            final(1, "noise before anyone spoke"),
            state("UserPaused", "BotReplying", 1),
            final(2, "mm-hmm"),  # a backchannel over the bot
            state("BotReplying", "UserOverlap", 1),
            final(3, "yeah"),
            state("UserOverlap", "Silence", 1),
            final(4, "late"),
        ],
    )
    assert out == []
    assert engine.calls == []


def test_an_empty_final_gets_nothing() -> None:
    engine = FakeDetector()
    assert drive(engine, [state("Silence", "UserSpeaking", 1), final(1, "  ")]) == []
    assert engine.calls == []


def test_a_new_turn_starts_a_new_transcript() -> None:
    engine = FakeDetector()
    drive(
        engine,
        [
            state("Silence", "UserSpeaking", 1),
            final(1, "first turn"),
            0.1,
            state("UserPaused", "BotReplying", 1),
            state("BotReplying", "Silence", 1),
            state("Silence", "UserSpeaking", 2),
            final(2, "second turn"),
        ],
    )
    assert [transcript for transcript, _ in engine.calls] == ["first turn", "second turn"]


def test_resuming_speech_withdraws_the_estimate_and_a_stale_one_is_dropped() -> None:
    engine = FakeDetector(delay_s=0.2)
    out = drive(
        engine,
        [
            state("Silence", "UserSpeaking", 1),
            final(1, "a book for the weekend"),  # would be 0.9, but arrives after the user resumed
            0.05,
            speech(2),
        ],
    )
    assert probabilities(out) == [NEUTRAL_PROBABILITY]


def test_an_engine_failure_is_an_error_event_and_the_actor_goes_on() -> None:
    engine = FakeDetector(fail=True)
    out = drive(engine, [state("Silence", "UserSpeaking", 1), final(1, "hello"), 0.1, final(2, "again")])
    errors = [e for e in out if isinstance(e, ErrorEvent)]
    assert len(errors) == 2 and probabilities(out) == []
    assert errors[0].source == "turn_detector" and "model exploded" in errors[0].message
    assert len(engine.calls) == 2


def test_a_probability_outside_0_1_is_clamped_and_nan_is_an_error() -> None:
    class Odd(FakeDetector):
        async def end_of_turn_probability(
            self, transcript: str, context: Sequence[Message], audio: bytes = b""
        ) -> float:
            return {"high": 1.7, "low": -0.2}.get(transcript.split()[-1], float("nan"))

    out = drive(Odd(), [state("Silence", "UserSpeaking", 1), final(1, "high"), 0.1, final(2, "low")])
    assert probabilities(out) == [1.0, 0.0]
    out = drive(Odd(), [state("Silence", "UserSpeaking", 1), final(1, "what")])
    assert [type(e) for e in out] == [ErrorEvent]


def test_the_pipeline_has_a_turn_detector_only_when_an_engine_is_configured() -> None:
    from duplexer.actors.pipeline import pipeline_specs

    assert "turn_detector" not in [spec.name for spec in pipeline_specs()]
    assert "turn_detector" in [spec.name for spec in pipeline_specs(turn_detector=True)]


# ------------------------------------------------------------------ normalization

ASR_TEXT = st.text(
    alphabet=st.sampled_from(string.ascii_letters + string.digits + string.punctuation + " \t\n'\u2019éÜ"),
    max_size=60,
)


@given(ASR_TEXT)
def test_normalized_text_is_lower_case_words_with_single_spaces_and_idempotent(text: str) -> None:
    out = normalize_transcript(text)
    assert out == out.lower()
    assert out == out.strip() and "  " not in out and "\t" not in out and "\n" not in out
    assert all(ch.isalnum() or ch in " '" for ch in out)
    for word in out.split():
        assert not word.startswith("'") and not word.endswith("'")
    assert normalize_transcript(out) == out


@given(st.lists(st.text(alphabet=string.ascii_letters, min_size=1, max_size=8), max_size=8), st.data())
def test_normalizing_keeps_the_words_and_drops_only_punctuation(words: list[str], data: st.DataObject) -> None:
    marks = [data.draw(st.sampled_from(["", ",", ".", "?", "!", " -", "..."])) for _ in words]
    text = " ".join(w + m for w, m in zip(words, marks, strict=True))
    assert normalize_transcript(text) == " ".join(w.lower() for w in words)


def test_normalizing_keeps_apostrophes_inside_words() -> None:
    assert normalize_transcript("Don\u2019t stop, 'please'! It's 5 o'clock.") == "don't stop please it's 5 o'clock"


# ------------------------------------------------------------------ the real detector

PHRASES = SHARED / "data" / "vap_phrases" / "audio"


@pytest.mark.slow
@pytest.mark.skipif(not PHRASES.exists(), reason="VAP phrases not beside the repo")
def test_the_real_detector_rates_complete_questions_above_their_truncated_prefixes() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from duplexer.actors.models.llama_turn_detector import LlamaTurnDetector

    detector = LlamaTurnDetector()
    complete = sorted({p.read_text().strip() for p in PHRASES.glob("*.txt")})
    assert len(complete) >= 10
    prefixes = sorted(
        {
            " ".join(text.split()[:n])
            for text in complete
            for n in range(1, len(text.split()))
            if " ".join(text.split()[:n]) not in complete  # a short form is a complete question too
        }
    )
    context: tuple[Message, ...] = (("assistant", "Hi! What would you like to know?"),)
    p_complete = [detector.probability_blocking(t, context) for t in complete]
    p_prefix = [detector.probability_blocking(t, context) for t in prefixes]
    mean_complete = sum(p_complete) / len(p_complete)
    mean_prefix = sum(p_prefix) / len(p_prefix)
    assert mean_complete >= mean_prefix + 0.4, (mean_complete, mean_prefix)
    assert sum(p > 0.5 for p in p_complete) >= 0.8 * len(p_complete)
    assert sum(p < 0.5 for p in p_prefix) >= 0.7 * len(p_prefix)
    # The demo's mid-turn pause: an unfinished request must not read as a finished turn.
    assert detector.probability_blocking("Can you recommend?", ()) < 0.2


# ------------------------------------------------------------------ the compute gate the detector shares


def test_the_compute_gate_runs_one_step_at_a_time_most_urgent_first() -> None:
    import threading
    import time

    from duplexer.actors.models.compute_gate import ComputeGate, Urgency

    gate = ComputeGate()
    order: list[str] = []
    inside = most_inside = 0
    count = threading.Lock()
    held, release = threading.Event(), threading.Event()

    def step(name: str, urgency: Urgency) -> None:
        nonlocal inside, most_inside
        with gate.hold(urgency):
            with count:
                inside += 1
                most_inside = max(most_inside, inside)
            order.append(name)
            if name == "first":
                held.set()
                release.wait(10)
            time.sleep(0.005)
            with count:
                inside -= 1

    threads = [threading.Thread(target=step, args=("first", Urgency.LLM))]
    threads[0].start()
    assert held.wait(10)
    for name, urgency in (("text", Urgency.LLM), ("tts", Urgency.TTS), ("asr", Urgency.ASR)):
        threads.append(threading.Thread(target=step, args=(name, urgency)))
        threads[-1].start()
    deadline = time.monotonic() + 10
    while len(gate._waiting) < 3 and time.monotonic() < deadline:  # all three queue behind "first"
        time.sleep(0.001)
    release.set()
    for thread in threads:
        thread.join(10)
    assert order == ["first", "asr", "tts", "text"]
    assert most_inside == 1


def test_a_turn_detector_step_lets_llm_tokens_go_first_but_only_for_so_long() -> None:
    import threading
    import time

    from duplexer.actors.models.compute_gate import ComputeGate, Urgency

    def run(promote_after_s: float, release_after_s: float) -> list[str]:
        gate = ComputeGate({Urgency.TURN_DETECTOR: (promote_after_s, Urgency.LLM)})
        order: list[str] = []
        held, release = threading.Event(), threading.Event()

        def step(name: str, urgency: Urgency) -> None:
            with gate.hold(urgency):
                order.append(name)
                if name == "llm-1":
                    held.set()
                    release.wait(10)

        threads = [threading.Thread(target=step, args=("llm-1", Urgency.LLM))]
        threads[0].start()
        assert held.wait(10)
        for name, urgency in (("detector", Urgency.TURN_DETECTOR), ("llm-2", Urgency.LLM)):
            threads.append(threading.Thread(target=step, args=(name, urgency)))
            threads[-1].start()
            deadline = time.monotonic() + 10
            while len(gate._waiting) < len(threads) - 1 and time.monotonic() < deadline:
                time.sleep(0.001)
        time.sleep(release_after_s)
        release.set()
        for thread in threads:
            thread.join(10)
        return order

    assert run(promote_after_s=30.0, release_after_s=0.0) == ["llm-1", "llm-2", "detector"]
    assert run(promote_after_s=0.05, release_after_s=0.2) == ["llm-1", "detector", "llm-2"]


# ------------------------------------------------------------------ first audio sooner: a long opening is cut


def test_a_long_opening_without_a_clause_end_is_cut_after_its_first_words() -> None:
    from duplexer.actors.tts import split_opening

    assert split_opening("The most famous story about cats is probably the one", 8) == (
        "The most famous story about cats is probably",
        "the one",
    )
    assert split_opening("The most famous story about cats is", 8) == (None, "The most famous story about cats is")
    assert split_opening("one two three four five six seven eight", 8)[0] is None  # the 8th word may go on
    assert split_opening('It is called "The Cat in the Hat', 4) == ("It is called", '"The Cat in the Hat')
    assert split_opening("one two three four five six seven eight nine", 0) == (
        None,
        "one two three four five six seven eight nine",
    )


def test_tts_cuts_only_the_first_clause_of_a_reply_by_words() -> None:
    from duplexer.actors.scripted import ScriptedTts
    from duplexer.actors.tts import TtsActor, TtsParams
    from duplexer.runtime.events import LlmDone, LlmToken, StartReply, TtsAudio

    words = [f"w{i}" for i in range(16)]

    async def main(max_words: int) -> list[str]:
        import random

        clock = LoopClock()
        bus = Bus(S, clock)
        out = bus.subscribe("out", (TtsAudio,))
        actor = TtsActor(
            SessionContext(S, bus, clock),
            ScriptedTts(clock, random.Random(0)),
            TtsParams(first_clause_max_words=max_words),
        )
        await actor.handle(StartReply(session_id=S, ts_ms=0.0, reply_id="r", user_text="hi", speculative=False))
        for i, word in enumerate(words):
            await actor.handle(LlmToken(session_id=S, ts_ms=0.0, reply_id="r", text=(" " if i else "") + word, index=i))
        await actor.handle(LlmDone(session_id=S, ts_ms=0.0, reply_id="r", text=" ".join(words) + ".", n_tokens=16))
        await asyncio.sleep(30.0)
        clauses = []
        while (event := out.get_nowait()) is not None:
            if isinstance(event, TtsAudio) and event.text:
                clauses.append(event.text)
        return clauses

    assert run_virtual(main(5)) == [" ".join(words[:5]), " ".join(words[5:])]
    assert run_virtual(main(0)) == [" ".join(words)]


# ------------------------------------------------------------------ the turn's audio


class HearingDetector:
    """A stand-in audio model: the longer the silence at the end of the audio, the surer the end."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.delay_s = delay_s

    async def end_of_turn_probability(self, transcript: str, context: Sequence[Message], audio: bytes = b"") -> float:
        self.calls.append((transcript, audio))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        trailing = len(audio) - len(audio.rstrip(b"\x00"))
        return min(0.95, 0.2 + trailing / 2 / 16_000)  # +0.1 per 100 ms of trailing silence


def frame(seq: int, loud: bool = True) -> AudioFrame:
    pcm = (b"\x01\x10" if loud else b"\x00\x00") * FRAME_SAMPLES
    return AudioFrame(session_id=S, ts_ms=seq * 20.0, pcm=pcm, sample_rate_hz=16_000, seq=seq)


def stop(segment_id: int) -> VadSpeechStop:
    return VadSpeechStop(session_id=S, ts_ms=0.0, segment_id=segment_id, probability=0.1, speech_end_ms=0.0)


def drive_actor(engine: object, events: Sequence[Event | float], params: TurnDetectorParams | None = None):  # type: ignore[no-untyped-def]
    """Feed events to the actor (a float waits that long, in seconds); return what it emitted, and
    the actor (to look at its audio)."""

    async def main():  # type: ignore[no-untyped-def]
        bus = Bus(S, LoopClock())
        out = bus.subscribe("out", (EndOfTurnProbability, ErrorEvent))
        actor = TurnDetectorActor(SessionContext(S, bus, LoopClock()), engine, params)  # type: ignore[arg-type]
        for item in events:
            if isinstance(item, float):
                await asyncio.sleep(item)
            else:
                await actor.handle(item)
        await asyncio.sleep(1.0)
        got = []
        while (event := out.get_nowait()) is not None:
            got.append(event)
        return got, actor

    return run_virtual(main())


REASK = TurnDetectorParams(pause_offsets_ms=PAUSE_OFFSETS_MS)


def test_by_default_a_pause_is_judged_once_when_it_starts_with_the_turns_audio() -> None:
    engine = HearingDetector()
    speech = [frame(i) for i in range(50)]
    out, _ = drive_actor(engine, [state("Silence", "UserSpeaking", 1), *speech, stop(1)])
    assert [len(audio) for _, audio in engine.calls] == [50 * FRAME_SAMPLES * 2]
    assert probabilities(out) == [pytest.approx(0.2)]


def test_a_pause_is_judged_when_it_starts_and_again_as_it_lengthens_with_its_audio() -> None:
    engine = HearingDetector()
    speech = [frame(i) for i in range(50)]  # 1 s of speech
    out, _ = drive_actor(
        engine,
        [state("Silence", "UserSpeaking", 1), *speech, stop(1), state("UserSpeaking", "UserPaused", 1)],
        REASK,
    )
    # Only the ask at the stop: no frames arrive during the pause in this drive, so the later asks
    # carry the same audio; what matters is that they happen, 200 and 400 ms in.
    assert len(engine.calls) == 1 + len(PAUSE_OFFSETS_MS)
    assert all(len(audio) == 50 * FRAME_SAMPLES * 2 for _, audio in engine.calls)
    assert len(probabilities(out)) == 3


def test_the_later_asks_hear_the_pause_grow() -> None:
    engine = HearingDetector()
    events: list[Event | float] = [state("Silence", "UserSpeaking", 1), *[frame(i) for i in range(50)], stop(1)]
    for i in range(50, 80):  # 600 ms of silence, one frame per 20 ms
        events += [frame(i, loud=False), 0.02]
    out, _ = drive_actor(engine, events, REASK)
    trailing_ms = [(len(a) - len(a.rstrip(b"\x00"))) / 32 for _, a in engine.calls]
    assert trailing_ms[0] == 0.0
    assert 180.0 <= trailing_ms[1] <= 220.0 and 380.0 <= trailing_ms[2] <= 420.0
    ps = probabilities(out)
    assert ps == sorted(ps) and ps[-1] > ps[0]


def test_speech_resuming_in_the_pause_stops_the_later_asks_and_withdraws_the_estimate() -> None:
    engine = HearingDetector()
    out, _ = drive_actor(
        engine,
        [state("Silence", "UserSpeaking", 1), *[frame(i) for i in range(10)], stop(1), 0.1, speech(2)],
        REASK,
    )
    assert len(engine.calls) == 1  # the 200 and 400 ms asks never happen
    assert probabilities(out) == [pytest.approx(0.2), NEUTRAL_PROBABILITY]


def test_a_slow_answer_overtaken_by_a_newer_one_is_dropped() -> None:
    class SlowFirst(HearingDetector):
        async def end_of_turn_probability(
            self, transcript: str, context: Sequence[Message], audio: bytes = b""
        ) -> float:
            self.calls.append((transcript, audio))
            await asyncio.sleep(0.5 if len(self.calls) == 1 else 0.01)
            return 0.1 * len(self.calls)

    engine = SlowFirst()
    out, _ = drive_actor(engine, [state("Silence", "UserSpeaking", 1), frame(0), stop(1)], REASK)
    # asks at 0 (answers at 500 ms), 200 ms (answers at 210) and 400 ms (at 410): the first is stale by then
    assert probabilities(out) == [pytest.approx(0.2), pytest.approx(0.3)]


def test_the_audio_kept_is_bounded_to_8_s_and_starts_with_the_turn() -> None:
    engine = HearingDetector()
    before = [frame(i) for i in range(100)]  # 2 s before the user's turn (the bot's turn)
    turn = StateChanged(
        session_id=S, ts_ms=100 * 20.0, turn_id=1, old_state="Silence", new_state="UserSpeaking", reason="t"
    )
    _, actor = drive_actor(engine, [*before, turn])
    assert len(actor.turn_audio()) == 25 * FRAME_SAMPLES * 2  # only the 500 ms lead-in is kept
    long_turn = [frame(i) for i in range(100, 100 + 600)]  # 12 s of speech
    _, actor = drive_actor(engine, [turn, *long_turn])
    assert len(actor.turn_audio()) == int(TURN_AUDIO_MAX_MS / 20) * FRAME_SAMPLES * 2
    assert actor.audio_ms == TURN_AUDIO_MAX_MS


def test_outside_the_users_turn_a_speech_stop_asks_nothing() -> None:
    engine = HearingDetector()
    out, _ = drive_actor(engine, [state("UserPaused", "BotReplying", 1), frame(0), stop(1)])
    assert engine.calls == [] and out == []
