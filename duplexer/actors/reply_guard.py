"""Reply guard: a reply that repeats an earlier reply of the conversation, or echoes the system prompt,
is caught before any of its words are released to TTS, and generated again.

A small model (SmolLM2-135M) answers a personal question with its system prompt and then copies its
own previous turn from the history. The guard holds a reply's opening words while they are still how
a reference text opens (an earlier reply or the system prompt, from any of its sentence starts; the
system prompt also in the first person); once ``match_words`` of them are, the reply is a repeat and
is dropped unspoken. As soon as the opening
leaves every reference, all held text is released and the rest streams through untouched, so the
cost is the few tokens it takes the opening to differ (measured by ``duplexer bench replies``).

Texts are compared as normalised words (lower case, contractions expanded, punctuation dropped),
each raw word normalised on its own, so the words of a growing reply only ever grow at the end.
"""

from __future__ import annotations

import enum
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from duplexer.actors.engines import Message
from duplexer.actors.tool_calls import ToolCallChunk

_CONTRACTIONS = (("n't", " not"), ("'m", " am"), ("'re", " are"), ("'ve", " have"), ("'ll", " will"), ("'d", " would"))
_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")
_SECOND_TO_FIRST_PERSON = {"you": "i", "your": "my", "yours": "mine", "yourself": "myself"}


def normalize_word(raw: str) -> list[str]:
    """One whitespace-separated word as normalised words ("I'm," -> ["i", "am"])."""
    word = raw.lower().replace("\u2019", "'")
    for ending, full in _CONTRACTIONS:
        word = word.replace(ending, full)
    word = word.replace("'s", " is")
    return _WORD.findall(word)


def normalize_words(text: str) -> tuple[str, ...]:
    """A text as normalised words: "I'm a helpful voice assistant!" -> ("i", "am", "a", "helpful", ...)."""
    return tuple(word for raw in text.split() for word in normalize_word(raw))


def complete_words(text: str) -> tuple[str, ...]:
    """The normalised words of a streamed text whose raw words are final (followed by whitespace)."""
    raw = text.split()
    if raw and not text[-1].isspace():
        raw = raw[:-1]
    return tuple(word for item in raw for word in normalize_word(item))


def first_person(words: Sequence[str]) -> tuple[str, ...]:
    """A system prompt as the bot would echo it: "you are a helpful ..." -> "i am a helpful ..."."""
    out: list[str] = []
    for i, word in enumerate(words):
        if word == "are" and i and words[i - 1] == "you":
            out.append("am")
        else:
            out.append(_SECOND_TO_FIRST_PERSON.get(word, word))
    return tuple(out)


def sentence_openings(text: str) -> list[str]:
    """``text`` from each of its sentence starts on: a copy may open with any sentence of a reference."""
    sentences = _SENTENCE_BREAK.split(text.strip())
    return [" ".join(sentences[i:]) for i in range(len(sentences))]


class Verdict(enum.Enum):
    HOLD = "hold"
    """The opening is still how a reference opens: wait for more words."""
    RELEASE = "release"
    """The reply differs from every reference: speak it."""
    REPEAT = "repeat"
    """The reply repeats a reference: drop it and generate again."""


@dataclass(frozen=True)
class ReplyGuardParams:
    match_words: int = 6
    """An opening of this many words that is how an earlier reply (or the echoed system prompt) opens,
    from any of its sentence starts, is a repeat. Six words catch "I'm a helpful voice assistant. I
    can..." while common openings of two or three words ("No, I'm not") are released as soon as the
    next word differs."""
    max_retries: int = 2
    """Generations after the first (:func:`attempt_messages`); each leaves out more of what the model copies."""
    fallback_replies: tuple[str, ...] = (
        "Good question. What made you ask?",
        "Hmm, I'm not sure. What do you think?",
        "Let me think about that. Tell me more?",
    )
    """Spoken, the first that is no repeat itself, when every generation repeated."""


class RepeatCheck:
    """Decides whether a reply, as far as it has been generated, repeats one of ``references``."""

    def __init__(self, references: Iterable[tuple[str, ...]], match_words: int) -> None:
        self.references = [ref for ref in references if ref]
        self.match_words = match_words

    def verdict(self, words: tuple[str, ...], finished: bool) -> Verdict:
        """``words``: the reply's complete normalised words so far; ``finished``: the reply has ended."""
        if not words:
            return Verdict.RELEASE if finished else Verdict.HOLD
        head = words[: self.match_words]
        if not any(ref[: len(head)] == head for ref in self.references):
            return Verdict.RELEASE
        if len(head) >= self.match_words:
            return Verdict.REPEAT
        if not finished:
            return Verdict.HOLD
        return Verdict.REPEAT if any(words == ref for ref in self.references) else Verdict.RELEASE


def references_of(messages: Sequence[Message], earlier_replies: Sequence[str]) -> list[tuple[str, ...]]:
    """What a reply must not open like, from each sentence start on: earlier replies, the prompt's
    assistant turns (examples, kept history) and its system prompt, as written and in the first person,
    except its first sentence in the first person: that is the identity ("You are Robin, ..."), which
    the bot may give when asked who it is (once: then it is an earlier reply)."""
    texts = [*earlier_replies, *(text for role, text in messages if role == "assistant")]
    refs = [normalize_words(opening) for text in texts for opening in sentence_openings(text)]
    for role, text in messages:
        if role == "system":
            for i, opening in enumerate(sentence_openings(text)):
                words = normalize_words(opening)
                refs.append(words)
                if i > 0:  # the first opening starts with the identity
                    refs.append(first_person(words))
    return refs


def without_replies(messages: Sequence[Message]) -> tuple[Message, ...]:
    """The prompt without assistant turns (and tool results): the questions stay, no reply to copy."""
    return tuple(m for m in messages if m[0] in ("system", "user"))


def without_history(messages: Sequence[Message]) -> tuple[Message, ...]:
    """The system prompt and the user's message only: nothing earlier for the model to copy."""
    if not messages:
        return ()
    return (*(m for m in messages[:-1] if m[0] == "system"), messages[-1])


def attempt_messages(messages: Sequence[Message], attempt: int, max_retries: int) -> tuple[Message, ...]:
    """The prompt of each generation: as given, then without replies, the last one without history.

    The prompts differ because a small model at a moderate temperature samples nearly the same reply
    from the same prompt twice."""
    if attempt == 0:
        return tuple(messages)
    return without_history(messages) if attempt == max_retries else without_replies(messages)


@dataclass
class GuardOutcome:
    """What the guard did for one reply: the repeats it dropped and whether a fallback was spoken."""

    repeats: list[str] = field(default_factory=list)
    fallback: bool = False

    @property
    def retries(self) -> int:
        return len(self.repeats)


async def guarded_stream(
    generate: Callable[[Sequence[Message]], AsyncIterator[str | ToolCallChunk]],
    messages: Sequence[Message],
    earlier_replies: Sequence[str] = (),
    params: ReplyGuardParams | None = None,
    outcome: GuardOutcome | None = None,
) -> AsyncIterator[str | ToolCallChunk]:
    """The pieces of a reply that repeats no reference; ``generate`` is called again for a repeat.

    Attempts use the prompts of :func:`attempt_messages`. When all repeat, the first fallback reply
    that is no repeat is yielded.
    """
    cfg = params or ReplyGuardParams()
    report = outcome if outcome is not None else GuardOutcome()
    check = RepeatCheck(references_of(messages, earlier_replies), cfg.match_words)
    for attempt in range(cfg.max_retries + 1):
        held, verdict = "", Verdict.HOLD
        stream = generate(attempt_messages(messages, attempt, cfg.max_retries))
        try:
            async for piece in stream:
                if verdict is Verdict.RELEASE:
                    yield piece
                    continue
                if not isinstance(piece, str):  # a structured tool call repeats no spoken reply
                    verdict = Verdict.RELEASE
                    if held:
                        yield held
                    yield piece
                    continue
                held += piece
                verdict = check.verdict(complete_words(held), finished=False)
                if verdict is Verdict.RELEASE:
                    yield held
                elif verdict is Verdict.REPEAT:
                    break
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:  # stops the engine's generation of a dropped repeat
                await close()
        if verdict is Verdict.HOLD:
            verdict = check.verdict(normalize_words(held), finished=True)
            if verdict is Verdict.RELEASE:
                if held:
                    yield held
                return
        if verdict is Verdict.RELEASE:
            return
        report.repeats.append(held)
    for text in cfg.fallback_replies:
        if check.verdict(normalize_words(text), finished=True) is Verdict.RELEASE:
            report.fallback = True
            yield text
            return
