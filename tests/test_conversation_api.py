"""duplexer.open_session: a conversation driven from Python runs the real pipeline on real speech,
keeps time as a microphone does (however the audio is chunked), and refuses audio it cannot use."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import duplexer
from duplexer import events
from tests.conftest import PHRASES, run

pytestmark = pytest.mark.skipif(not PHRASES.is_dir(), reason="the VAP phrases are not beside the checkout")

QUESTION_WAV = PHRASES / "basketball_short_female_en-US-Wavenet-C.wav"
DECISIONS = (events.VadSpeechStart, events.VadSpeechStop, events.CommitReply, events.PlayoutStarted, events.PlayoutDone)


def question() -> bytes:
    return duplexer.read_wav(QUESTION_WAV, 16_000)


def engines() -> duplexer.EngineFactory:
    return duplexer.scripted_engines(transcripts=["so do you play basketball"], reply_for=lambda _: "Every Sunday.")


async def converse(chunks: list[bytes], **options: object) -> duplexer.Conversation:
    async with duplexer.open_session(engines=engines(), **options) as conversation:  # type: ignore[arg-type]
        for chunk in chunks:
            await conversation.feed(chunk)
        assert await conversation.wait_for(events.PlayoutDone, timeout_ms=10_000) is not None
    return conversation


def timeline(conversation: duplexer.Conversation) -> list[tuple[str, float]]:
    return [(e.kind, e.ts_ms) for e in conversation.events if isinstance(e, DECISIONS)]


def test_a_fed_question_is_answered_after_the_end_of_turn_silence_and_both_sides_line_up() -> None:
    conversation = duplexer.run_virtual(converse([question()]))
    assert isinstance(conversation, duplexer.Conversation)
    stop = conversation.of_kind(events.VadSpeechStop)[0]
    commit = conversation.of_kind(events.CommitReply)[0]
    assert commit.user_text == "so do you play basketball"
    silence_ms = duplexer.preset("live").end_of_turn_ms
    assert silence_ms - 200 <= commit.ts_ms - stop.ts_ms <= silence_ms + 40
    user, bot = conversation.user_audio(), conversation.bot_audio()
    speech = np.frombuffer(question(), dtype="<i2")
    start = int(np.flatnonzero(user)[0])
    assert np.array_equal(user[start : start + 1000], speech[np.flatnonzero(speech)[0] :][:1000])
    heard = np.flatnonzero(np.abs(bot) > 1000)
    assert len(heard) and heard[0] / 16 >= commit.ts_ms - 1  # the bot is heard from its commit on, not before
    assert heard[0] / 16 > start / 16 + len(speech) / 16 * 0.5


def test_the_same_conversation_runs_on_the_wall_clock() -> None:
    virtual = duplexer.run_virtual(converse([question()]))
    assert isinstance(virtual, duplexer.Conversation)
    wall = run(converse([question()]), timeout_s=30)
    kinds = [kind for kind, _ in timeline(wall)]
    assert kinds == [kind for kind, _ in timeline(virtual)]
    for (_, wall_ms), (_, virtual_ms) in zip(timeline(wall), timeline(virtual), strict=True):
        assert abs(wall_ms - virtual_ms) < 150  # the same timings, within the wall clock's scheduling


@settings(max_examples=6, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=4000), min_size=1, max_size=12))
def test_how_the_audio_is_chunked_changes_nothing(cuts: list[int]) -> None:
    audio = question()
    chunks, at = [], 0
    for size in cuts:  # chunks of any even length, then the rest
        chunks.append(audio[at : at + 2 * size])
        at += 2 * size
    chunks.append(audio[at:])
    whole = duplexer.run_virtual(converse([audio]))
    pieces = duplexer.run_virtual(converse([c for c in chunks if c]))
    assert isinstance(whole, duplexer.Conversation) and isinstance(pieces, duplexer.Conversation)
    assert timeline(pieces) == timeline(whole)


def test_events_keeps_only_the_kinds_asked_for() -> None:
    conversation = duplexer.run_virtual(converse([question()], events=(events.CommitReply, events.PlayoutDone)))
    assert isinstance(conversation, duplexer.Conversation)
    assert {e.kind for e in conversation.events} == {"CommitReply", "PlayoutDone"}


def test_audio_it_cannot_use_is_refused() -> None:
    async def odd_then_closed() -> None:
        conversation = duplexer.open_session(engines=engines())
        with pytest.raises(ValueError, match="even number of bytes"):
            await conversation.feed(b"\x00\x01\x02")
        await conversation.close()
        with pytest.raises(RuntimeError, match="closed"):
            await conversation.feed(b"\x00\x00")

    duplexer.run_virtual(odd_then_closed())


def test_wait_for_gives_up_after_its_timeout_in_session_time() -> None:
    async def nothing_said() -> tuple[object, float]:
        async with duplexer.open_session(engines=engines()) as conversation:
            begin = conversation.now_ms
            await conversation.listen(500)
            found = await conversation.wait_for(events.CommitReply, timeout_ms=2000)
            return found, conversation.now_ms - begin

    found, waited_ms = duplexer.run_virtual(nothing_said())  # type: ignore[misc]
    assert found is None and 2500 <= waited_ms < 2600
    assert asyncio.iscoroutinefunction(duplexer.Conversation.feed)


def test_say_has_the_bot_speak_first() -> None:
    async def greet() -> duplexer.Conversation:
        async with duplexer.open_session(engines=engines()) as conversation:
            conversation.say("Hello, how can I help?", reply_id="greeting")
            assert await conversation.wait_for(events.PlayoutDone, timeout_ms=10_000) is not None
        return conversation

    conversation = duplexer.run_virtual(greet())
    assert isinstance(conversation, duplexer.Conversation)
    assert [e.reply_id for e in conversation.of_kind(events.PlayoutStarted)] == ["greeting"]
    assert np.abs(conversation.bot_audio()).max() > 1000


def test_a_stream_cut_finer_than_a_frame_arrives_whole() -> None:
    """Audio arriving 10 ms at a time, as from a media pipeline: no silence is slipped into the speech."""
    speech = question()
    piece = 320  # 10 ms

    async def stream() -> duplexer.Conversation:
        async with duplexer.open_session(engines=engines()) as conversation:
            begin = conversation.now_ms
            for n, at in enumerate(range(0, len(speech), piece)):
                await conversation.listen(begin + 10 * n - conversation.now_ms)  # each piece when it is due
                await conversation.feed(speech[at : at + piece])
            assert await conversation.wait_for(events.PlayoutDone, timeout_ms=10_000) is not None
        return conversation

    conversation = duplexer.run_virtual(stream())
    sent = conversation.user_audio()
    samples = np.frombuffer(speech, dtype="<i2")
    first = int(np.flatnonzero(samples)[0])
    start = int(np.flatnonzero(sent)[0])
    whole = len(samples) - len(samples) % 320 - first  # the last partial frame waits a tick: the end
    assert np.array_equal(sent[start : start + whole], samples[first : first + whole])
    assert [kind for kind, _ in timeline(conversation)] == [
        kind for kind, _ in timeline(duplexer.run_virtual(converse([speech])))
    ]


def test_opening_a_session_outside_an_event_loop_says_how_to_run_one() -> None:
    with pytest.raises(RuntimeError, match=r"asyncio\.run"):
        duplexer.open_session(engines=engines())
