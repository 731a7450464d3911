"""The reply guard: a reply repeating an earlier one (or the system prompt) is regenerated, never spoken."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from hypothesis import given
from hypothesis import strategies as st

from duplexer.actors.engines import Message
from duplexer.actors.reply_guard import (
    GuardOutcome,
    RepeatCheck,
    ReplyGuardParams,
    Verdict,
    attempt_messages,
    complete_words,
    first_person,
    guarded_stream,
    normalize_words,
    references_of,
    without_history,
)
from duplexer.actors.tool_calls import ToolCallChunk

SYSTEM = "You are a helpful voice assistant. Answer in one or two short spoken sentences."
EARLIER = "I'm a helpful voice assistant. I can help with anything, from cooking to sports!"


def pieces_of(text: str, size: int = 3) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


class Replies:
    """An engine that answers each call with the next scripted reply, in small pieces; records pulls."""

    def __init__(self, replies: Sequence[str], size: int = 3) -> None:
        self.replies, self.size = list(replies), size
        self.prompts: list[tuple[Message, ...]] = []
        self.pulled: list[str] = []

    async def stream(self, messages: Sequence[Message]) -> AsyncIterator[str]:
        self.prompts.append(tuple(messages))
        text = self.replies[min(len(self.prompts) - 1, len(self.replies) - 1)]
        for piece in pieces_of(text, self.size):
            self.pulled.append(piece)
            yield piece


def collect(
    engine: Replies, earlier: Sequence[str], params: ReplyGuardParams | None = None
) -> tuple[str, GuardOutcome]:
    messages: tuple[Message, ...] = (("system", SYSTEM), ("user", "hi"), ("assistant", "Hello."), ("user", "who?"))
    outcome = GuardOutcome()

    async def run() -> str:
        return "".join([p async for p in guarded_stream(engine.stream, messages, earlier, params, outcome)])

    return asyncio.run(run()), outcome


def test_words_are_normalised_for_case_punctuation_and_contractions() -> None:
    assert normalize_words("I'm here, aren't you?") == ("i", "am", "here", "are", "not", "you")
    assert normalize_words("I\u2019M HERE!") == ("i", "am", "here")
    assert complete_words("No, I play socc") == ("no", "i", "play")
    assert complete_words("No, I play ") == ("no", "i", "play")


def test_a_system_prompt_is_compared_in_the_first_person() -> None:
    assert first_person(normalize_words("You are Robin, your friend")) == ("i", "am", "robin", "my", "friend")


def test_an_opening_is_held_while_it_is_how_a_reference_opens() -> None:
    check = RepeatCheck([normalize_words(EARLIER)], match_words=6)
    assert check.verdict(("i", "am", "a"), finished=False) is Verdict.HOLD
    assert check.verdict(("i", "am", "a", "helpful", "voice", "assistant"), finished=False) is Verdict.REPEAT
    assert check.verdict(("i", "am", "not"), finished=False) is Verdict.RELEASE
    assert check.verdict(("i", "am"), finished=True) is Verdict.RELEASE  # shorter and not equal: an answer
    assert check.verdict(("am", "a"), finished=False) is Verdict.RELEASE  # not an opening of the reference


def test_a_short_reply_equal_to_a_short_earlier_one_is_a_repeat() -> None:
    check = RepeatCheck([normalize_words("Yes, I do.")], match_words=6)
    assert check.verdict(normalize_words("yes i do"), finished=True) is Verdict.REPEAT
    assert check.verdict(normalize_words("yes"), finished=True) is Verdict.RELEASE


def test_the_references_are_earlier_replies_prompt_replies_and_the_echoed_system_prompt() -> None:
    messages = (("system", "You are Robin."), ("assistant", "Sadly no. Sorry!"), ("user", "Hi"))
    refs = references_of(messages, ["Earlier one."])
    assert refs == [
        ("earlier", "one"),
        ("sadly", "no", "sorry"),
        ("sorry",),  # a copy may open with any sentence of a reference
        ("you", "are", "robin"),  # not in the first person: "I am Robin" is the bot's identity to give
    ]


def test_retries_leave_out_first_the_replies_then_the_history() -> None:
    messages = (("system", "S"), ("user", "q1"), ("assistant", "a1"), ("tool", "r"), ("user", "q2"))
    assert attempt_messages(messages, 0, 2) == messages
    assert attempt_messages(messages, 1, 2) == (("system", "S"), ("user", "q1"), ("user", "q2"))
    assert attempt_messages(messages, 2, 2) == without_history(messages) == (("system", "S"), ("user", "q2"))


def test_a_new_reply_is_released_as_soon_as_it_differs() -> None:
    engine = Replies(["No, I play soccer on Sundays."])
    text, outcome = collect(engine, [EARLIER])
    assert text == "No, I play soccer on Sundays."
    assert outcome.retries == 0 and not outcome.fallback


def test_a_repeated_reply_is_regenerated_before_a_word_of_it_is_released() -> None:
    engine = Replies([EARLIER.upper(), "Sure, I ride a bike every day."])
    text, outcome = collect(engine, [EARLIER])
    assert text == "Sure, I ride a bike every day."
    assert outcome.retries == 1 and outcome.repeats[0].startswith("I'M A HELPFUL")
    assert len(engine.pulled) < len(pieces_of(EARLIER)) + len(pieces_of(text))  # the repeat was cut short
    assert engine.prompts[1] == (("system", SYSTEM), ("user", "hi"), ("user", "who?"))


def test_an_echo_of_the_system_prompt_is_a_repeat() -> None:
    engine = Replies(["Answer in one or two short spoken sentences, okay?", "I am Robin."])
    text, outcome = collect(engine, [])
    assert text == "I am Robin." and outcome.retries == 1


def test_when_every_generation_repeats_a_fallback_that_is_no_repeat_is_spoken() -> None:
    params = ReplyGuardParams(max_retries=2)
    first_fallback = params.fallback_replies[0]
    engine = Replies([EARLIER])
    text, outcome = collect(engine, [EARLIER, first_fallback], params)
    assert outcome.retries == 3 and outcome.fallback
    assert text == params.fallback_replies[1]
    assert len(engine.prompts) == 3


_WORDS = st.sampled_from(["i", "am", "a", "robin", "no", "yes", "bike", "study", "here", "you", "do", "not"])
_TEXTS = st.lists(_WORDS, min_size=1, max_size=9).map(" ".join)


@st.composite
def _disguised(draw: st.DrawFn, text: str) -> str:
    """``text`` with its case changed and punctuation sprinkled in: the same reply after normalisation."""
    words = text.split()
    marks = draw(st.lists(st.sampled_from(["", ",", ".", "!", "?"]), min_size=len(words), max_size=len(words)))
    upper = draw(st.lists(st.booleans(), min_size=len(words), max_size=len(words)))
    return " ".join((w.upper() if u else w) + m for w, m, u in zip(words, marks, upper, strict=True))


@given(
    earlier=st.lists(_TEXTS, min_size=1, max_size=4),
    fresh=st.lists(_TEXTS, min_size=0, max_size=3),
    choice=st.data(),
    size=st.integers(min_value=1, max_value=7),
)
def test_a_reply_equal_to_an_earlier_one_after_normalisation_is_never_released(
    earlier: list[str], fresh: list[str], choice: st.DataObject, size: int
) -> None:
    repeats = [choice.draw(_disguised(choice.draw(st.sampled_from(earlier)))) for _ in range(3)]
    engine = Replies([*repeats[: choice.draw(st.integers(0, 3))], *fresh] or repeats, size)
    text, _ = collect(engine, earlier)
    said = {normalize_words(e) for e in earlier}
    assert normalize_words(text) not in said or not normalize_words(text)


class _SameEveryTime:
    """An LLM engine that always says the same thing, as SmolLM2 copying its last turn does."""

    def __init__(self, *texts: str) -> None:
        self.texts, self.calls = texts, 0

    async def stream(self, messages: Sequence[Message], reply_id: str) -> AsyncIterator[str]:
        text = self.texts[min(self.calls, len(self.texts) - 1)]
        self.calls += 1
        for piece in pieces_of(text):
            yield piece


def _llm_reply(engine: _SameEveryTime, guard: ReplyGuardParams | None, earlier: tuple[str, ...]) -> str:
    from duplexer.actors.llm import LlmActor, LlmParams
    from duplexer.runtime.clock import LoopClock, run_virtual
    from duplexer.runtime.events import LlmDone, PromptReady
    from duplexer.runtime.session import Session

    async def conversation() -> str:
        clock = LoopClock()
        async with Session("s", clock=clock) as session:
            done = session.bus.subscribe("test", (LlmDone,), maxsize=100)
            session.add(LlmActor(session.ctx, engine, LlmParams(reply_guard=guard)))
            messages = (("system", SYSTEM), ("user", "are you a student"))
            session.ctx.emit(PromptReady, turn_id=2, reply_id="t2r1", messages=messages, earlier_replies=earlier)
            await clock.sleep_ms(100.0)
            event = done.get_nowait()
            assert isinstance(event, LlmDone)
            return event.text

    return run_virtual(conversation())


def test_the_llm_actor_regenerates_a_repeated_reply_only_with_the_guard_on() -> None:
    earlier = ("I'm a student here at this university.",)
    copied = "I'm a student here at this university."
    assert _llm_reply(_SameEveryTime(copied), None, earlier) == copied
    fresh = "No, I live in your phone."
    assert _llm_reply(_SameEveryTime(copied, fresh), ReplyGuardParams(), earlier) == fresh


def test_a_llama_reply_ends_after_its_last_allowed_sentence() -> None:
    from duplexer.actors.models.llama_llm import sentences_end_at

    assert sentences_end_at("No. I can't. Sorry", 2) == len("No. I can't.")
    assert sentences_end_at("No. I can't.", 2) is None  # the stop may still be "3.5": wait for what follows
    assert sentences_end_at("Wow!! Really? Yes", 1) == len("Wow!!")


def test_a_structured_tool_call_passes_the_guard_after_the_words_it_held() -> None:
    chunk = ToolCallChunk(index=0, name="get_weather", arguments="{}")

    async def stream(messages: Sequence[Message]) -> AsyncIterator[str | ToolCallChunk]:
        yield "Let me "
        yield chunk
        yield "check."

    async def run() -> list[str | ToolCallChunk]:
        return [p async for p in guarded_stream(stream, (("system", SYSTEM), ("user", "weather?")), [EARLIER])]

    assert asyncio.run(run()) == ["Let me ", chunk, "check."]


def test_the_bot_may_give_its_identity_but_not_recite_its_instructions() -> None:
    system = "You are Robin, a friendly voice assistant. Answer what was asked in one or two short sentences."
    messages: tuple[Message, ...] = (("system", system), ("user", "who are you?"))

    async def first(reply: str) -> tuple[str, GuardOutcome]:
        outcome = GuardOutcome()

        async def stream(_: Sequence[Message]) -> AsyncIterator[str]:
            for piece in pieces_of(reply):
                yield piece

        text = "".join([p async for p in guarded_stream(stream, messages, [], None, outcome)])  # type: ignore[misc]
        return text, outcome

    text, outcome = asyncio.run(first("I'm Robin, a friendly voice assistant."))
    assert text == "I'm Robin, a friendly voice assistant." and outcome.retries == 0
    _, recited = asyncio.run(first("Answer what was asked in one or two short sentences."))
    assert recited.retries > 0 or recited.fallback
