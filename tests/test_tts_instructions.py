"""Step-Audio instruction tags: rendered where the engine can, stripped and recorded always."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given
from hypothesis import strategies as st

from duplexer.actors.scripted import ScriptedTts
from duplexer.actors.tts import TtsActor, TtsParams, split_instructions
from duplexer.runtime.clock import LoopClock, run_virtual
from duplexer.runtime.events import CommitReply, LlmDone, LlmToken, StartReply, TtsAudio
from duplexer.runtime.session import Session


def test_leading_tags_are_split_from_the_text() -> None:
    assert split_instructions("(slow) (happy) Hello there.") == (("slow", "happy"), "Hello there.")
    assert split_instructions("Hello (slow) there") == ((), "Hello (slow) there")
    assert split_instructions("( Fast )Go") == (("fast",), "Go")


@given(st.text(alphabet="abc ().!", max_size=30))
def test_splitting_never_loses_text_after_the_tags(text: str) -> None:
    tags, rest = split_instructions(text)
    assert text.endswith(rest) or text.strip().endswith(rest.strip())
    assert all("(" not in t and ")" not in t for t in tags)


def synthesize(pieces: list[str], defaults: tuple[str, ...] = ()) -> list[TtsAudio]:
    async def main() -> list[TtsAudio]:
        clock = LoopClock()
        async with Session("s", clock=clock) as session:
            out = session.bus.subscribe("out", [TtsAudio])
            session.add(
                TtsActor(session.ctx, ScriptedTts(clock, random.Random(0)), TtsParams(default_instructions=defaults))
            )
            await asyncio.sleep(0)
            session.ctx.emit(StartReply, reply_id="r", user_text="hi", speculative=False)
            session.ctx.emit(CommitReply, reply_id="r", user_text="hi")
            for i, piece in enumerate(pieces):
                session.ctx.emit(LlmToken, reply_id="r", text=piece, index=i)
            session.ctx.emit(LlmDone, reply_id="r", text="".join(pieces), n_tokens=len(pieces))
            await asyncio.sleep(5)
            got = []
            while (e := out.get_nowait()) is not None:
                got.append(e)
            return got  # type: ignore[return-value]

    return run_virtual(main())  # type: ignore[return-value]


def test_tags_split_across_tokens_are_never_spoken() -> None:
    chunks = synthesize(["(sl", "ow) (hap", "py) The capital", " of France is Paris."])
    spoken = " ".join(c.text for c in chunks if c.text)
    assert spoken == "The capital of France is Paris."
    assert chunks[0].instructions == ("slow", "happy")
    assert chunks[0].unrendered_instructions == ("happy",)


def test_slow_tag_makes_longer_audio_than_plain_text() -> None:
    plain = sum(c.duration_ms for c in synthesize(["The capital of France is Paris."]))
    slow = sum(c.duration_ms for c in synthesize(["(slow) The capital of France is Paris."]))
    assert slow > plain * 1.2


def test_persona_default_tags_apply_to_every_reply() -> None:
    chunks = synthesize(["Ahoy there, matey."], defaults=("fast",))
    assert chunks[0].instructions == ("fast",)
